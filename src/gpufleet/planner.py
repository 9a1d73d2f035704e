"""Capacity planner: where each placed model runs, what memory it takes, how fast it can be.

Pure arithmetic on the host data and the catalogues, fast enough for a whole fleet in well
under a second. Memory for a model = weights (parameters x bits per weight) + KV cache
(2 x layers x KV heads x head dim x context x 2 bytes x parallel slots) + a runtime
allowance. Decoding reads every active weight once per token, so tokens/s can never exceed
memory bandwidth / bytes of active weights; with layers split between GPU and CPU the two
reads add up. Example::

    >>> plan_host(spec, load_catalogue()).placements[0].where
    'gpu'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from gpufleet.catalogue import Catalogue, ModelEntry
from gpufleet.checks import BITS_PER_WEIGHT, SYSTEM_RESERVE_GB, placement_quant, suggest
from gpufleet.gguf import read_model_entry
from gpufleet.models import HostSpec, ModelPlacement

RUNTIME_OVERHEAD_GB = 0.3
"""Compute buffers and the CUDA context an engine adds per loaded model."""
KV_BYTES = 2
"""KV cache entries are FP16 unless an engine is told otherwise."""
OLLAMA_DEFAULT_CONTEXT = 2048
"""Context Ollama gives a model when neither the placement nor OLLAMA_CONTEXT_LENGTH says."""
OLLAMA_LOADED_PER_GPU = 3
"""Ollama's default for OLLAMA_MAX_LOADED_MODELS: 3 per GPU (3 on a CPU-only host)."""
RAM_TRANSFER_RATE = {"ddr4": 3200, "ddr5": 5600, "lpddr5": 6400, "lpddr5x": 8000}
"""Typical transfer rate (MT/s) of each memory type, when the inventory gives none."""

Where = Literal["gpu", "partial", "cpu", "does-not-fit"]


@dataclass
class PlacementPlan:
    model: str
    engine: str
    quant: str
    context: int
    weights_gb: float
    kv_gb: float
    need_gb: float
    where: Where
    gpu_layers: int
    layers: int
    bound_tok_s: float | None
    problem: str | None = None


@dataclass
class HostPlan:
    host: str
    vram_gb: float
    ram_gb: float
    gpu_bandwidth_gbs: float
    ram_bandwidth_gbs: float
    placements: list[PlacementPlan] = field(default_factory=list)
    vram_used_gb: float = 0.0
    ram_used_gb: float = 0.0
    problems: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def ram_bandwidth_gbs(spec: HostSpec) -> float:
    """Peak system memory bandwidth: channels x 8 bytes x transfer rate."""
    hardware = spec.hardware
    if hardware.ram_bandwidth_gbs:
        return hardware.ram_bandwidth_gbs
    rate = hardware.ram_mts or RAM_TRANSFER_RATE[hardware.ram_type]
    return hardware.ram_channels * 8 * rate / 1000


def gpu_memory(spec: HostSpec, catalogue: Catalogue) -> tuple[float, float]:
    """(VRAM of the discrete NVIDIA GPUs in GB, their slowest bandwidth in GB/s)."""
    vram, bandwidths = 0.0, []
    for accelerator in spec.hardware.accelerators:
        if accelerator.kind != "nvidia":
            continue
        entry = catalogue.accelerator(accelerator.model)
        if entry is None:
            continue
        per_device = accelerator.vram_gb or max(entry.vram_gb or (0.0,))
        vram += per_device * accelerator.count
        bandwidths.append(entry.bandwidth_gbs)
    return vram, min(bandwidths, default=0.0)


def unified_bandwidth(spec: HostSpec, catalogue: Catalogue) -> float | None:
    """Bandwidth of a unified-memory accelerator (Apple, AMD iGPU, Jetson): system memory
    is that memory."""
    for accelerator in spec.hardware.accelerators:
        if accelerator.kind in ("apple_metal", "amd_igpu", "jetson"):
            entry = catalogue.accelerator(accelerator.model)
            if entry:
                return entry.bandwidth_gbs
    return None


def local_gguf(placement: ModelPlacement) -> ModelEntry | None:
    """The model's figures from its GGUF header, when the file is on this machine."""
    source = placement.source or ""
    if source.startswith("file://"):
        source = source[len("file://") :]
    if source.endswith(".gguf") and Path(source).is_file():
        return read_model_entry(str(Path(source).resolve()))
    return None


def context_for(spec: HostSpec, placement: ModelPlacement, entry: ModelEntry) -> int:
    if placement.context:
        return placement.context
    if placement.engine == "ollama":
        return spec.ollama_context_length or OLLAMA_DEFAULT_CONTEXT
    return entry.context


