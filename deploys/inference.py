"""Inference servers: the baseline, then every engine the host's placements name, each
started, health-checked and warmed up with the flags the planner decided. Each step does
nothing on a host its engine does not run on (Triton: where it is not enabled; Homebrew's
Ollama under launchd: on a Mac only). The fleet's model cache, where it has one, fetches the
models before the others download them from it.

pyinfra inventory/homelab.py deploys/inference.py --limit gpu_nodes
pyinfra inventory/lab.py deploys/inference.py
gpufleet engines inventory/homelab.py      # the planned flags, without touching a host

The steps ship inside gpufleet (gpufleet/deploys/inference.py): this file runs them, so
that pyinfra finds a deploy file here and an upgrade of gpufleet upgrades them.
"""

from gpufleet.deploys import run

run("inference")
