"""GPU nodes: the baseline, then GPU detection on hosts of the gpu_nodes group.

pyinfra inventory/homelab.py deploys/gpu_node.py --limit gpu_nodes
pyinfra inventory/lab.py deploys/gpu_node.py
"""

from pyinfra import host

from gpufleet.inventory import host_spec
from gpufleet.roles.baseline import baseline
from gpufleet.roles.gpu import gpu_detection

spec = host_spec()

baseline(spec)

if "gpu_nodes" in spec.groups:
    gpu_detection(spec)
else:
    host.noop(f"{spec.name} is not in gpu_nodes: GPU steps skipped")
