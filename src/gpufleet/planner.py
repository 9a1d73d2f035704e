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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from gpufleet.catalogue import Catalogue, ModelEntry, model_entry, suggest
from gpufleet.engines import Engine, engine_for, serving
from gpufleet.engines.llamacpp import builds_for_gpu
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
RPC_SERVER = "ggml-rpc-server"
"""The server of a host that holds layers of another host's model; its memory limit's key."""
RPC_SERVER_MEMORY_GB = 0.2
"""What ``ggml-rpc-server`` itself takes beside the layers it holds."""
RAY_NODE = "ray"
"""The Ray node of a host that runs a later pipeline stage of another host's vLLM model; its
memory limit's key."""
RAY_NODE_MEMORY_GB = 8.0
"""What a Ray node running one vLLM pipeline stage takes in system memory: the raylet and a
vLLM worker per GPU, each with PyTorch and CUDA (as vLLM's own server, ``host_memory_gb``)."""
RAM_TRANSFER_RATE = {"ddr4": 3200, "ddr5": 5600, "lpddr5": 6400, "lpddr5x": 8000}
"""Typical transfer rate (MT/s) of each memory type, when the inventory gives none."""

Where = Literal["gpu", "partial", "cpu", "hosts", "does-not-fit"]
"""Where a placement's layers are: all on the GPU, some on it and the rest in RAM, all in
RAM, or split across this host and its ``rpc_workers``."""
LAN_ROUND_TRIP_S = 1e-4
"""A round trip on a quiet wired LAN (0.1 ms). A model split across hosts waits at least one
per worker for every token it decodes; the least it could be keeps the speed an upper bound."""
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
    rpc: tuple[SplitPart, ...] = ()
    """A model split across hosts: each host's share, this host's first, its workers' in the
    order of ``rpc_workers`` (the order of ``--rpc`` and of its devices)."""


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
    rpc_parts: list[RpcPart] = field(default_factory=list)
    """Layers this host holds of other hosts' models, for their llama-servers
    (``ggml-rpc-server``)."""

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


def gpu_memory(spec: HostSpec, catalogue: Catalogue) -> tuple[float, float, BandwidthSource]:
    """VRAM of the discrete GPUs the host's engines use (its NVIDIA GPUs, else its AMD ones)
    in GB, their slowest bandwidth in GB/s (measured on the host where it was, else declared
    or the catalogue's), and where that came from."""
    kind = "nvidia" if spec.hardware.nvidia_gpu_count else "amd_gpu"
    vram, bandwidths, declared = 0.0, [], False
    for accelerator in spec.hardware.accelerators:
        if accelerator.kind != kind:
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
AMD_GTT_DEFAULT_SHARE = 0.5
"""An AMD integrated GPU maps system memory through its GTT, which the kernel's TTM caps at
half of RAM unless ``ttm.pages_limit`` says otherwise (``amdgpu.gtt_gb``); the BIOS carve-out
("UMA frame buffer") is a small fixed part beside it that the planner does not count."""


def unified_gpu_memory_gb(spec: HostSpec) -> float:
    """GB of system memory a unified-memory GPU (Apple silicon, Jetson, an AMD integrated
    GPU's GTT) may hold models in; 0 for hosts without one. It is taken from the host's
    memory after the system reserve, so memory is never counted twice."""
    hardware = spec.hardware
    usable = max(hardware.ram_gb - SYSTEM_RESERVE_GB, 0.0)
    if hardware.amd_igpu:
        gtt = spec.amdgpu.gtt_gb or hardware.ram_gb * AMD_GTT_DEFAULT_SHARE
        return round(min(gtt, usable), 2)
    for accelerator in hardware.accelerators:
        if accelerator.kind in UNIFIED_GPU_SHARE:
            small, large = UNIFIED_GPU_SHARE[accelerator.kind]
            share = small if hardware.ram_gb <= 36 else large
            return round(min(hardware.ram_gb * share, usable), 2)
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
    per_gpu = vram / max(spec.hardware.gpu_count, 1)
    return sum(max(s.vram_gb, s.gpus * per_gpu) for s in spec.services)


