"""Capacity planner: where each placed model runs, what memory it takes, how fast it can be.

Pure arithmetic on the host data and the catalogues, fast enough for a whole fleet in well
under a second. Memory for a model = weights (parameters x bits per weight) + KV cache
(2 x layers x KV heads x head dim x context x 2 bytes x parallel slots) + a runtime
allowance. Decoding reads every active weight once per token, so tokens/s can never exceed
memory bandwidth / bytes of active weights; with layers split between GPU and CPU the two
reads add up. Each engine server also gets a system memory limit from the same figures
(:func:`memory_limits`). Example::

    >>> plan_host(spec, load_catalogue()).placements[0].where
    'gpu'
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

from gpufleet.catalogue import Catalogue, ModelEntry, model_entry, suggest
from gpufleet.engines import Engine, engine_for, serving
from gpufleet.gguf import GGUFError
from gpufleet.models import HostSpec, ModelPlacement
from gpufleet.sizing import BITS_PER_WEIGHT, SYSTEM_RESERVE_GB, placement_quant, weights_gb

RUNTIME_OVERHEAD_GB = 0.3
"""Compute buffers and the CUDA context an engine adds per loaded model."""
KV_BYTES = 2
"""KV cache entries are FP16 unless an engine is told otherwise."""
MEMORY_HEADROOM = 1.2
"""A server's memory limit is 20% above what it is planned to hold: allocator slack, request
buffers, a prompt longer than the warm-up's."""
MEMORY_FLOOR_GB = 2.0
"""No server is limited below this (unless the host is smaller): a runtime alone takes 1 GB."""
RAM_TRANSFER_RATE = {"ddr4": 3200, "ddr5": 5600, "lpddr5": 6400, "lpddr5x": 8000}
"""Typical transfer rate (MT/s) of each memory type, when the inventory gives none."""

Where = Literal["gpu", "partial", "cpu", "does-not-fit"]
BandwidthSource = Literal["measured", "declared", "estimated", "catalogue"]
"""Where a bandwidth figure came from: measured on the host (``hardware.measured``), declared
in its data (``ram_bandwidth_gbs``, an accelerator's ``bandwidth_gbs``), estimated from the
memory's type, channels and rate, or the catalogue's figure for the part."""


@dataclass
class PlacementPlan:
    """What the planner decided for one placement; the engine renders exactly these numbers
    (layers on the GPU, context, parallel slots, threads, GPUs)."""

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
    slots: int = 1
    threads: int = 1
    gpus: int = 0
    kind: str = "llm"
    index: int = 0
    """The placement's position in the host's ``models``."""
    problem_field: str = "model"
    """The placement's field the problem is about (``model``, ``context``) or, starting
    with a dot, a host field (``.llamacpp.gpu_layers``)."""
    ram_gb: float = 0.0
    """What it holds in system memory: the weights and KV cache the GPU does not."""
    memory_max_gb: float = 0.0
    """The system memory limit of the server that runs it (:func:`memory_limits`)."""
    bound_source: str = ""
    """Where the bandwidth behind ``bound_tok_s`` came from (:data:`BandwidthSource`; both,
    GPU's first, for a placement split between GPU and RAM)."""


@dataclass
class HostPlan:
    host: str
    vram_gb: float
    ram_gb: float
    gpu_bandwidth_gbs: float
    ram_bandwidth_gbs: float
    placements: list[PlacementPlan] = field(default_factory=list)
    unified: bool = False
    """The GPU's memory is a share of system memory (Apple silicon, Jetson): ``vram_gb`` is
    that share and ``ram_gb`` the whole."""
    vram_used_gb: float = 0.0
    ram_used_gb: float = 0.0
    problems: list[tuple[str, str]] = field(default_factory=list)
    memory_max_gb: dict[str, float] = field(default_factory=dict)
    """Engine name -> its server's system memory limit in GB (:func:`memory_limits`)."""
    gpu_bandwidth_source: BandwidthSource = "catalogue"
    ram_bandwidth_source: BandwidthSource = "estimated"

    def as_dict(self) -> dict:
        return asdict(self)