def kv_cache_gb(entry: ModelEntry, context: int, slots: int = 1) -> float:
    if entry.kind == "embedding":
        return 0.0
    return 2 * entry.layers * entry.kv_heads * entry.head_dim * context * KV_BYTES * slots / 1e9


def slots_for(spec: HostSpec, placement: ModelPlacement) -> int:
    if placement.engine == "llama.cpp":
        return 1  # llama-server splits its context between its slots
    if placement.engine == "ollama":
        return spec.ollama_num_parallel or 1
    return 1


def plan_host(spec: HostSpec, catalogue: Catalogue) -> HostPlan:
    """Where each placed model of one host runs, and why it cannot where it cannot."""
    vram, gpu_bw = gpu_memory(spec, catalogue)
    unified = unified_bandwidth(spec, catalogue)
    ram_bw = unified or ram_bandwidth_gbs(spec)
    plan = HostPlan(spec.name, vram, spec.hardware.ram_gb, gpu_bw, ram_bw)
    vram_free = vram
    ram_free = spec.hardware.ram_gb - SYSTEM_RESERVE_GB
    for index, placement in enumerate(spec.models):
        entry = local_gguf(placement) or catalogue.model(placement.model)
        quant = placement_quant(placement)
        if entry is None and placement.params_b:
            # Size known, architecture not: weights only, no KV cache estimate.
            params = placement.params_b
            entry = ModelEntry(placement.model, params, params, 1, 0, 0, 2048, "llm")
        if entry is None:
            plan.problems.append(
                (
                    f"models[{index}].model",
                    f"unknown model {placement.model!r}"
                    f"{suggest(placement.model, catalogue.models)}; add it to "
                    "src/gpufleet/catalogue/models.yaml or give params_b",
                )
            )
            continue
        if quant not in BITS_PER_WEIGHT:
            plan.problems.append(
                (
                    f"models[{index}].quant",
                    f"unknown quantization {quant!r}; use one of {', '.join(BITS_PER_WEIGHT)}",
                )
            )
            continue
        result = _place(spec, placement, entry, quant, vram, vram_free, ram_free, gpu_bw, ram_bw)
        plan.placements.append(result)
        field_name = f"models[{index}]"
        if result.problem:
            plan.problems.append((f"{field_name}.model", result.problem))
            continue
        on_gpu = result.need_gb * result.gpu_layers / max(result.layers, 1)
        if placement.engine == "vllm":
            on_gpu = result.need_gb
        if placement.engine != "ollama":  # Ollama loads on demand: checked as a set below
            vram_free -= on_gpu
            ram_free -= result.need_gb - on_gpu
        claimed = placement.claimed_tok_s
        if claimed and result.bound_tok_s is not None and claimed > result.bound_tok_s:
            plan.problems.append(
                (
                    f"{field_name}.claimed_tok_s",
                    f"{claimed:g} tok/s claimed for {placement.model}, but reading its "
                    f"{result.weights_gb:.1f} GB of weights per token bounds it at "
                    f"{result.bound_tok_s:.1f} tok/s on this hardware ({result.where}); "
                    "measure it and write what you measured",
                )
            )
    plan.problems += _ollama_loaded_set(spec, plan, vram, ram_free)
    plan.vram_used_gb = round(vram - vram_free, 2)
    plan.ram_used_gb = round(spec.hardware.ram_gb - SYSTEM_RESERVE_GB - ram_free, 2)
    return plan