def plan_host(
    spec: HostSpec, catalogue: Catalogue, fleet: Mapping[str, HostSpec] | None = None
) -> HostPlan:
    """Where each placed model of one host runs, and why it cannot where it cannot.

    ``fleet``: every host of the inventory, for models split across hosts (``rpc_workers``):
    this host's share of the models it serves that way and the layers it holds of others'.
    Without it those are left out: the host's own placements alone, which is what a split
    is planned into (each host's memory free after them)."""
    vram, gpu_bw, gpu_source = gpu_memory(spec, catalogue)
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
        if placement.split_workers:
            result = _split_placement(spec, index, entry, quant, catalogue, fleet)
        else:
            room = Room(vram, vram_free, ram_free, gpu_bw, ram_bw)
            result = _place(engine, spec, placement, entry, quant, room)
            result.bound_source = _bound_source(result, gpu_source, ram_source)
        result.index = index
        plan.placements.append(result)
        field_name = f"models[{index}]"
        if result.problem:
            if placement.split_workers and fleet is None:
                continue  # planned with its fleet: the fleet's check reports its problems
            where = result.problem_field
            plan.problems.append(
                (where[1:] if where.startswith(".") else f"{field_name}.{where}", result.problem)
            )
            continue
        if result.rpc:
            here = result.rpc[0]
            result.ram_gb = 0.0 if here.on_gpu else here.need_gb
            vram_free -= here.need_gb if here.on_gpu else 0.0
            ram_free -= result.ram_gb
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
    for part in rpc_parts(spec.name, fleet, catalogue) if fleet is not None else ():
        plan.rpc_parts.append(part)
        vram_free -= part.need_gb if part.on_gpu else 0.0
        ram_free -= 0.0 if part.on_gpu else part.need_gb
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
    # A Ray node runs the vLLM workers of its pipeline stage, the head's first stage too.
    heads_ray = any(p.rpc and p.engine == "vllm" and not p.problem for p in plan.placements)
    for server, runtime_gb in ((RPC_SERVER, RPC_SERVER_MEMORY_GB), (RAY_NODE, RAY_NODE_MEMORY_GB)):
        parts = [part for part in plan.rpc_parts if part.server == server]
        if parts or (server == RAY_NODE and heads_ray):
            held = sum(part.need_gb for part in parts if not part.on_gpu)
            wanted = (held + runtime_gb) * MEMORY_HEADROOM
            limits[server] = _round_up(min(max(wanted, MEMORY_FLOOR_GB), ceiling))
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
    if too_long := _context_too_long(placement, entry):
        result.problem_field, result.problem = "context", too_long
        return result
    if not engine.offloads_to_ram:
        per_gpu = room.vram / max(spec.hardware.gpu_count, 1)
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


def _context_too_long(placement: ModelPlacement, entry: ModelEntry) -> str | None:
    """Why the placement's context is more than its model supports; None where it is not."""
    if placement.context and placement.context > entry.context:
        return (
            f"{placement.context} tokens asked but {placement.model} supports "
            f"{entry.context}; lower context to at most {entry.context}"
        )
    return None


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


@dataclass(frozen=True)
class SplitPart:
    """One host's share of a model split across hosts by layers."""

    host: str
    layers: int
    need_gb: float
    free_gb: float
    bandwidth_gbs: float
    on_gpu: bool = False
    """Its layers are in the host's VRAM (else in its RAM)."""
    endpoint: str = ""
    """``address:port`` of a worker's ``ggml-rpc-server`` (empty for the host that serves);
    for vLLM, of the head's Ray GCS (the host that serves) and of each worker's node manager."""


@dataclass
class SplitPlan:
    """A model split across several hosts by layers (llama.cpp's RPC split: each device holds
    layers in proportion to its free memory)."""

    model: str
    quant: str
    context: int
    parts: list[SplitPart]
    bound_tok_s: float | None
    """Decoding reads each part's weights from its own memory, one after the other, and waits
    a LAN round trip per other host: the sum bounds the speed (the round trip taken as short
    as a LAN's can be, so it stays an upper bound)."""
    problem: str | None = None


def split_by_layers(
    model: str,
    entry: ModelEntry,
    quant: str,
    context: int,
    hosts: list[tuple[str, float, float]],
    pinned: Mapping[str, int] | None = None,
) -> SplitPlan:
    """``entry``'s layers over ``hosts`` (name, free GB, bandwidth GB/s of that memory), each
    host's share in proportion to its free memory (largest remainders first), with the
    weights and KV cache of its layers and a runtime's allowance each; a host in ``pinned``
    holds the layers given there, the others share the rest."""
    pinned = pinned or {}
    weights, active = weights_gb(entry.params_b, quant), weights_gb(entry.active_params_b, quant)
    per_layer = (weights + kv_cache_gb(entry, context)) / entry.layers
    free_hosts = [(name, free) for name, free, _ in hosts if name not in pinned]
    left = entry.layers - sum(pinned.values())
    total = sum(max(free, 0.0) for _, free in free_hosts)
    plan = SplitPlan(model, quant, context, [], None)
    if left < 0 or (left and not free_hosts):
        plan.problem = (
            f"the layers given ({sum(pinned.values())}) are not the model's {entry.layers}; "
            "give fewer, or leave them out for the planner's split"
        )
        return plan
    if left and total <= 0:
        plan.problem = "no host has memory free"
        return plan
    shares = {name: left * max(free, 0.0) / total for name, free in free_hosts} if left else {}
    counts = {name: math.floor(share) for name, share in shares.items()}
    by_remainder = sorted(shares, key=lambda name: shares[name] - counts[name], reverse=True)
    for name in by_remainder[: left - sum(counts.values())]:
        counts[name] += 1
    counts.update(pinned)
    plan.parts = [
        SplitPart(
            name, counts[name], round(per_layer * counts[name] + RUNTIME_OVERHEAD_GB, 2), free, bw
        )
        for name, free, bw in hosts
        if counts.get(name)
    ]
    short = [part for part in plan.parts if part.need_gb > part.free_gb]
    if short:
        part = short[0]
        plan.problem = (
            f"{part.host} would hold {part.layers} layers, {part.need_gb:.1f} GB, in "
            f"{part.free_gb:.1f} GB free"
        )
        return plan
    seconds = sum(active * part.layers / entry.layers / part.bandwidth_gbs for part in plan.parts)
    seconds += LAN_ROUND_TRIP_S * max(len(plan.parts) - 1, 0)
    plan.bound_tok_s = round(1 / seconds, 1) if seconds else None
    return plan


