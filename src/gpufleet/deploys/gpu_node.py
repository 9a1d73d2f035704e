"""GPU nodes: the baseline, then on hosts of gpu_nodes the NVIDIA driver (or, in an LXC
container, the driver's user space at its host's version), Docker and the NVIDIA Container
Toolkit; on any host with an AMD GPU (an AI Max box, whatever its group), Mesa's Vulkan
driver, and an integrated GPU's GTT size the planner plans it with.

pyinfra inventory/homelab.py deploys/gpu_node.py --limit gpu_nodes
pyinfra inventory/lab.py deploys/gpu_node.py
"""

from pyinfra import host

from gpufleet.inventory import host_spec
from gpufleet.roles.amd_gpu import amd_gpu
from gpufleet.roles.baseline import baseline
from gpufleet.roles.container_runtime import container_runtime
from gpufleet.roles.gpu import gpu_detection
from gpufleet.roles.lxc_guest import nvidia_userland
from gpufleet.roles.nvidia_driver import nvidia_driver

spec = host_spec()

baseline(spec)

if "gpu_nodes" in spec.groups:
    gpu_detection(spec)
    if spec.lxc_guest is not None:
        nvidia_userland(spec)
    else:
        nvidia_driver(spec)
    container_runtime(spec)
elif not spec.hardware.amd_gpu:
    host.noop(f"{spec.name} is not in gpu_nodes: GPU steps skipped")

if spec.hardware.amd_gpu:
    amd_gpu(spec)