def ram_bandwidth(spec: HostSpec) -> tuple[float, BandwidthSource]:
    """System memory bandwidth and where it came from: measured on the host, else declared,
    else estimated as channels x 8 bytes x transfer rate (a peak no CPU quite reaches)."""
    hardware = spec.hardware
    if hardware.measured and hardware.measured.ram_bandwidth_gbs:
        return hardware.measured.ram_bandwidth_gbs, "measured"
    if hardware.ram_bandwidth_gbs:
        return hardware.ram_bandwidth_gbs, "declared"
    rate = hardware.ram_mts or RAM_TRANSFER_RATE[hardware.ram_type]
    return hardware.ram_channels * 8 * rate / 1000, "estimated"


def nvidia_memory(spec: HostSpec, catalogue: Catalogue) -> tuple[float, float, BandwidthSource]:
    """VRAM of the discrete NVIDIA GPUs in GB, their slowest bandwidth in GB/s (measured on
    the host where it was, else declared or the catalogue's), and where that came from."""
    vram, bandwidths, declared = 0.0, [], False
    for accelerator in spec.hardware.accelerators:
        if accelerator.kind != "nvidia":
            continue
        entry = catalogue.accelerator_for(accelerator)
        if entry is None:
            continue
        per_device = accelerator.vram_gb or max(entry.vram_gb or (0.0,))
        vram += per_device * accelerator.count
        bandwidths.append(entry.bandwidth_gbs)
        declared |= accelerator.bandwidth_gbs is not None
    measured = spec.hardware.measured
    if bandwidths and measured and measured.gpu_bandwidth_gbs:
        return vram, measured.gpu_bandwidth_gbs, "measured"
    return vram, min(bandwidths, default=0.0), "declared" if declared else "catalogue"


def unified_bandwidth(spec: HostSpec, catalogue: Catalogue) -> float | None:
    """Bandwidth of a unified-memory accelerator (Apple, AMD iGPU, Jetson): system memory
    is that memory."""
    for accelerator in spec.hardware.accelerators:
        if accelerator.kind in ("apple_metal", "amd_igpu", "jetson"):
            entry = catalogue.accelerator_for(accelerator)
            if entry:
                return entry.bandwidth_gbs
    return None


UNIFIED_GPU_SHARE = {"apple_metal": (2 / 3, 3 / 4), "jetson": (1.0, 1.0)}
"""Share of system memory the GPU may use, (up to 36 GB of RAM, above): macOS lets Metal
wire about two thirds of a small Mac's memory and three quarters of a larger one's (its
``recommendedMaxWorkingSetSize``, which Ollama and llama.cpp plan with); a Jetson's GPU
allocates from the whole of it."""


def unified_gpu_memory_gb(spec: HostSpec) -> float:
    """GB of system memory a unified-memory GPU (Apple silicon, Jetson) may hold models in;
    0 for hosts without one. It is taken from the host's memory after the system reserve, so
    memory is never counted twice."""
    usable = max(spec.hardware.ram_gb - SYSTEM_RESERVE_GB, 0.0)
    for accelerator in spec.hardware.accelerators:
        if accelerator.kind in UNIFIED_GPU_SHARE:
            small, large = UNIFIED_GPU_SHARE[accelerator.kind]
            share = small if spec.hardware.ram_gb <= 36 else large
            return round(min(spec.hardware.ram_gb * share, usable), 2)
    return 0.0


def context_for(
    engine: Engine, spec: HostSpec, placement: ModelPlacement, entry: ModelEntry
) -> int:
    """The placement's own context, else the engine's default for the model."""
    return placement.context or engine.default_context(spec, placement, entry.context)


def kv_cache_gb(entry: ModelEntry, context: int, slots: int = 1) -> float:
    if entry.kind == "embedding":
        return 0.0
    return 2 * entry.layers * entry.kv_heads * entry.head_dim * context * KV_BYTES * slots / 1e9


def services_vram_gb(spec: HostSpec, vram: float) -> float:
    """VRAM the host's declared ``services`` take before any model is placed: what each
    declares, or the whole GPUs it reserves."""
    per_gpu = vram / max(spec.hardware.nvidia_gpu_count, 1)
    return sum(max(s.vram_gb, s.gpus * per_gpu) for s in spec.services)


