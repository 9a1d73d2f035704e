"""Inference servers: the baseline, then every engine the host's placements name (Ollama,
llama.cpp, vLLM; Triton where enabled; on macOS, Homebrew's Ollama under launchd), each
started, health-checked and warmed up with the flags the planner decided.

pyinfra inventory/homelab.py deploys/inference.py --limit gpu_nodes
pyinfra inventory/lab.py deploys/inference.py
gpufleet engines inventory/homelab.py      # the planned flags, without touching a host
"""

from importlib import import_module

from pyinfra import host

from gpufleet.engines import serving
from gpufleet.inventory import host_spec
from gpufleet.roles.baseline import baseline
from gpufleet.roles.steps import download_tools

spec = host_spec()

baseline(spec)

engines = serving(spec)
if engines and spec.os != "macos":
    download_tools()
for engine in engines:
    import_module(engine.role).serve(spec)
if not engines:
    host.noop(f"{spec.name} serves no models")
