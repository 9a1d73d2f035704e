"""Inference servers: the baseline, then every engine the host's placements name, each
started, health-checked and warmed up with the flags the planner decided. Each step does
nothing on a host its engine does not run on (Triton: where it is not enabled; Homebrew's
Ollama under launchd: on a Mac only).

pyinfra inventory/homelab.py deploys/inference.py --limit gpu_nodes
pyinfra inventory/lab.py deploys/inference.py
gpufleet engines inventory/homelab.py      # the planned flags, without touching a host
"""

from pyinfra import host

from gpufleet.engines import serving
from gpufleet.inventory import host_spec
from gpufleet.roles import llamacpp, macos, ollama, triton, vllm
from gpufleet.roles.baseline import baseline
from gpufleet.roles.steps import download_tools

spec = host_spec()

baseline(spec)

# One line per engine, in the registry's bring-up order: pyinfra orders operations by the
# lines that call them, so a loop over the engines would interleave theirs across hosts.
if serving(spec) and spec.os != "macos":
    download_tools()
ollama.serve(spec)
macos.serve(spec)
llamacpp.serve(spec)
vllm.serve(spec)
triton.serve(spec)
if not serving(spec):
    host.noop(f"{spec.name} serves no models")