def plan_host(spec: HostSpec, catalogue: Catalogue) -> HostPlan:
    """Where each placed model of one host runs, and why it cannot where it cannot."""
    vram, gpu_bw, gpu_source = nvidia_memory(spec, catalogue)
    unified = unified_bandwidth(spec, catalogue)
    measured = spec.hardware.measured
    ram_bw, ram_source = ram_bandwidth(spec)
    if unified and ram_source != "measured":
        # Unified memory is the SoC's memory: its catalogue figure, unless the CPUs' own
        # reads were measured (they reach less of it than the GPU: a Mac's CPUs about half).
        ram_bw, ram_source = unified, "catalogue"
    ram_free = spec.hardware.ram_gb - SYSTEM_RESERVE_GB
    shared = unified_gpu_memory_gb(spec)
    if shared and unified:
        vram, gpu_bw, gpu_source = shared, unified, "catalogue"
        if measured and measured.gpu_bandwidth_gbs:  # a Jetson's GPU, probed through CUDA
            gpu_bw, gpu_source = measured.gpu_bandwidth_gbs, "measured"
        ram_free -= shared
    plan = HostPlan(spec.name, vram, spec.hardware.ram_gb, gpu_bw, ram_bw, unified=bool(shared))
    plan.gpu_bandwidth_source, plan.ram_bandwidth_source = gpu_source, ram_source
    vram_free = max(vram - services_vram_gb(spec, vram), 0.0)
    for index, placement in enumerate(spec.models):
        engine = engine_for(spec, placement)
        try:
            entry = model_entry(placement, catalogue)
        except (GGUFError, OSError) as error:
            plan.problems.append(
                (
                    f"models[{index}].source",
                    f"the GGUF on this machine cannot be read ({error}); give a whole GGUF "
                    "file, or a URL with its sha256",
                )
            )
            continue
        quant = placement_quant(placement)
        if entry is None:
            plan.problems.append(
                (
                    f"models[{index}].model",
                    f"unknown model {placement.model!r}"
                    f"{suggest(placement.model, catalogue.models)}; "
                    + catalogue.how_to_declare_model(placement.model),
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
        room = Room(vram, vram_free, ram_free, gpu_bw, ram_bw)
        result = _place(engine, spec, placement, entry, quant, room)
        result.index = index
        result.bound_source = _bound_source(result, gpu_source, ram_source)
        plan.placements.append(result)
        field_name = f"models[{index}]"
        if result.problem:
            where = result.problem_field
            plan.problems.append(
                (where[1:] if where.startswith(".") else f"{field_name}.{where}", result.problem)
            )
            continue
        on_gpu = on_gpu_gb(result, engine)
        result.ram_gb = round(result.need_gb - on_gpu, 2)
        if not engine.loads_on_demand:  # on-demand loading is checked as a set below
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
    plan.problems += _loaded_sets(spec, plan, vram, ram_free)
    plan.vram_used_gb = round(vram - vram_free, 2)
    plan.ram_used_gb = round(spec.hardware.ram_gb - SYSTEM_RESERVE_GB - shared - ram_free, 2)
    plan.memory_max_gb, too_low = memory_limits(spec, plan)
    plan.problems += too_low
    for placement_plan in plan.placements:
        placement_plan.memory_max_gb = plan.memory_max_gb.get(placement_plan.engine, 0.0)
    return plan


def _bound_source(result: PlacementPlan, gpu: str, ram: str) -> str:
    """Where the bandwidth behind a placement's bound came from."""
    if result.bound_tok_s is None:
        return ""
    if result.where == "gpu":
        return gpu
    if result.where == "cpu":
        return ram
    return gpu if gpu == ram else f"{gpu} GPU, {ram} RAM"


def _round_up(gb: float) -> float:
    return math.ceil(round(gb * 10, 6)) / 10


def memory_limits(spec: HostSpec, plan: HostPlan) -> tuple[dict[str, float], list[tuple[str, str]]]:
    """The system memory limit of each engine server on the host in GB (its unit's
    ``MemoryMax=``, or ``docker run --memory`` for a container), so a server that outgrows
    its plan is held by its own limit rather than pushing the host into swap or letting the
    OOM killer pick a victim (seed 000: allocation failures, container limits as the cure).
    Returns the limits by engine name and the problems of limits set too low.

    * ``<engine>.memory_max_gb`` in the inventory is taken as given; below what the plan puts
      in that server's RAM it is refused.
    * A server of one model (llama.cpp, vLLM): what the plan puts in RAM (weights and KV
      cache the GPU does not hold) plus the engine's own runtime (``host_memory_gb``), with
      20% headroom.
    * Ollama, which loads models on demand and decides each one's GPU split itself when it
      loads it (with other models loaded, less goes on the GPU): the whole need of the
      largest set it may keep loaded (weights, KV cache and runtime of each) plus its
      runtime, as if all of it were in RAM, with the same headroom. Seed 000 shows why not
      less: deepseek-coder:33b held 18.6 GB of RAM beside only 8.6 GB on a 16 GB card, far
      more than the ~5 GB a full-GPU split would leave over. Bounded by the loaded set, not
      by the host, it still leaves the rest of the host to other servers.
    * An engine the planner does not size (Triton's repository): what the limits of the
      host's other servers leave.

    Every limit is at least ``MEMORY_FLOOR_GB`` and at most the host's RAM less the system
    reserve (a limit above that would never hold anything back); on a host too small for
    both, the floor wins, up to the host's RAM.
    """
    ram = spec.hardware.ram_gb
    ceiling = max(ram - SYSTEM_RESERVE_GB, min(MEMORY_FLOOR_GB, ram))
    limits: dict[str, float] = {}
    problems = []
    unsized: list[Engine] = []
    for engine in serving(spec):
        placed = [p for p in plan.placements if p.engine == engine.name and not p.problem]
        if engine.loads_on_demand:
            loaded = sorted((p.need_gb for p in placed), reverse=True)[: engine.max_loaded(spec)]
            holds = sum(loaded)
            least = max(holds - plan.vram_gb, 0.0)  # what cannot be on the GPU in any split
        elif engine.placements(spec):
            holds = least = sum(p.ram_gb for p in placed)
        else:
            unsized.append(engine)
            continue
        asked = getattr(engine.settings(spec), "memory_max_gb", None)
        if asked is not None:
            limits[engine.name] = asked
            if asked < least:
                problems.append(
                    (
                        f"{engine.settings_key}.memory_max_gb",
                        f"{asked:g} GB is less than the {least:.1f} GB of system memory the "
                        f"plan puts in {engine.name}'s server; raise it, or leave it out for "
                        "the planner's limit",
                    )
                )
            continue
        wanted = (holds + engine.host_memory_gb) * MEMORY_HEADROOM
        limits[engine.name] = _round_up(min(max(wanted, MEMORY_FLOOR_GB), ceiling))
    for engine in unsized:
        asked = getattr(engine.settings(spec), "memory_max_gb", None)
        left = ceiling - sum(limits.values())
        limits[engine.name] = asked or _round_up(min(max(left, MEMORY_FLOOR_GB), ceiling))
    return limits, problems


@dataclass(frozen=True)
class Room:
    """Memory and bandwidth a placement is planned into."""

    vram: float
    vram_free: float
    ram_free: float
    gpu_bw: float
    ram_bw: float


def _place(
    engine: Engine,
    spec: HostSpec,
    placement: ModelPlacement,
    entry: ModelEntry,
    quant: str,
    room: Room,
) -> PlacementPlan:
    context = context_for(engine, spec, placement, entry)
    weights, active = weights_gb(entry.params_b, quant), weights_gb(entry.active_params_b, quant)
    kv = kv_cache_gb(entry, context, engine.kv_slots(spec))
    need = weights + kv + RUNTIME_OVERHEAD_GB
    result = PlacementPlan(
        placement.model, placement.engine, quant, context, round(weights, 2), round(kv, 2),
        round(need, 2), "does-not-fit", 0, entry.layers, None,
        slots=engine.slots(spec), threads=engine.threads(spec),
        gpus=max(placement.gpus, 1) if not engine.offloads_to_ram else placement.gpus,
        kind="embedding" if entry.kind == "embedding" else "llm",
    )  # fmt: skip
    if placement.context and placement.context > entry.context:
        result.problem_field = "context"
        result.problem = (
            f"{placement.context} tokens asked but {placement.model} supports "
            f"{entry.context}; lower context to at most {entry.context}"
        )
        return result
    if not engine.offloads_to_ram:
        per_gpu = room.vram / max(spec.hardware.nvidia_gpu_count, 1)
        share = engine.gpu_memory_share(spec)
        budget = min(result.gpus * per_gpu, room.vram_free) * share
        if not room.vram or need > budget:
            result.problem = (
                f"{placement.model} at {quant} with a {context}-token context needs "
                f"{need:.1f} GB but {placement.engine} gets {budget:.1f} GB "
                f"({share:.2f} x {min(result.gpus * per_gpu, room.vram_free):g} GB free VRAM) "
                "and cannot offload to RAM; use a smaller model, quantization or context, or "
                "serve it with an engine that offloads (llama.cpp, Ollama)"
            )
            return result
        result.where, result.gpu_layers = "gpu", entry.layers
        result.bound_tok_s = round(room.gpu_bw / active, 1)
        return result
    asked = engine.gpu_layers_asked(spec)
    gpu_room = 0.0 if asked == 0 else room.vram if engine.loads_on_demand else room.vram_free
    gpu_room = max(gpu_room, 0.0)
    usable_vram = max(gpu_room - kv - RUNTIME_OVERHEAD_GB, 0.0)
    fits = entry.layers if need <= gpu_room else 0
    if not fits and weights:
        fits = int(entry.layers * min(usable_vram / weights, 1.0))
    if asked is not None and asked > fits:
        result.problem_field = f".{engine.settings_key}.gpu_layers"
        result.problem = (
            f"{asked} layers of {placement.model} asked on the GPU but {fits} of its "
            f"{entry.layers} fit in {gpu_room:.1f} GB of free VRAM at a {context}-token "
            f"context; set gpu_layers to at most {fits}, or leave it out to let the planner "
            "decide"
        )
        return result
    layers_on_gpu = fits if asked is None else asked
    on_gpu = weights * layers_on_gpu / entry.layers if entry.layers else 0.0
    if layers_on_gpu == entry.layers and need <= gpu_room:
        result.where, result.gpu_layers = "gpu", entry.layers
        result.bound_tok_s = round(room.gpu_bw / active, 1)
        return result
    ram_room = max(room.ram_free, 0.0)
    in_ram = need - on_gpu - (kv + RUNTIME_OVERHEAD_GB if layers_on_gpu else 0.0)
    if in_ram > ram_room:
        result.problem = (
            f"{placement.model} at {quant} with a {context}-token context needs {need:.1f} GB "
            f"(weights {weights:.1f} + KV cache {kv:.1f} + runtime {RUNTIME_OVERHEAD_GB:g}) "
            f"but the host has {gpu_room:g} GB VRAM + {ram_room:.1f} GB RAM "
            f"free (after a {SYSTEM_RESERVE_GB:g} GB system reserve); choose a smaller model, "
            "quantization or context, or place it on a host with more memory"
        )
        return result
    if layers_on_gpu == 0:
        result.where = "cpu"
        result.bound_tok_s = round(room.ram_bw / active, 1)
        return result
    share = layers_on_gpu / entry.layers
    seconds = active * share / room.gpu_bw + active * (1 - share) / room.ram_bw
    result.where, result.gpu_layers = "partial", layers_on_gpu
    result.bound_tok_s = round(1 / seconds, 1)
    return result


def place_in(
    spec: HostSpec, placement: ModelPlacement, entry: ModelEntry, room: Room
) -> PlacementPlan:
    """Where one placement would run on ``spec`` with ``room`` left, decided exactly as
    :func:`plan_host` decides it (the placement solver asks this of every host it weighs)."""
    return _place(
        engine_for(spec, placement), spec, placement, entry, placement_quant(placement), room
    )


def on_gpu_gb(result: PlacementPlan, engine: Engine) -> float:
    """GB of a planned placement's need the GPU holds (the rest is in system memory)."""
    if not engine.offloads_to_ram:
        return result.need_gb
    return result.need_gb * result.gpu_layers / max(result.layers, 1)


@dataclass
class SplitPart:
    """One host's share of a model split across hosts by layers."""

    host: str
    layers: int
    need_gb: float
    free_gb: float
    bandwidth_gbs: float


@dataclass
class SplitPlan:
    """A model too big for one host, split across several by layers (llama.cpp's RPC split:
    each device holds layers in proportion to its free memory)."""

    model: str
    quant: str
    context: int
    parts: list[SplitPart]
    bound_tok_s: float | None
    """Decoding reads each part's weights from its own memory, one after the other: the sum
    of those reads bounds the speed. The network's hops are not counted: still an upper bound."""
    problem: str | None = None


def split_by_layers(
    model: str,
    entry: ModelEntry,
    quant: str,
    context: int,
    hosts: list[tuple[str, float, float]],
) -> SplitPlan:
    """``entry``'s layers over ``hosts`` (name, free GB, bandwidth GB/s of that memory), each
    host's share in proportion to its free memory (largest remainders first), with the
    weights and KV cache of its layers and a runtime's allowance each."""
    weights, active = weights_gb(entry.params_b, quant), weights_gb(entry.active_params_b, quant)
    per_layer = (weights + kv_cache_gb(entry, context)) / entry.layers
    total = sum(max(free, 0.0) for _, free, _ in hosts)
    if not hosts or total <= 0:
        return SplitPlan(model, quant, context, [], None, "no host has memory free")
    shares = [entry.layers * max(free, 0.0) / total for _, free, _ in hosts]
    layers = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(hosts)), key=lambda i: shares[i] - layers[i], reverse=True)
    for i in by_remainder[: entry.layers - sum(layers)]:
        layers[i] += 1
    parts = [
        SplitPart(name, count, round(per_layer * count + RUNTIME_OVERHEAD_GB, 2), free, bw)
        for (name, free, bw), count in zip(hosts, layers, strict=True)
        if count
    ]
    plan = SplitPlan(model, quant, context, parts, None)
    short = [part for part in parts if part.need_gb > part.free_gb]
    if short:
        part = short[0]
        plan.problem = (
            f"{part.host} would hold {part.layers} layers, {part.need_gb:.1f} GB, in "
            f"{part.free_gb:.1f} GB free"
        )
        return plan
    seconds = sum(active * part.layers / entry.layers / part.bandwidth_gbs for part in parts)
    plan.bound_tok_s = round(1 / seconds, 1) if seconds else None
    return plan


