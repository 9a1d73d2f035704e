"""Placement solver: from what the user wants served to placements on the fleet's hosts.

``gpufleet plan INVENTORY --suggest WANTS`` reads a wants file (each alias with its model,
how many hosts should serve it, how fast it must decode, how much it matters) and proposes
where each goes. The solver decides nothing the planner does not: every host it weighs is
asked through :func:`gpufleet.planner.place_in` (the function ``plan_host`` decides with),
and a proposal is kept only when the host's full check (:func:`gpufleet.checks.check_host`)
passes with it, so it never proposes what ``gpufleet validate`` would refuse.

How it decides, in an order a reader can follow:

* Wants are taken by ``priority`` (1 first); within a priority, those pinned to ``hosts``
  first (they have nowhere else to go), then in the order the file gives them. The same
  inputs give the same proposal, and a want placed earlier is never moved for a later one.
* Each replica goes on its own host (spread), each backup (router priority 2, 3) on yet
  another. A replica must reach ``min_tok_s``; a backup only ``backup_min_tok_s``.
* Of the hosts where it fits at that speed, the strategy picks: ``spread`` (the default)
  the host left with the largest share of its memory free, so that load spreads over the
  fleet; ``binpack`` the host left with the least free memory, so that large hosts stay free
  for large models. On a tie, the faster; then the name. A host that reaches the speed is
  as good as a faster one: the speed asked is the speed wanted.
* Every placement is planned as if all of a host's models stayed loaded at once (an Ollama
  host too, which loads on demand): a proposal never relies on evicting one model to serve
  another.
* A want that fits nowhere at its context is tried at half the context, down to its
  ``min_context`` when it gives one.

Placements of aliases the wants do not name stay where they are and take their memory
first. The proposal comes back as the hosts' new ``models`` lists, which
:mod:`gpufleet.inventory_edit` writes into the inventory file as a patch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from gpufleet.catalogue import Catalogue, ModelEntry, model_entry, suggest
from gpufleet.checks import check_fleet, check_host
from gpufleet.engines import PLACEMENT_ENGINES, engine_for
from gpufleet.fields import MODEL_TAG_PATTERN, SOURCE_PATTERN, Spec
from gpufleet.models import MODEL_ALIAS, HostSpec, ModelPlacement
from gpufleet.planner import (
    PlacementPlan,
    Room,
    on_gpu_gb,
    place_in,
    plan_host,
    split_by_layers,
)
from gpufleet.sizing import BITS_PER_WEIGHT, SYSTEM_RESERVE_GB, placement_quant, weights_gb

SERVING_GROUPS = ("gpu_nodes", "cpu_nodes", "edge")
"""Groups whose hosts may take models when ``--limit`` names none: inference hosts. A host
in another group (a Proxmox host, a Pi of the platform) takes models only where it serves
some already."""
Strategy = Literal["spread", "binpack"]
MAX_BACKUPS = 2
"""The router knows a primary and two backups (placement priorities 1, 2 and 3)."""


class Want(Spec):
    """One alias the fleet should serve."""

    alias: str
    """Router-facing name, ``SIZE-LOC-FRE-name``; placements of it anywhere are re-decided."""
    model: str = Field(min_length=1, pattern=MODEL_TAG_PATTERN)
    """Model tag as the engine names it (the same across replicas: one alias, one model)."""
    engines: tuple[str, ...] = ("ollama",)
    """Engines it may be served with, tried in this order on each host."""
    source: str | None = Field(None, pattern=SOURCE_PATTERN)
    """GGUF URL (llama.cpp) or Hugging Face repo id (vLLM), as a placement's ``source``."""
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """Checksum of the GGUF file, for llama.cpp."""
    replicas: int = Field(1, ge=1, le=16)
    """Hosts that serve it as the router's primary, sharing the load; each on its own host."""
    backups: int = Field(0, ge=0, le=MAX_BACKUPS)
    """Further hosts the router falls back to (priority 2, then 3)."""
    min_tok_s: float | None = Field(None, gt=0)
    """Decode speed each replica's bound must reach."""
    backup_min_tok_s: float | None = Field(None, gt=0)
    """Decode speed each backup's bound must reach (none: any speed)."""
    context: int | None = Field(None, ge=256)
    """Context to serve; the engine's default for the model when left out."""
    min_context: int | None = Field(None, ge=256)
    """Shortest context acceptable: the solver halves the context down to it to make a fit."""
    priority: int = Field(1, ge=1, le=9)
    """Which wants get memory first when there is not enough for all: 1 first."""
    hosts: tuple[str, ...] = ()
    """Only these hosts may serve it (none: any host that may take models)."""

    @field_validator("alias")
    @classmethod
    def _alias_follows_scheme(cls, alias: str) -> str:
        if not MODEL_ALIAS.match(alias):
            raise ValueError(
                f"alias {alias!r} does not follow SIZE-LOC|CLD-FRE|PAY-name "
                "(e.g. 'XL-LOC-FRE-qwen2.5-coder-32b')"
            )
        return alias

    @field_validator("engines")
    @classmethod
    def _engines_are_known(cls, engines: tuple[str, ...]) -> tuple[str, ...]:
        for engine in engines:
            if engine not in PLACEMENT_ENGINES:
                raise ValueError(
                    f"unknown engine {engine!r}; use some of {', '.join(PLACEMENT_ENGINES)}"
                )
        if not engines:
            raise ValueError(f"name at least one engine: {', '.join(PLACEMENT_ENGINES)}")
        return engines

    @model_validator(mode="after")
    def _consistent(self) -> Want:
        if self.min_context and self.context and self.min_context > self.context:
            raise ValueError(
                f"min_context {self.min_context} is above context {self.context}; lower it"
            )
        if "llama.cpp" in self.engines and not (self.source and self.sha256):
            raise ValueError(
                "llama.cpp serves a GGUF file: give source (its URL) and sha256, or leave "
                "llama.cpp out of engines"
            )
        if "vllm" in self.engines and not self.source:
            raise ValueError(
                "vLLM loads a Hugging Face repo: give source (its repo id), or leave vllm out "
                "of engines"
            )
        return self

    def quant(self) -> str:
        """The quantization its model tag names (Ollama's default where it names none)."""
        return placement_quant(ModelPlacement(model=self.model))

    def placement(self, engine: str, role: int, context: int | None) -> ModelPlacement:
        """The placement this want becomes on a host, served by ``engine`` at router
        priority ``role``."""
        return ModelPlacement(
            model=self.model,
            alias=self.alias,
            engine=engine,
            priority=role,
            context=context,
            **({"source": self.source} if self.source and engine != "ollama" else {}),
            **({"sha256": self.sha256} if self.sha256 and engine == "llama.cpp" else {}),
        )


