"""pyinfra facts gpufleet reads from hosts. Facts only read; their parsers are pure."""