def largest_loaded(spec: HostSpec, plan: HostPlan, engine: Engine) -> list[PlacementPlan]:
    """The largest set of placements an engine that loads models on demand (Ollama) may keep
    loaded at once: its ``max_loaded`` biggest by need."""
    placed = [p for p in plan.placements if p.engine == engine.name and not p.problem]
    placed.sort(key=lambda p: p.need_gb, reverse=True)
    return placed[: engine.max_loaded(spec)]


def _loaded_sets(
    spec: HostSpec, plan: HostPlan, vram: float, ram_free: float
) -> list[tuple[str, str]]:
    """An engine that loads models on demand (Ollama) keeps up to its maximum loaded at once:
    the largest such set must fit in VRAM + RAM together, or requests evict each other and
    stall."""
    problems = []
    for engine in {engine_for(spec, p) for p in spec.models if engine_for(spec, p).loads_on_demand}:
        settings = engine.settings(spec)
        largest = [p.need_gb for p in largest_loaded(spec, plan, engine)]
        room = vram + max(ram_free, 0.0)
        if largest and sum(largest) > room:
            field_name = (
                f"{engine.settings_key}.max_loaded_models"
                if settings.max_loaded_models is not None
                else "models"
            )
            problems.append(
                (
                    field_name,
                    f"{engine.name} may keep {len(largest)} models loaded at once and the "
                    f"largest {len(largest)} need {sum(largest):.1f} GB, more than the "
                    f"{room:.1f} GB of VRAM + free RAM; lower {engine.settings_key}."
                    "max_loaded_models or move a model to another host",
                )
            )
    return problems