class WantsFile(Spec):
    wants: list[Want] = Field(min_length=1)

    @model_validator(mode="after")
    def _aliases_once(self) -> WantsFile:
        seen: set[str] = set()
        for want in self.wants:
            if want.alias in seen:
                raise ValueError(f"{want.alias} is wanted twice; give each alias one entry")
            seen.add(want.alias)
        return self


class WantsError(ValueError):
    """A wants file that cannot be solved; the message names the file, the field and the
    fix, one problem per line."""


def load_wants(path: str | Path) -> list[Want]:
    """The wants of a YAML file (``wants: [...]``, or the list alone)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise WantsError(f"{path}: cannot be read ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise WantsError(f"{path}: not YAML{where}; fix that line") from None
    if isinstance(raw, list):
        raw = {"wants": raw}
    try:
        return WantsFile.model_validate(raw).wants
    except ValidationError as error:
        lines = []
        for item in error.errors():
            where = ".".join(str(part) for part in item["loc"]) or "wants"
            message = item["msg"].removeprefix("Value error, ")
            alias = _alias_at(raw, item["loc"])
            lines.append(f"  - {where}{f' ({alias})' if alias else ''}: {message}")
        count = len(lines)
        raise WantsError(
            f"{path}: {count} problem{'s' if count != 1 else ''}:\n" + "\n".join(lines)
        ) from None


def _alias_at(raw: Any, loc: tuple[int | str, ...]) -> str | None:
    """The alias of the want a problem is in, to name it beside its index."""
    if len(loc) < 2 or loc[0] != "wants" or not isinstance(loc[1], int):
        return None
    try:
        alias = raw["wants"][loc[1]].get("alias")
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    return alias if isinstance(alias, str) and MODEL_ALIAS.match(alias) else None


@dataclass
class Decision:
    """One placement the solver proposes, with the planner's figures for it."""

    alias: str
    model: str
    host: str
    role: str
    """``replica 1 of 2``, ``backup 1``: its part in the router's order."""
    priority: int
    engine: str
    quant: str
    context: int
    where: str
    gpu_layers: int
    layers: int
    need_gb: float
    bound_tok_s: float | None
    why: str


