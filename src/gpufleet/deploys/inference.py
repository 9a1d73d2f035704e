"""Inference servers: the baseline, then every engine the host's placements name, each
started, health-checked and warmed up with the flags the planner decided. Each step does
nothing on a host its engine does not run on (Triton: where it is not enabled; Homebrew's
Ollama under launchd: on a Mac only). The fleet's model cache, where it has one, fetches the
models before the others download them from it.

pyinfra inventory/homelab.py deploys/inference.py --limit gpu_nodes
pyinfra inventory/lab.py deploys/inference.py
gpufleet engines inventory/homelab.py      # the planned flags, without touching a host
"""

from pyinfra import host

from gpufleet.engines import serving
from gpufleet.inventory import fleet_specs, host_spec
from gpufleet.model_cache import cache_host
from gpufleet.roles import llamacpp, macos, ollama, triton, vllm
from gpufleet.roles.baseline import baseline
from gpufleet.roles.model_cache import model_cache
from gpufleet.roles.steps import download_tools

spec = host_spec()
cache = cache_host(fleet_specs())

baseline(spec)

# One line per engine, in the registry's bring-up order: pyinfra orders operations by the
# lines that call them, so a loop over the engines would interleave theirs across hosts.
if (serving(spec) or (cache is not None and cache.name == spec.name)) and spec.os != "macos":
    download_tools()
# The cache first: pyinfra runs it on the cache host before any host downloads a model.
model_cache(spec, fleet_specs())
ollama.serve(spec)
macos.serve(spec)
llamacpp.serve(spec)
vllm.serve(spec)
triton.serve(spec)
if not serving(spec):
    host.noop(f"{spec.name} serves no models")