PLAN_COLUMNS = ("model", "engine", "quant", "context", "needs", "where", "speed bound")
"""The columns of a host's plan (:func:`placement_cells`), as ``gpufleet plan`` shows them."""


def plan_summary(plan: HostPlan) -> str:
    """The line above a host's plan: its memory, and what its dedicated use takes."""
    gpu = f"{plan.gpu_bandwidth_gbs:g} GB/s {plan.gpu_bandwidth_source}"
    ram = f"{plan.ram_bandwidth_gbs:g} GB/s {plan.ram_bandwidth_source}"
    memory = (
        f"{plan.ram_gb:g} GB unified memory ({plan.vram_gb:g} GB of it for the GPU, {gpu})"
        if plan.unified
        else f"{plan.vram_gb:g} GB VRAM ({gpu}), {plan.ram_gb:g} GB RAM ({ram})"
        if plan.gpu_bandwidth_gbs
        else f"no GPU, {plan.ram_gb:g} GB RAM ({ram})"
    )
    return (
        f"{plan.host}: {memory}; dedicated use "
        f"{plan.vram_used_gb:g} GB VRAM, {plan.ram_used_gb:g} GB RAM"
    )


def placement_cells(p: PlacementPlan) -> tuple[str, ...]:
    """One placement as the cells of :data:`PLAN_COLUMNS`."""
    where: str = p.where
    if p.where == "partial":
        where += f" ({p.gpu_layers}/{p.layers} layers on GPU)"
    bound = f"<= {p.bound_tok_s:g} tok/s ({p.bound_source})" if p.bound_tok_s else "-"
    return (p.model, p.engine, p.quant, str(p.context), f"{p.need_gb:.1f} GB", where, bound)
