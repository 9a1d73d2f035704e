"""Proxmox hosts: the baseline, the NVIDIA driver on the host, and GPU passthrough to the
LXC containers listed under ``proxmox.lxc``.

pyinfra inventory/examples/proxmox_desktop.py deploys/proxmox_host.py --limit proxmox_hosts
pyinfra inventory/lab.py deploys/proxmox_host.py
"""

from pyinfra import host

from gpufleet.inventory import host_spec
from gpufleet.roles.baseline import baseline
from gpufleet.roles.gpu import gpu_detection
from gpufleet.roles.nvidia_driver import nvidia_driver
from gpufleet.roles.proxmox import lxc_gpu_passthrough

spec = host_spec()

baseline(spec)

if "proxmox_hosts" in spec.groups:
    gpu_detection(spec)
    nvidia_driver(spec)
    lxc_gpu_passthrough(spec)
else:
    host.noop(f"{spec.name} is not in proxmox_hosts: passthrough skipped")
