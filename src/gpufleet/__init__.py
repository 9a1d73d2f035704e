"""gpufleet: agentless provisioning of a homelab AI fleet on pyinfra."""

__version__ = "0.1.0"