@dataclass(frozen=True)
class RpcPart:
    """Layers a host holds of another host's model (its ``rpc_workers`` names this host)."""

    head: str
    """The host that serves the model."""
    model: str
    layers: int
    of_layers: int
    need_gb: float
    on_gpu: bool
    server: str = RPC_SERVER
    """What holds them: ``ggml-rpc-server`` (llama.cpp) or the host's Ray node (vLLM)."""


def split_pool(spec: HostSpec, own: HostPlan) -> tuple[float, float, bool]:
    """Where a host keeps the layers it holds of a split model, after its own placements
    (``own``: its plan without any split): its GPU's free VRAM where llama.cpp builds for its
    GPU, else its free RAM. (free GB, bandwidth GB/s, on the GPU)."""
    if builds_for_gpu(spec) and own.vram_gb:
        return round(own.vram_gb - own.vram_used_gb, 2), own.gpu_bandwidth_gbs, True
    shared = own.vram_gb if own.unified else 0.0
    free = own.ram_gb - SYSTEM_RESERVE_GB - shared - own.ram_used_gb
    return round(free, 2), own.ram_bandwidth_gbs, False


def stage_pool(spec: HostSpec, own: HostPlan, gpus: int, share: float) -> tuple[float, float]:
    """What a host gives one pipeline stage of a vLLM model split across hosts, after its own
    placements (``own``): ``gpus`` of its NVIDIA GPUs, at vLLM's share of their memory, less
    what its own models already hold. (free GB, bandwidth GB/s); no room without the GPUs."""
    count = spec.hardware.nvidia_gpu_count
    if count < gpus or not own.vram_gb:
        return 0.0, own.gpu_bandwidth_gbs
    per_gpu = own.vram_gb / count
    free = min(gpus * per_gpu, own.vram_gb - own.vram_used_gb) * share
    return round(max(free, 0.0), 2), own.gpu_bandwidth_gbs