def _place(
    spec: HostSpec,
    placement: ModelPlacement,
    entry: ModelEntry,
    quant: str,
    vram: float,
    vram_free: float,
    ram_free: float,
    gpu_bw: float,
    ram_bw: float,
) -> PlacementPlan:
    context = context_for(spec, placement, entry)
    weights = entry.params_b * BITS_PER_WEIGHT[quant] / 8
    active = entry.active_params_b * BITS_PER_WEIGHT[quant] / 8
    kv = kv_cache_gb(entry, context, slots_for(spec, placement))
    need = weights + kv + RUNTIME_OVERHEAD_GB
    result = PlacementPlan(
        placement.model, placement.engine, quant, context, round(weights, 2), round(kv, 2),
        round(need, 2), "does-not-fit", 0, entry.layers, None,
    )  # fmt: skip
    if placement.engine == "vllm":
        gpus = max(placement.gpus, 1)
        per_gpu = vram / max(spec.hardware.nvidia_gpu_count, 1)
        budget = gpus * per_gpu * spec.vllm_gpu_memory_utilization
        if not vram or need > budget:
            result.problem = (
                f"{placement.model} at {quant} with a {context}-token context needs "
                f"{need:.1f} GB but vLLM gets {budget:.1f} GB "
                f"({spec.vllm_gpu_memory_utilization:.2f} x {gpus * per_gpu:g} GB VRAM) and "
                "cannot offload to RAM; use a smaller model, quantization or context, or "
                "serve it with llama.cpp/Ollama"
            )
            return result
        result.where, result.gpu_layers = "gpu", entry.layers
        result.bound_tok_s = round(gpu_bw / active, 1)
        return result
    gpu_room = vram_free if placement.engine != "ollama" else vram
    cpu_only = placement.engine == "llama.cpp" and spec.llamacpp_gpu_layers == 0
    if gpu_room > 0 and not cpu_only and need <= gpu_room:
        result.where, result.gpu_layers = "gpu", entry.layers
        result.bound_tok_s = round(gpu_bw / active, 1)
        return result
    room = (0.0 if cpu_only else max(gpu_room, 0.0)) + max(ram_free, 0.0)
    if need > room:
        result.problem = (
            f"{placement.model} at {quant} with a {context}-token context needs {need:.1f} GB "
            f"(weights {weights:.1f} + KV cache {kv:.1f} + runtime {RUNTIME_OVERHEAD_GB:g}) "
            f"but the host has {max(gpu_room, 0):g} GB VRAM + {max(ram_free, 0):.1f} GB RAM "
            f"free (after a {SYSTEM_RESERVE_GB:g} GB system reserve); choose a smaller model, "
            "quantization or context, or place it on a host with more memory"
        )
        return result
    usable_vram = 0.0 if cpu_only else max(gpu_room - kv - RUNTIME_OVERHEAD_GB, 0.0)
    layers_on_gpu = int(entry.layers * min(usable_vram / weights, 1.0)) if weights else 0
    if layers_on_gpu == 0:
        result.where = "cpu"
        result.bound_tok_s = round(ram_bw / active, 1)
        return result
    share = layers_on_gpu / entry.layers
    seconds = active * share / gpu_bw + active * (1 - share) / ram_bw
    result.where, result.gpu_layers = "partial", layers_on_gpu
    result.bound_tok_s = round(1 / seconds, 1)
    return result


def _ollama_loaded_set(
    spec: HostSpec, plan: HostPlan, vram: float, ram_free: float
) -> list[tuple[str, str]]:
    """Ollama keeps up to OLLAMA_MAX_LOADED_MODELS models loaded: the largest such set must
    fit in VRAM + RAM together, or requests evict each other and stall."""
    sizes = sorted(
        (p.need_gb for p in plan.placements if p.engine == "ollama" and not p.problem),
        reverse=True,
    )
    per_gpu = max(spec.hardware.nvidia_gpu_count, 1)
    loaded = spec.ollama_max_loaded_models or OLLAMA_LOADED_PER_GPU * per_gpu
    largest = sizes[:loaded]
    room = vram + max(ram_free, 0.0)
    if largest and sum(largest) > room:
        field_name = (
            "ollama_max_loaded_models" if spec.ollama_max_loaded_models is not None else "models"
        )
        return [
            (
                field_name,
                f"Ollama may keep {len(largest)} models loaded at once and the largest "
                f"{len(largest)} need {sum(largest):.1f} GB, more than the {room:.1f} GB of "
                "VRAM + free RAM; lower ollama_max_loaded_models or move a model to "
                "another host",
            )
        ]
    return []


def format_plan(plan: HostPlan) -> str:
    """The plan of one host as a small table."""
    lines = [
        f"{plan.host}: {plan.vram_gb:g} GB VRAM ({plan.gpu_bandwidth_gbs:g} GB/s), "
        f"{plan.ram_gb:g} GB RAM ({plan.ram_bandwidth_gbs:g} GB/s); dedicated use "
        f"{plan.vram_used_gb:g} GB VRAM, {plan.ram_used_gb:g} GB RAM"
    ]
    for p in plan.placements:
        where: str = p.where
        if p.where == "partial":
            where += f" ({p.gpu_layers}/{p.layers} layers on GPU)"
        bound = f"<= {p.bound_tok_s:g} tok/s" if p.bound_tok_s else "-"
        lines.append(
            f"  {p.model:<28} {p.engine:<9} {p.quant:<7} ctx {p.context:<6} "
            f"{p.need_gb:>6.1f} GB  {where:<28} {bound}"
        )
    return "\n".join(lines)
