"""What each host serves: the planner's decisions, rendered by the engines. Pure logic.

The same rendering goes into the systemd units, the Modelfiles, ``gpufleet engines`` and the
tests, so what a user reviews is what runs, and what runs is what the planner decided.
Secrets appear as their references, never as values. Example::

    >>> [run.rendered.command[:1] for run in engine_runs(spec)]
    [(), ('/usr/local/bin/llama-server',)]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gpufleet.catalogue import Catalogue, fleet_catalogue
from gpufleet.engines import Engine, Rendered, engine_for, served_name, serving
from gpufleet.engines.llamacpp import LLAMACPP, RPC_UNIT
from gpufleet.engines.vllm import VLLM
from gpufleet.models import HostSpec, ModelPlacement
from gpufleet.planner import RAY_NODE, RPC_SERVER, HostPlan, PlacementPlan, RpcPart, plan_host


class NotPlanned(ValueError):
    """A placement the planner could not place (the inventory check reports why)."""


@dataclass(frozen=True)
class PlacementRun:
    """One placement as it runs: the planner's decision and the engine's rendering of it."""

    placement: ModelPlacement
    decision: PlacementPlan
    rendered: Rendered


@dataclass(frozen=True)
class EngineRun:
    """One engine on one host and the placements it serves."""

    engine: Engine
    placements: tuple[PlacementRun, ...]
    memory_max_gb: float = 0.0
    """Its server's system memory limit, as the planner set it."""

    @property
    def rendered(self) -> Rendered:
        """The server's rendering: its one model's, or (several models) the first's, whose
        environment is the server's own."""
        return self.placements[0].rendered if self.placements else Rendered()


@dataclass(frozen=True)
class RpcServerRun:
    """``ggml-rpc-server`` on a host that holds layers of other hosts' models."""

    parts: tuple[RpcPart, ...]
    command: tuple[str, ...]
    memory_max_gb: float
    environment: tuple[tuple[str, str], ...] = ()

    @property
    def held(self) -> str:
        """What it holds, in words: ``8/18 layers of lab-cpu-1's gemma3:270m``."""
        return ", ".join(
            f"{part.layers}/{part.of_layers} layers of {part.head}'s {part.model}"
            for part in self.parts
        )


def rpc_server_run(
    spec: HostSpec, fleet: Mapping[str, HostSpec], catalogue: Catalogue | None = None
) -> RpcServerRun | None:
    """What the host's ``ggml-rpc-server`` holds and runs as; None where it holds nothing."""
    plan = plan_host(spec, catalogue or fleet_catalogue(), fleet)
    parts = tuple(part for part in plan.rpc_parts if part.server == RPC_SERVER)
    if not parts:
        return None
    return RpcServerRun(
        parts,
        LLAMACPP.rpc_server_command(spec),
        plan.memory_max_gb[RPC_SERVER],
        LLAMACPP.vulkan_environment(spec, RPC_UNIT),
    )


@dataclass(frozen=True)
class RayNodeRun:
    """A host's Ray node in a cluster that serves one vLLM model split across hosts: the
    head (where vLLM serves the model and runs its first stage) or a worker (a later one)."""

    head: str
    """The head's GCS, ``address:port``; where the workers join."""
    is_head: bool
    stage: int
    """Its pipeline stage (0 on the head), in the order of ``ray_workers``."""
    layers: int
    of_layers: int
    model: str
    command: tuple[str, ...]
    memory_max_gb: float

    @property
    def held(self) -> str:
        """What it runs, in words: ``stage 1: 27/80 layers of qwen2.5:72b``."""
        return f"stage {self.stage}: {self.layers}/{self.of_layers} layers of {self.model}"


