"""Edge nodes: the baseline on every host it is given, then, on Jetsons of the ``edge``
group, what a Jetson needs instead of a desktop GPU's driver stack: its container runtime
and tegrastats metrics. Models are served by deploys/inference.py like everywhere else,
within the planner's unified-memory budget.

pyinfra inventory/examples/proxmox_desktop.py deploys/edge.py --limit edge
"""

from pyinfra import host

from gpufleet.inventory import host_spec
from gpufleet.roles.baseline import baseline
from gpufleet.roles.jetson import jetson_node

spec = host_spec()

baseline(spec)
if "edge" in spec.groups and spec.os == "jetson-l4t":
    jetson_node(spec)
else:
    host.noop(f"{spec.name} is not a Jetson of the edge group: Jetson steps skipped")
