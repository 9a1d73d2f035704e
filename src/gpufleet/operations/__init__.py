"""gpufleet's own pyinfra operations: read facts, yield only what closes the gap."""
