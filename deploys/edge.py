"""Edge nodes: the baseline on every host it is given, then, on Jetsons of the ``edge``
group, what a Jetson needs instead of a desktop GPU's driver stack: its container runtime
and tegrastats metrics. Models are served by deploys/inference.py like everywhere else,
within the planner's unified-memory budget.

pyinfra inventory/examples/proxmox_desktop.py deploys/edge.py --limit edge

The steps ship inside gpufleet (gpufleet/deploys/edge.py): this file runs them, so
that pyinfra finds a deploy file here and an upgrade of gpufleet upgrades them.
"""

from gpufleet.deploys import run

run("edge")