def _split_placement(
    spec: HostSpec,
    index: int,
    entry: ModelEntry,
    quant: str,
    catalogue: Catalogue,
    fleet: Mapping[str, HostSpec] | None,
) -> PlacementPlan:
    """A placement split across hosts (``rpc_workers``, ``ray_workers``): its layers over
    this host and its workers, each holding a share in proportion to the memory its own
    placements leave free (for vLLM, in its GPUs' share)."""
    from gpufleet.routing import service_address  # the router's module plans with this one

    placement = spec.models[index]
    ray = bool(placement.ray_workers)
    field_name = "ray_workers" if ray else "rpc_workers"
    engine = engine_for(spec, placement)
    context = context_for(engine, spec, placement, entry)
    weights = weights_gb(entry.params_b, quant)
    kv = kv_cache_gb(entry, context, engine.kv_slots(spec))
    result = PlacementPlan(
        placement.model, placement.engine, quant, context, round(weights, 2), round(kv, 2),
        round(weights + kv + RUNTIME_OVERHEAD_GB, 2), "does-not-fit", 0, entry.layers, None,
        slots=engine.slots(spec), threads=engine.threads(spec),
        kind="embedding" if entry.kind == "embedding" else "llm", problem_field=field_name,
        gpus=max(placement.gpus, 1) if ray else 0,
    )  # fmt: skip
    if fleet is None:
        result.problem = "split across hosts: planned with the fleet (gpufleet plan INVENTORY)"
        return result
    if too_long := _context_too_long(placement, entry):
        result.problem_field, result.problem = "context", too_long
        return result
    names = [spec.name, *placement.split_workers]
    missing = [name for name in names if name not in fleet]
    if missing:
        result.problem = f"no host {missing[0]!r} in this inventory; name a host of it"
        return result
    pools, endpoints = {}, {}
    for name in names:
        host_spec = fleet[name]
        own = plan_host(host_spec, catalogue)
        if ray:
            ports = host_spec.vllm.ray
            port = ports.port if name == spec.name else ports.node_manager_port
            free, bw = stage_pool(host_spec, own, result.gpus, spec.vllm.gpu_memory_utilization)
            pools[name] = (free, bw, True)
            endpoints[name] = f"{service_address(host_spec)}:{port}"
        else:
            pools[name] = split_pool(host_spec, own)
            endpoints[name] = f"{service_address(host_spec)}:{host_spec.llamacpp.rpc_port}"
    split = split_by_layers(
        placement.model,
        entry,
        quant,
        context,
        [(name, free, bw) for name, (free, bw, _) in pools.items()],
        {w.host: w.layers for w in placement.rpc_workers if w.layers},
    )
    short = [n for n in names if ray and fleet[n].hardware.nvidia_gpu_count < result.gpus]
    if short:
        count = fleet[short[0]].hardware.nvidia_gpu_count
        result.problem = (
            f"{short[0]} has {count} NVIDIA GPU(s) and every pipeline stage runs on "
            f"{result.gpus} (gpus, the tensor-parallel size): name a host with "
            f"{result.gpus}, or lower gpus"
        )
        return result
    if split.problem:
        result.problem = (
            f"split over {', '.join(names)}: {split.problem}; free memory on them, give the "
            "workers' layers, or add a worker"
        )
        return result
    held = {part.host: part for part in split.parts}
    idle = [name for name in names[1:] if name not in held]
    if idle:
        gpus = f" on {result.gpus} NVIDIA GPU(s)" if ray else ""
        result.problem = (
            f"{idle[0]} would hold no layer ({pools[idle[0]][0]:.1f} GB free{gpus} after its "
            f"own models): drop it from {field_name}, or free memory on it"
        )
        return result
    parts = []
    for name in names:
        free, bw, on_gpu = pools[name]
        part = held.get(name) or SplitPart(name, 0, 0.0, free, bw)
        endpoint = endpoints[name] if ray or name != spec.name else ""
        parts.append(SplitPart(part.host, part.layers, part.need_gb, free, bw, on_gpu, endpoint))
    result.rpc = tuple(parts)
    result.where = "hosts"
    result.need_gb = round(sum(part.need_gb for part in parts), 2)
    result.gpu_layers = sum(part.layers for part in parts[1:]) + (
        parts[0].layers if parts[0].on_gpu else 0
    )
    result.bound_tok_s = split.bound_tok_s
    result.bound_source = (
        "measured"
        if all(_measured_pool(fleet[part.host], part.on_gpu) for part in parts)
        else "estimated"
    )
    return result


def _measured_pool(spec: HostSpec, on_gpu: bool) -> bool:
    measured = spec.hardware.measured
    if measured is None:
        return False
    return bool(measured.gpu_bandwidth_gbs if on_gpu else measured.ram_bandwidth_gbs)


def rpc_parts(name: str, fleet: Mapping[str, HostSpec], catalogue: Catalogue) -> list[RpcPart]:
    """The layers host ``name`` holds of other hosts' models, as those hosts plan them."""
    parts = []
    for head in fleet.values():
        for index, placement in enumerate(head.models):
            if name not in placement.split_workers:
                continue
            try:
                entry = model_entry(placement, catalogue)
            except (GGUFError, OSError):
                continue  # the serving host's own check reports it
            quant = placement_quant(placement)
            if entry is None or quant not in BITS_PER_WEIGHT:
                continue
            result = _split_placement(head, index, entry, quant, catalogue, fleet)
            share = next((part for part in result.rpc if part.host == name), None)
            if result.problem or share is None:
                continue  # refused on the serving host: nothing held
            parts.append(
                RpcPart(
                    head.name, placement.model, share.layers, entry.layers, share.need_gb,
                    share.on_gpu, RAY_NODE if placement.ray_workers else RPC_SERVER,
                )
            )  # fmt: skip
    return parts


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
    if p.rpc:
        shares = [f"{p.rpc[0].layers} here"] + [
            f"{part.layers} on {part.host}" for part in p.rpc[1:]
        ]
        where += f" ({', '.join(shares)} of {p.layers} layers)"
    bound = f"<= {p.bound_tok_s:g} tok/s ({p.bound_source})" if p.bound_tok_s else "-"
    return (p.model, p.engine, p.quant, str(p.context), f"{p.need_gb:.1f} GB", where, bound)


def rpc_part_line(part: RpcPart) -> str:
    """A host's share of another host's model, as ``gpufleet plan`` shows it."""
    memory = "VRAM" if part.on_gpu else "RAM"
    return (
        f"holds {part.layers}/{part.of_layers} layers of {part.head}'s {part.model} for it "
        f"({part.server}, {part.need_gb:.1f} GB {memory})"
    )
