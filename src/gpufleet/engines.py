"""The settings each inference server gets, planned from the host data. Pure logic.

The same plan renders the systemd units and what ``gpufleet engines`` prints, so what a user
reviews is what runs. Secrets appear as their references, never as values. Example::

    >>> ollama_environment(spec)["OLLAMA_HOST"]
    '0.0.0.0:11434'
"""

from __future__ import annotations

from dataclasses import dataclass

from gpufleet.models import HostSpec, ModelPlacement

LLAMACPP_MODELS = "/var/lib/llama.cpp/models"
VLLM_VENV = "/opt/vllm"
VLLM_ENV_FILE = "/etc/gpufleet/vllm.env"
OLLAMA_BINARY = "/usr/local/bin/ollama"
LLAMA_SERVER = "/usr/local/bin/llama-server"


@dataclass(frozen=True)
class EnginePlan:
    engine: str
    port: int
    placements: tuple[ModelPlacement, ...]
    command: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()


def served_name(placement: ModelPlacement) -> str:
    """The name clients ask for: the alias where there is one, else the model tag."""
    return placement.alias or placement.model


def placements(spec: HostSpec, engine: str) -> tuple[ModelPlacement, ...]:
    return tuple(m for m in spec.models if m.engine == engine)


def ollama_environment(spec: HostSpec) -> dict[str, str]:
    """The environment of the Ollama service (its systemd drop-in)."""
    env = {
        "OLLAMA_HOST": f"{spec.ollama_address}:{spec.ollama_port}",
        "OLLAMA_KEEP_ALIVE": spec.ollama_keep_alive,
        "OLLAMA_FLASH_ATTENTION": "1" if spec.ollama_flash_attention else "0",
    }
    if spec.ollama_max_loaded_models is not None:
        env["OLLAMA_MAX_LOADED_MODELS"] = str(spec.ollama_max_loaded_models)
    if spec.ollama_num_parallel is not None:
        env["OLLAMA_NUM_PARALLEL"] = str(spec.ollama_num_parallel)
    if spec.ollama_context_length is not None:
        env["OLLAMA_CONTEXT_LENGTH"] = str(spec.ollama_context_length)
    return env


def gguf_path(placement: ModelPlacement) -> str:
    """Where the GGUF file is on the host: its own path, or where a download is kept."""
    source = placement.source or ""
    if source.startswith("/"):
        return source
    return f"{LLAMACPP_MODELS}/{served_name(placement)}.gguf"


def llama_server_command(spec: HostSpec, placement: ModelPlacement) -> list[str]:
    """``llama-server`` with the planned flags; ``/health`` is always on, ``/metrics`` too."""
    has_gpu = spec.hardware.nvidia_gpu_count > 0
    gpu_layers = spec.llamacpp_gpu_layers
    if gpu_layers is None:
        gpu_layers = 999 if has_gpu else 0
    command = [
        LLAMA_SERVER,
        "--model", gguf_path(placement),
        "--alias", served_name(placement),
        "--host", str(spec.llamacpp_address),
        "--port", str(spec.llamacpp_port),
        "--threads", str(spec.llamacpp_threads or spec.hardware.cores),
        "--parallel", str(spec.llamacpp_parallel),
        "--n-gpu-layers", str(gpu_layers),
        "--metrics",
    ]  # fmt: skip
    if placement.context:
        command += ["--ctx-size", str(placement.context)]
    return command


def vllm_command(spec: HostSpec, placement: ModelPlacement) -> list[str]:
    """``vllm serve`` with the planned flags. The API key is read from VLLM_API_KEY (an
    environment file), so it never shows in a process list or a plan."""
    command = [
        "vllm" if spec.vllm_install == "container" else f"{VLLM_VENV}/bin/vllm",
        "serve", placement.source or placement.model,
        "--served-model-name", served_name(placement),
        "--host", "0.0.0.0",
        "--port", str(spec.vllm_port),
        "--gpu-memory-utilization", f"{spec.vllm_gpu_memory_utilization:.2f}",
        "--max-num-seqs", str(spec.vllm_max_num_seqs),
        "--max-num-batched-tokens", str(spec.vllm_max_num_batched_tokens),
        "--tensor-parallel-size", str(max(placement.gpus, 1)),
    ]  # fmt: skip
    if placement.context:
        command += ["--max-model-len", str(placement.context)]
    if spec.vllm_enable_prefix_caching:
        command.append("--enable-prefix-caching")
    return command


def plan(spec: HostSpec) -> list[EnginePlan]:
    """Every inference server the host runs, with its command or environment."""
    plans = []
    if ollama := placements(spec, "ollama"):
        env = tuple(ollama_environment(spec).items())
        plans.append(EnginePlan("ollama", spec.ollama_port, ollama, environment=env))
    if llama := placements(spec, "llama.cpp"):
        command = tuple(llama_server_command(spec, llama[0]))
        plans.append(EnginePlan("llama.cpp", spec.llamacpp_port, llama, command=command))
    if vllm := placements(spec, "vllm"):
        command = tuple(vllm_command(spec, vllm[0]))
        key = spec.secrets.get("vllm_api_key", "missing")
        env = (("VLLM_API_KEY", f"<{key}>"),)
        plans.append(EnginePlan("vllm", spec.vllm_port, vllm, command=command, environment=env))
    return plans


def describe(spec: HostSpec) -> str:
    """The plan as text, for ``gpufleet engines``."""
    lines = [f"{spec.name}:"]
    plans = plan(spec)
    if not plans:
        return f"{spec.name}: no models placed"
    for engine in plans:
        served = ", ".join(served_name(p) for p in engine.placements)
        lines.append(f"  {engine.engine} on port {engine.port}: {served}")
        for key, value in engine.environment:
            lines.append(f"    {key}={value}")
        if engine.command:
            lines.append("    " + " ".join(engine.command))
    return "\n".join(lines)
