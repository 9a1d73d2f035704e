"""Edge nodes (the ``edge`` group): the baseline, then what a Jetson needs instead of a
desktop GPU's driver stack: its container runtime and tegrastats metrics. Models are served
by deploys/inference.py like everywhere else, within the planner's unified-memory budget.

pyinfra inventory/examples/proxmox_desktop.py deploys/edge.py
"""

from pyinfra import host

from gpufleet.inventory import host_spec
from gpufleet.roles.baseline import baseline
from gpufleet.roles.jetson import jetson_node

spec = host_spec()

if "edge" in spec.groups and spec.os == "jetson-l4t":
    baseline(spec)
    jetson_node(spec)
elif "edge" in spec.groups:
    baseline(spec)
    host.noop(f"{spec.name} is an edge node without Jetson Linux: the baseline only")
else:
    host.noop(f"{spec.name} is not in the edge group")
