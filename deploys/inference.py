"""Inference servers: the baseline, then the engines each host's model placements name
(Ollama, llama.cpp, vLLM, Triton), each started, health-checked and warmed up; on macOS, Homebrew's
Ollama under launchd.

pyinfra inventory/homelab.py deploys/inference.py --limit gpu_nodes
pyinfra inventory/lab.py deploys/inference.py
gpufleet engines inventory/homelab.py      # the planned flags, without touching a host
"""

from pyinfra import host

from gpufleet.inventory import host_spec
from gpufleet.roles.baseline import baseline
from gpufleet.roles.inference import download_tools, llama_cpp, ollama, vllm
from gpufleet.roles.macos import macos_ollama
from gpufleet.roles.triton import triton

spec = host_spec()

baseline(spec)

if spec.models and spec.os == "macos":
    macos_ollama(spec)
elif spec.models or spec.triton.enabled:
    download_tools()
    ollama(spec)
    llama_cpp(spec)
    vllm(spec)
    triton(spec)
else:
    host.noop(f"{spec.name} serves no models")
