"""GPU nodes: the baseline, then on hosts of gpu_nodes the NVIDIA driver (or, in an LXC
container, the driver's user space at its host's version), Docker and the NVIDIA Container
Toolkit; on any host with an AMD GPU (an AI Max box, whatever its group), Mesa's Vulkan
driver, and an integrated GPU's GTT size the planner plans it with.

pyinfra inventory/homelab.py deploys/gpu_node.py --limit gpu_nodes
pyinfra inventory/lab.py deploys/gpu_node.py

The steps ship inside gpufleet (gpufleet/deploys/gpu_node.py): this file runs them, so
that pyinfra finds a deploy file here and an upgrade of gpufleet upgrades them.
"""

from gpufleet.deploys import run

run("gpu_node")