@dataclass
class Unmet:
    """A replica or backup no host can take, and why."""

    alias: str
    model: str
    role: str
    why: str


@dataclass
class Suggestion:
    decisions: list[Decision] = field(default_factory=list)
    unmet: list[Unmet] = field(default_factory=list)
    specs: dict[str, HostSpec] = field(default_factory=dict)
    """Every host with its proposed ``models`` (hosts the solver did not change as they were)."""
    changed: list[str] = field(default_factory=list)
    """Hosts whose ``models`` differ from the inventory's, in inventory order."""
    kept: list[tuple[str, str]] = field(default_factory=list)
    """(alias, host) of placements of unmet aliases left as the inventory has them."""
    problems: list[str] = field(default_factory=list)
    """What ``gpufleet validate`` would still find in the inventory with the proposal."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """Hosts that take no new placement, and why (problems of their own)."""


@dataclass
class _Host:
    """A host as the solver fills it: its spec so far and the memory left in it."""

    spec: HostSpec
    vram: float
    vram_free: float
    ram_free: float
    gpu_bw: float
    ram_bw: float
    aliases: set[str]
    nvidia: bool
    total_gb: float
    """All the memory models may use on the host (VRAM and RAM less the system reserve)."""

    def room(self, on_demand: bool) -> Room:
        # An engine that loads on demand (Ollama) is planned by the checks against the whole
        # GPU; here against what is left, as if every model of the host stayed loaded.
        vram_free = max(self.vram_free, 0.0)
        vram = vram_free if on_demand else self.vram
        return Room(vram, vram_free, max(self.ram_free, 0.0), self.gpu_bw, self.ram_bw)

    def place(self, placement: ModelPlacement, entry: ModelEntry) -> PlacementPlan:
        """Where ``placement`` would run here, with what is left (the planner's decision)."""
        on_demand = engine_for(self.spec, placement).loads_on_demand
        return place_in(self.spec, placement, entry, self.room(on_demand))

    def free_gb(self) -> float:
        return max(self.vram_free, 0.0) + max(self.ram_free, 0.0)

    def take(self, placement: ModelPlacement, result: PlacementPlan) -> None:
        on_gpu = on_gpu_gb(result, engine_for(self.spec, placement))
        self.vram_free -= on_gpu
        self.ram_free -= result.need_gb - on_gpu
        self.spec = self.spec.model_copy(update={"models": (*self.spec.models, placement)})
        self.aliases.add(placement.alias or placement.model)


def _host_state(
    spec: HostSpec, catalogue: Catalogue, fleet: Mapping[str, HostSpec] | None = None
) -> _Host:
    """Memory left on a host once its kept placements take theirs (all of them loaded), and
    its share of models split across hosts (``fleet``: the kept inventory)."""
    plan = plan_host(spec, catalogue, fleet)
    shared = plan.vram_gb if plan.unified else 0.0
    vram_free = plan.vram_gb - plan.vram_used_gb
    ram_free = plan.ram_gb - SYSTEM_RESERVE_GB - shared - plan.ram_used_gb
    for placement, result in zip(
        spec.models, _by_index(plan.placements, len(spec.models)), strict=True
    ):
        engine = engine_for(spec, placement)
        if result is None or result.problem or not engine.loads_on_demand:
            continue  # plan_host counted it already
        on_gpu = min(on_gpu_gb(result, engine), max(vram_free, 0.0))
        vram_free -= on_gpu
        ram_free -= result.need_gb - on_gpu
    return _Host(
        spec,
        plan.vram_gb,
        vram_free,
        ram_free,
        plan.gpu_bandwidth_gbs,
        plan.ram_bandwidth_gbs,
        {p.alias or p.model for p in spec.models},
        spec.hardware.nvidia_gpu_count > 0,
        max(plan.vram_gb + plan.ram_gb - SYSTEM_RESERVE_GB - shared, 1.0),
    )


def _by_index(results: list[PlacementPlan], count: int) -> list[PlacementPlan | None]:
    by_index: list[PlacementPlan | None] = [None] * count
    for result in results:
        by_index[result.index] = result
    return by_index


def candidate_hosts(specs: dict[str, HostSpec], limit: Iterable[str] = ()) -> list[str]:
    """Hosts that may take models: those ``limit`` names, else inference hosts and any host
    that serves a model already."""
    limit = list(limit)
    if limit:
        return [name for name in specs if name in limit]
    return [
        name
        for name, spec in specs.items()
        if spec.models or any(group in SERVING_GROUPS for group in spec.groups)
    ]


def solve(
    specs: dict[str, HostSpec],
    wants: list[Want],
    catalogue: Catalogue,
    hosts: Iterable[str] = (),
    strategy: Strategy = "spread",
) -> Suggestion:
    """Propose placements for ``wants`` on ``specs`` (see the module's docstring).

    An alias no host can take as the wants ask, and that the inventory serves today, stays
    where it is: a proposal moves models, it never stops serving one. Those placements are
    added back after the solver has placed the rest (so they do not crowd out a want that
    can be met), and the hosts they are on are checked again with them."""
    entries = _entries(wants, catalogue)
    suggestion = _place_wants(specs, wants, entries, catalogue, hosts, strategy)
    placed = {decision.alias for decision in suggestion.decisions}
    unplaced = {unmet.alias for unmet in suggestion.unmet} - placed
    for name, spec in specs.items():
        current = tuple(p for p in spec.models if (p.alias or p.model) in unplaced)
        if current:
            proposed = suggestion.specs[name]
            models = (*proposed.models, *current)
            suggestion.specs[name] = proposed.model_copy(update={"models": models})
            suggestion.kept += [(p.alias or p.model, name) for p in current]
    suggestion.changed = [
        name for name in specs if suggestion.specs[name].models != specs[name].models
    ]
    _as_planned(suggestion, catalogue)
    problems = [
        problem
        for name in suggestion.changed
        for problem in check_host(suggestion.specs[name], catalogue)
    ]
    problems += check_fleet(suggestion.specs)
    suggestion.problems = [str(problem) for problem in problems]
    return suggestion


def _as_planned(suggestion: Suggestion, catalogue: Catalogue) -> None:
    """Each decision's figures as ``gpufleet plan`` will show them once the proposal is
    applied, and as the engines will render them: the host's plan with all its placements.
    (The solver chose with every model loaded at once; Ollama, which splits a model between
    GPU and RAM itself as it loads it, is planned by the checks against the whole GPU.)"""
    plans = {}
    for decision in suggestion.decisions:
        spec = suggestion.specs[decision.host]
        if decision.host not in plans:
            plans[decision.host] = plan_host(spec, catalogue, suggestion.specs)
        index = next(i for i, p in enumerate(spec.models) if p.alias == decision.alias)
        result = next(r for r in plans[decision.host].placements if r.index == index)
        decision.where, decision.gpu_layers = result.where, result.gpu_layers
        decision.need_gb, decision.bound_tok_s = result.need_gb, result.bound_tok_s
        decision.context, decision.quant = result.context, result.quant


def _place_wants(
    specs: dict[str, HostSpec],
    wants: list[Want],
    entries: dict[str, ModelEntry],
    catalogue: Catalogue,
    hosts: Iterable[str],
    strategy: Strategy,
) -> Suggestion:
    """The wants' aliases taken off every host, then each want placed in turn."""
    wanted = {want.alias for want in wants}
    kept = {
        name: spec.model_copy(
            update={"models": tuple(p for p in spec.models if (p.alias or p.model) not in wanted)}
        )
        for name, spec in specs.items()
    }
    suggestion = Suggestion(specs=dict(kept))
    state: dict[str, _Host] = {}
    for name in candidate_hosts(specs, hosts):
        problems = check_host(kept[name], catalogue)
        if problems:
            suggestion.skipped.append((name, f"{problems[0].field}: {problems[0].message}"))
            continue
        state[name] = _host_state(kept[name], catalogue, kept)
    for want in sorted(wants, key=lambda w: (w.priority, not w.hosts)):  # stable: file order
        roles = [(1, f"replica {n} of {want.replicas}") for n in range(1, want.replicas + 1)]
        roles += [(1 + n, f"backup {n}") for n in range(1, want.backups + 1)]
        primaries, replica_failed = 0, False
        for priority, role in roles:
            if priority == 1 and replica_failed:
                continue  # the next replicas ask the same of fewer hosts: said once
            decision, why = _place_one(
                want, entries[want.alias], priority, role, state, catalogue, strategy
            )
            if decision is not None:
                suggestion.decisions.append(decision)
                primaries += priority == 1
                continue
            left = want.replicas - int(role.split()[1]) if priority == 1 else 0
            more = f" (and the {left} after it)" if left else ""
            suggestion.unmet.append(Unmet(want.alias, want.model, role + more, why))
            if priority == 1 and not primaries:
                break  # no backup without a primary (the router has nothing to fall from)
            replica_failed |= priority == 1
    for name, host in state.items():
        suggestion.specs[name] = host.spec
    return suggestion


def _entries(wants: list[Want], catalogue: Catalogue) -> dict[str, ModelEntry]:
    """The planner's figures for each wanted model; an unknown model or quantization is an
    error naming the want (nothing can be placed without its size)."""
    entries, problems = {}, []
    for index, want in enumerate(wants):
        placement = want.placement(want.engines[0], 1, want.context)
        entry = model_entry(placement, catalogue)
        quant = placement_quant(placement)
        if entry is None:
            problems.append(
                f"  - wants.{index}.model ({want.alias}): unknown model {want.model!r}"
                f"{suggest(want.model, catalogue.models)}; "
                + catalogue.how_to_declare_model(want.model)
            )
        elif quant not in BITS_PER_WEIGHT:
            problems.append(
                f"  - wants.{index}.model ({want.alias}): unknown quantization {quant!r}; "
                f"use a tag with one of {', '.join(BITS_PER_WEIGHT)}"
            )
        elif want.context and want.context > entry.context:
            problems.append(
                f"  - wants.{index}.context ({want.alias}): {want.model} supports "
                f"{entry.context} tokens; lower context to at most {entry.context}"
            )
        else:
            entries[want.alias] = entry
    if problems:
        raise WantsError(f"{len(problems)} wanted models cannot be sized:\n" + "\n".join(problems))
    return entries


def _contexts(want: Want, entry: ModelEntry) -> list[int | None]:
    """The contexts to try, longest first: the wanted one (None: the engine's default), then
    halves of it down to ``min_context``."""
    if not want.min_context:
        return [want.context]
    start = want.context or entry.context
    contexts: list[int | None] = [want.context]
    context = start // 2
    while context >= want.min_context:
        contexts.append(context)
        context //= 2
    if contexts[-1] != want.min_context and want.min_context < start:
        contexts.append(want.min_context)
    return contexts


@dataclass(order=True)
class _Candidate:
    sort_key: tuple[float, float, str]
    host: str = field(compare=False)
    placement: ModelPlacement = field(compare=False)
    result: PlacementPlan = field(compare=False)


def _place_one(
    want: Want,
    entry: ModelEntry,
    priority: int,
    role: str,
    state: dict[str, _Host],
    catalogue: Catalogue,
    strategy: Strategy,
) -> tuple[Decision | None, str]:
    """The host one replica or backup of ``want`` goes on, or why none can take it."""
    floor = want.min_tok_s if priority == 1 else want.backup_min_tok_s
    misses: list[tuple[str, str, float]] = []  # (host, why, the bound it would have had)
    allowed = set(want.hosts)
    quant = want.quant()
    weights, active = weights_gb(entry.params_b, quant), weights_gb(entry.active_params_b, quant)
    for context in _contexts(want, entry):
        candidates: list[_Candidate] = []
        for engine_name in want.engines:
            placement = want.placement(engine_name, priority, context)
            for name, host in state.items():
                if (allowed and name not in allowed) or want.alias in host.aliases:
                    continue
                # Two cheap bounds first: the weights alone must fit in what is left, and
                # the host's fastest memory read alone must reach the speed.
                if weights > host.free_gb():
                    misses.append((name, "does not fit", 0))
                    continue
                fastest = max(host.gpu_bw, host.ram_bw) / active if active else math.inf
                if floor and fastest < floor:
                    misses.append((name, "too slow", -fastest))  # negative: a ceiling only
                    continue
                engine = engine_for(host.spec, placement)
                if host.spec.os not in engine.operating_systems:
                    misses.append((name, f"{engine.name} does not run on {host.spec.os}", 0))
                    continue
                if engine.needs_nvidia_gpu and not host.nvidia:
                    misses.append((name, f"{engine.name} needs an NVIDIA GPU", 0))
                    continue
                result = host.place(placement, entry)
                if result.problem:
                    misses.append((name, "does not fit", 0))
                    continue
                bound = result.bound_tok_s or 0.0
                if floor and bound < floor:
                    misses.append((name, "too slow", bound))
                    continue
                left = host.free_gb() - result.need_gb
                room = -left / host.total_gb if strategy == "spread" else left
                candidates.append(_Candidate((room, -bound, name), name, placement, result))
        candidates.sort()
        for rank, candidate in enumerate(candidates):
            host = state[candidate.host]
            trial = host.spec.model_copy(
                update={"models": (*host.spec.models, candidate.placement)}
            )
            problems = check_host(trial, catalogue)
            if problems:
                misses.append((candidate.host, problems[0].message, 0))
                continue
            host.take(candidate.placement, candidate.result)
            others = candidates[rank + 1 :]
            return _decision(want, candidate, role, priority, others, strategy), ""
    return None, _why_unmet(want, entry, floor, _exact(misses, want, entry, priority, state), state)


def _exact(
    misses: list[tuple[str, str, float]],
    want: Want,
    entry: ModelEntry,
    priority: int,
    state: dict[str, _Host],
) -> list[tuple[str, str, float]]:
    """The misses with the planner's bound in place of each speed ceiling that could be the
    fastest, so that "the fastest is ..." names the host and figure the planner would."""
    best_exact = max((bound for _, _, bound in misses if bound > 0), default=0.0)
    ceilings = sorted((-b, host) for host, _, b in misses if b < 0)
    exact = [miss for miss in misses if miss[2] >= 0]
    for ceiling, name in reversed(ceilings):
        if ceiling <= best_exact:
            exact.append((name, "too slow", ceiling))  # slower than one already known
            continue
        placement = want.placement(want.engines[0], priority, want.context)
        result = state[name].place(placement, entry)
        bound = 0.0 if result.problem else result.bound_tok_s or 0.0
        exact.append((name, "too slow" if bound else "does not fit", bound))
        best_exact = max(best_exact, bound)
    return exact


def _decision(
    want: Want,
    chosen: _Candidate,
    role: str,
    priority: int,
    others: list[_Candidate],
    strategy: Strategy,
) -> Decision:
    result = chosen.result
    if others:
        runner_up = others[0]
        what = "most room left" if strategy == "spread" else "closest fit"
        why = f"{what} of {len(others) + 1} hosts that can take it (next: {runner_up.host})"
    else:
        why = "the only host left it fits on"
    if chosen.placement.context and chosen.placement.context != want.context:
        why += f"; context lowered to {chosen.placement.context} to fit"
    return Decision(
        want.alias,
        want.model,
        chosen.host,
        role,
        priority,
        result.engine,
        result.quant,
        result.context,
        result.where,
        result.gpu_layers,
        result.layers,
        result.need_gb,
        result.bound_tok_s,
        why,
    )


def _why_unmet(
    want: Want,
    entry: ModelEntry,
    floor: float | None,
    misses: list[tuple[str, str, float]],
    state: dict[str, _Host],
) -> str:
    """One sentence: what stops every host, and what would change it."""
    if not state:
        return "no host may take models (each has problems of its own); fix those first"
    if not misses:
        serving = sum(1 for host in state.values() if want.alias in host.aliases)
        return (
            f"every host that may take it serves it already ({serving}); lower replicas or "
            "backups, or add hosts"
        )
    too_slow = [(bound, host) for host, _, bound in misses if bound]
    if floor and too_slow:
        bound, host = max(too_slow)
        if bound < 1:
            return f"fits, but under 1 tok/s at best ({host}); use a smaller model"
        return (
            f"fits, but no host with room for it reaches {floor:g} tok/s: the fastest is {host} at "
            f"<= {bound:g} tok/s; lower the minimum to {int(bound)} or add a faster host"
        )
    if all(why == "does not fit" for _, why, _ in misses):
        quant = want.quant()
        weights = weights_gb(entry.params_b, quant)
        allowed = [h for h in state.values() if not want.hosts or h.spec.name in want.hosts]
        most = max(allowed or state.values(), key=_Host.free_gb)
        where = "no host it may go on" if want.hosts else "no single host"
        return (
            f"{weights:.0f} GB of weights at {quant} and {where} has room for it: the most "
            f"left is {most.free_gb():.0f} GB on {most.spec.name}"
            f"{_together(want, entry, weights, allowed or list(state.values()))}; "
            "use a smaller quantization or context, or free a host"
        )
    reasons: dict[str, list[str]] = {}
    for host, why, _ in misses:
        hosts = reasons.setdefault(why, [])
        if host not in hosts:
            hosts.append(host)
    return "; ".join(
        f"{', '.join(h[:3])}{' ...' if len(h) > 3 else ''}: {why}"
        for why, h in list(reasons.items())[:3]
    )


def _together(want: Want, entry: ModelEntry, weights: float, hosts: list[_Host]) -> str:
    """Which hosts would hold a model too big for one, split by layers in proportion to their
    free memory (the fewest, most room first; each host with its larger free pool, GPU memory
    or RAM), and the speed bound of that split, with how to serve it so (llama.cpp's
    ``rpc_workers``). The solver does not propose splits itself: the user chooses to."""
    if len(hosts) < 2:
        return ""
    pools = sorted(
        (
            (
                h.spec.name,
                *((h.vram_free, h.gpu_bw) if h.vram_free > h.ram_free else (h.ram_free, h.ram_bw)),
            )
            for h in hosts
        ),
        key=lambda pool: pool[1],
        reverse=True,
    )
    placement = want.placement(want.engines[0], 1, want.context)
    first = hosts[0].spec
    context = want.context or engine_for(first, placement).default_context(
        first, placement, entry.context
    )
    for count in range(2, len(pools) + 1):
        chosen = pools[:count]
        if sum(free for _, free, _ in chosen) < weights:
            continue
        split = split_by_layers(want.model, entry, want.quant(), context, chosen)
        if split.problem is None and split.bound_tok_s:
            layers = " and ".join(f"{p.layers} on {p.host}" for p in split.parts)
            head, *workers = [p.host for p in split.parts]
            return (
                f" (split by free memory it would fit: {layers} of its {entry.layers} "
                f"layers, <= {split.bound_tok_s:g} tok/s; to serve it so, place it on {head} "
                f"with engine llama.cpp and rpc_workers {workers})"
            )
    return f" (all of them together: {sum(free for _, free, _ in pools):.0f} GB)"
