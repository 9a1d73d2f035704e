"""Proxmox hosts: the baseline, the NVIDIA driver on the host, and GPU passthrough to the
LXC containers listed under ``proxmox.lxc``.

pyinfra inventory/examples/proxmox_desktop.py deploys/proxmox_host.py --limit proxmox_hosts
pyinfra inventory/lab.py deploys/proxmox_host.py

The steps ship inside gpufleet (gpufleet/deploys/proxmox_host.py): this file runs them, so
that pyinfra finds a deploy file here and an upgrade of gpufleet upgrades them.
"""

from gpufleet.deploys import run

run("proxmox_host")