def ray_node_run(
    spec: HostSpec, fleet: Mapping[str, HostSpec], catalogue: Catalogue | None = None
) -> RayNodeRun | None:
    """The host's Ray node as the planner decided it; None where it is in no cluster."""
    catalogue = catalogue or fleet_catalogue()
    plan = plan_host(spec, catalogue, fleet)
    limit = plan.memory_max_gb.get(RAY_NODE, 0.0)
    for decision in plan.placements:
        if decision.engine == VLLM.name and decision.rpc and not decision.problem:
            head = decision.rpc[0]
            address = head.endpoint.rpartition(":")[0]
            return RayNodeRun(
                head.endpoint, True, 0, head.layers, decision.layers, decision.model,
                VLLM.ray_node_command(spec, address, decision.gpus), limit,
            )  # fmt: skip
    for part in plan.rpc_parts:
        if part.server != RAY_NODE:
            continue
        head_spec = fleet[part.head]
        decision = next(
            d for d in plan_host(head_spec, catalogue, fleet).placements if d.rpc and not d.problem
        )
        stage = next(i for i, share in enumerate(decision.rpc) if share.host == spec.name)
        address = decision.rpc[stage].endpoint.rpartition(":")[0]
        return RayNodeRun(
            decision.rpc[0].endpoint, False, stage, part.layers, part.of_layers, part.model,
            VLLM.ray_node_command(spec, address, decision.gpus, decision.rpc[0].endpoint), limit,
        )  # fmt: skip
    return None


def placement_runs(
    spec: HostSpec,
    engine: Engine,
    catalogue: Catalogue | None = None,
    fleet: Mapping[str, HostSpec] | None = None,
) -> tuple[PlacementRun, ...]:
    """The engine's placements on this host, each with its decision and rendering
    (``fleet``: the inventory's hosts, which a model split across hosts is planned with)."""
    return _runs(spec, engine, plan_host(spec, catalogue or fleet_catalogue(), fleet))


def engine_runs(
    spec: HostSpec,
    catalogue: Catalogue | None = None,
    fleet: Mapping[str, HostSpec] | None = None,
) -> list[EngineRun]:
    """Every engine the host runs, with what each of its placements renders to (the host is
    planned once for all of them)."""
    plan = plan_host(spec, catalogue or fleet_catalogue(), fleet)
    return [
        EngineRun(engine, _runs(spec, engine, plan), plan.memory_max_gb.get(engine.name, 0.0))
        for engine in serving(spec)
    ]


def _runs(spec: HostSpec, engine: Engine, plan: HostPlan) -> tuple[PlacementRun, ...]:
    decisions = {p.index: p for p in plan.placements}
    runs = []
    for index, placement in enumerate(spec.models):
        if engine_for(spec, placement) is not engine:
            continue
        decision = decisions.get(index)
        if decision is None or decision.problem:
            why = decision.problem if decision else "unknown model or quantization"
            raise NotPlanned(f"{spec.name}: models[{index}] ({placement.model}): {why}")
        runs.append(PlacementRun(placement, decision, engine.render(spec, placement, decision)))
    return tuple(runs)


def describe(spec: HostSpec, fleet: Mapping[str, HostSpec] | None = None) -> str:
    """The rendering as text, for ``gpufleet engines``."""
    runs = engine_runs(spec, fleet=fleet)
    worker = rpc_server_run(spec, fleet) if fleet is not None else None
    node = ray_node_run(spec, fleet) if fleet is not None else None
    if not runs and worker is None and node is None:
        return f"{spec.name}: no models placed"
    lines = [f"{spec.name}:"]
    if node is not None:
        role = "head" if node.is_head else f"worker of {node.head}"
        lines.append(f"  ray ({role}): {node.held} (memory max {node.memory_max_gb:g} GB)")
        lines.append("    " + " ".join(node.command))
    if worker is not None:
        lines.append(
            f"  {RPC_SERVER} on port {spec.llamacpp.rpc_port}: {worker.held} "
            f"(memory max {worker.memory_max_gb:g} GB)"
        )
        lines += [f"    {key}={value}" for key, value in worker.environment]
        lines.append("    " + " ".join(worker.command))
    for run in runs:
        served = ", ".join(served_name(p.placement) for p in run.placements)
        lines.append(
            f"  {run.engine.name} on port {run.engine.port(spec)}: {served or '(its own models)'}"
            f" (memory max {run.memory_max_gb:g} GB)"
        )
        for key, value in run.rendered.environment:
            lines.append(f"    {key}={value}")
        if run.rendered.command:
            lines.append("    " + " ".join(run.rendered.command))
        for placement_run in run.placements:
            if placement_run.rendered.parameters:
                parameters = " ".join(f"{k}={v}" for k, v in placement_run.rendered.parameters)
                lines.append(f"    {served_name(placement_run.placement)}: {parameters}")
    return "\n".join(lines)
