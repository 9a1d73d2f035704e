"""``gpufleet status``: a fleet-wide ``ollama ps``. Per host, which engines answer, which models
they have loaded, the memory in use against the plan, and what the router makes of them.

    gpufleet status inventory/lab.py
    gpufleet status inventory/lab.py --limit gpu_nodes --json

Agentless and read-only: every figure comes over HTTP from a port the fleet already opens to
the control machine (``firewall.admin_sources``), never over SSH:

* Ollama: ``GET /api/ps`` (each loaded model's size and the part of it in VRAM);
* llama-server: ``GET /v1/models`` and ``GET /props`` with its key (the model it serves and
  its context; its memory is the planner's figure, since it reports none);
* vLLM: ``GET /v1/models`` with its key;
* any other engine (Triton): its health path;
* the host: node exporter's ``/metrics`` (system memory) and, where it runs, DCGM exporter's
  (GPU memory);
* the router: LiteLLM's ``/v1/models`` and ``/model/info`` with its master key (which model
  group each host's engine serves in).

A service that does not answer within the timeout is shown as down, with the reason; one that
listens on its host's loopback only is shown as such (nothing outside the host may reach it).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, Literal

import click

from gpufleet.catalogue import fleet_catalogue
from gpufleet.engines import Engine, engine_for, served_name, serving
from gpufleet.facts.ollama import full_name
from gpufleet.models import HostSpec
from gpufleet.options import limit_option
from gpufleet.planner import HostPlan, plan_host
from gpufleet.routing import router_hosts, service_address

State = Literal["up", "down", "loading", "refused", "local-only"]
"""up: it answered; down: nothing answered (or an error); loading: it answered that its model
is still loading; refused: it answered but refused our key; local-only: it listens on its
host's loopback, out of reach from here by design."""

DEFAULT_TIMEOUT_S = 3.0
GB = 1e9


@dataclass
class LoadedModel:
    """A model an engine has in memory now."""

    name: str
    size_gb: float | None = None
    """Memory it takes, as the engine reports it (Ollama: weights, KV cache and buffers;
    llama-server: its GGUF's size); None where the engine says nothing."""
    vram_gb: float | None = None
    """The part of it in GPU memory (Ollama only)."""
    context: int | None = None
    planned: bool = True
    """The inventory places it on this engine (an Ollama model pulled by hand is not)."""


@dataclass
class EngineStatus:
    engine: str
    url: str
    """Where it was asked (its API's root)."""
    state: State
    detail: str = ""
    """Why it is not up, or what is odd about it."""
    loaded: list[LoadedModel] = field(default_factory=list)
    planned_models: list[str] = field(default_factory=list)
    """The names clients ask for that the inventory places on it."""
    planned_gb: float = 0.0
    """Memory the planner gives its placements (weights + KV cache + runtime)."""
    memory_max_gb: float = 0.0
    """Its server's system memory limit, as the planner set it."""
    routed: list[str] = field(default_factory=list)
    """Model groups the router sends to this engine on this host."""

    @property
    def missing(self) -> list[str]:
        """Planned models it does not have loaded (Ollama loads on demand: not a fault)."""
        have = {full_name(m.name) for m in self.loaded}
        return [name for name in self.planned_models if full_name(name) not in have]


@dataclass
class HostMemory:
    """What the host's exporters say is in use now."""

    source: str
    """Where the figures come from (``node exporter``, ``node exporter + DCGM``), or why
    there are none."""
    ram_total_gb: float | None = None
    ram_used_gb: float | None = None
    """Total less available (``MemAvailable``): what the kernel cannot hand out now."""
    gpu_total_gb: float | None = None
    gpu_used_gb: float | None = None


@dataclass
class HostStatus:
    host: str
    address: str
    engines: list[EngineStatus]
    memory: HostMemory
    vram_gb: float
    """GPU memory the planner plans with."""
    ram_gb: float
    planned_vram_gb: float
    planned_ram_gb: float
    """The plan's dedicated use (what engines that keep their model loaded hold)."""


@dataclass
class RouterDeployment:
    model_group: str
    host: str | None
    engine: str | None


@dataclass
class RouterStatus:
    host: str
    url: str
    state: State
    detail: str = ""
    models: list[str] = field(default_factory=list)
    """The model groups it lists (``/v1/models``)."""
    deployments: list[RouterDeployment] = field(default_factory=list)
    """Each backend it routes to (``/model/info``)."""
    expected: list[str] = field(default_factory=list)
    """The model groups the inventory gives it."""

    @property
    def missing(self) -> list[str]:
        return [name for name in self.expected if name not in self.models]


@dataclass
class FleetStatus:
    inventory: str
    hosts: list[HostStatus]
    routers: list[RouterStatus]

    @property
    def healthy(self) -> bool:
        """Every engine and router that may be reached from here answers."""
        engines = [e for h in self.hosts for e in h.engines]
        return all(e.state in ("up", "local-only") for e in engines) and all(
            r.state in ("up", "local-only") for r in self.routers
        )


# --- HTTP -------------------------------------------------------------------------------------


class Unanswered(Exception):
    """A service gave no usable answer; the message says what happened, in a few words."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def get_json(url: str, timeout: float, headers: dict[str, str] | None = None) -> Any:
    """The JSON body of a GET; raises :class:`Unanswered` for anything else."""
    import requests

    try:
        reply = requests.get(url, headers=headers or {}, timeout=timeout)
    except requests.Timeout:
        raise Unanswered(f"no answer within {timeout:g} s") from None
    except requests.ConnectionError as error:
        reason = "connection refused" if "refused" in str(error).lower() else "cannot connect"
        raise Unanswered(reason) from None
    except requests.RequestException as error:
        raise Unanswered(type(error).__name__) from None
    if reply.status_code != 200:
        raise Unanswered(f"HTTP {reply.status_code}", reply.status_code, reply.text[:300])
    try:
        return reply.json()
    except ValueError:
        raise Unanswered("answered with something that is not JSON") from None


def get_text(url: str, timeout: float) -> str:
    import requests

    try:
        reply = requests.get(url, timeout=timeout)
    except requests.Timeout:
        raise Unanswered(f"no answer within {timeout:g} s") from None
    except requests.RequestException:
        raise Unanswered("cannot connect") from None
    if reply.status_code != 200:
        raise Unanswered(f"HTTP {reply.status_code}", reply.status_code)
    return reply.text


# --- engines ----------------------------------------------------------------------------------


def _gb(value: Any) -> float | None:
    return round(float(value) / GB, 2) if isinstance(value, int | float) else None


def parse_ollama_ps(body: dict[str, Any], planned: Iterable[str]) -> list[LoadedModel]:
    """Loaded models from Ollama's ``GET /api/ps``."""
    wanted = {full_name(name) for name in planned}
    return [
        LoadedModel(
            name=str(model.get("name") or model.get("model")),
            size_gb=_gb(model.get("size")),
            vram_gb=_gb(model.get("size_vram")),
            context=model.get("context_length"),
            planned=full_name(str(model.get("name") or model.get("model"))) in wanted,
        )
        for model in body.get("models") or []
    ]


def parse_openai_models(body: dict[str, Any], planned: Iterable[str]) -> list[LoadedModel]:
    """Models from an OpenAI-compatible ``GET /v1/models`` (llama-server's and vLLM's): each
    server of these holds its one model loaded while it answers. llama-server adds the GGUF's
    size (``meta.size``), vLLM the context (``max_model_len``)."""
    wanted = set(planned)
    return [
        LoadedModel(
            name=str(model["id"]),
            size_gb=_gb((model.get("meta") or {}).get("size")),
            context=model.get("max_model_len"),
            planned=str(model["id"]) in wanted,
        )
        for model in body.get("data") or []
        if isinstance(model, dict) and "id" in model
    ]


def _unanswered_state(error: Unanswered) -> tuple[State, str]:
    if error.status == 503 and "loading" in error.body.lower():
        return "loading", "model loading"
    if error.status in (401, 403):
        return "refused", f"{error} (key refused)"
    return "down", str(error)


@dataclass(frozen=True)
class EngineProbe:
    """How to ask one engine on one host."""

    engine: Engine
    base: str
    headers: dict[str, str]
    planned: list[str]
    key_problem: str = ""


def probe_engine(probe: EngineProbe, timeout: float) -> tuple[State, str, list[LoadedModel]]:
    """Ask one engine what it has loaded; (state, detail, loaded models); never raises for a
    service that does not answer."""
    engine, base = probe.engine, probe.base
    try:
        if engine.name == "ollama":
            body = get_json(f"{base}/api/ps", timeout)
            return "up", "", parse_ollama_ps(body, probe.planned)
        if engine.name in ("llama.cpp", "vllm"):
            body = get_json(f"{base}/v1/models", timeout, probe.headers)
            loaded = parse_openai_models(body, probe.planned)
            if engine.name == "llama.cpp":
                _llama_context(base, probe.headers, timeout, loaded)
            return "up", "", loaded
        get_text(f"{base}{engine.health_path}", timeout)
        return "up", "", []
    except Unanswered as error:
        state, detail = _unanswered_state(error)
        if probe.key_problem and state == "refused":
            detail = f"{detail}; {probe.key_problem}"
        return state, detail, []


def _llama_context(
    base: str, headers: dict[str, str], timeout: float, loaded: list[LoadedModel]
) -> None:
    """llama-server's context (``/props``), onto the one model it serves; left out where
    ``/props`` does not answer (older builds)."""
    try:
        props = get_json(f"{base}/props", timeout, headers)
    except Unanswered:
        return
    settings = props.get("default_generation_settings") or {}
    context = settings.get("n_ctx") or props.get("n_ctx")
    slots = props.get("total_slots") or 1
    for model in loaded:
        if isinstance(context, int):
            # n_ctx in the settings is one slot's share; the plan's context is the whole.
            model.context = context * slots if "n_ctx" in settings else context
    return


# --- the host's own memory --------------------------------------------------------------------


def metric_values(text: str, name: str) -> list[float]:
    """Every sample of ``name`` in Prometheus' text format (labels ignored)."""
    values = []
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        rest = line[len(name) :]
        if rest[:1] not in ("{", " "):
            continue  # another metric whose name starts with this one's
        value = rest.rsplit("}", 1)[-1].split()
        if value:
            try:
                values.append(float(value[0]))
            except ValueError:
                continue
    return values


def host_memory(spec: HostSpec, address: str, timeout: float) -> HostMemory:
    """System memory from node exporter, GPU memory from DCGM exporter where it runs."""
    from gpufleet.checks import gets_dcgm_exporter

    node_exporter = _listens_on(spec.node_exporter_address)
    if node_exporter == "loopback":
        return HostMemory("node exporter listens on loopback only")
    memory = HostMemory("node exporter")
    try:
        text = get_text(f"http://{address}:{spec.node_exporter_port}/metrics", timeout)
    except Unanswered as error:
        return HostMemory(f"node exporter: {error}")
    total = metric_values(text, "node_memory_MemTotal_bytes")
    available = metric_values(text, "node_memory_MemAvailable_bytes")
    if total and available:
        memory.ram_total_gb = round(total[0] / GB, 2)
        memory.ram_used_gb = round((total[0] - available[0]) / GB, 2)
    if gets_dcgm_exporter(spec) and _listens_on(spec.dcgm_exporter.address) != "loopback":
        try:
            dcgm = get_text(f"http://{address}:{spec.dcgm_exporter.port}/metrics", timeout)
        except Unanswered as error:
            memory.source += f"; DCGM exporter: {error}"
            return memory
        used = metric_values(dcgm, "DCGM_FI_DEV_FB_USED")  # MiB, one sample per GPU
        free = metric_values(dcgm, "DCGM_FI_DEV_FB_FREE")
        if used:
            memory.source += " + DCGM exporter"
            memory.gpu_used_gb = round(sum(used) * 2**20 / GB, 2)
            memory.gpu_total_gb = round((sum(used) + sum(free)) * 2**20 / GB, 2)
    return memory


def _listens_on(address: IPv4Address | None) -> str:
    if address is None or address.is_unspecified:
        return "everywhere"
    return "loopback" if address.is_loopback else str(address)


# --- collection -------------------------------------------------------------------------------


KeyReader = Callable[[str], str]
"""Reads a secret reference's value (``secrets.read_secret`` with the fleet's Vault)."""


def fleet_key_reader(specs: dict[str, HostSpec]) -> KeyReader:
    """Reads references through the fleet's Vault, opened once, on first use."""
    from gpufleet.secrets import read_secret
    from gpufleet.vault import fleet_vault

    opened: list[Any] = []

    def read(reference: str) -> str:
        if not opened:
            opened.append(fleet_vault(specs))
        return read_secret(reference, opened[0])

    return read


def _key_headers(reference: str | None, read_key: KeyReader) -> tuple[dict[str, str], str]:
    """The Authorization header for a key, or why it could not be read (never the value)."""
    if reference is None:
        return {}, ""
    try:
        return {"Authorization": f"Bearer {read_key(reference)}"}, ""
    except Exception as error:  # SecretError, VaultError, an OS error: shown, never fatal
        return {}, f"key {reference} unreadable: {str(error).splitlines()[0][:160]}"


def engine_probes(
    spec: HostSpec, plan: HostPlan, read_key: KeyReader
) -> list[tuple[EngineStatus, EngineProbe | None]]:
    """Each engine of the host as it will be reported, and how to ask it (None: it listens
    on loopback, where nothing outside its host reaches it)."""
    address = service_address(spec)
    found: list[tuple[EngineStatus, EngineProbe | None]] = []
    for engine in serving(spec):
        placed = [
            (index, p)
            for index, p in enumerate(spec.models)
            if engine_for(spec, p).name == engine.name
        ]
        indices = {index for index, _ in placed}
        planned_gb = sum(p.need_gb for p in plan.placements if p.index in indices and not p.problem)
        listen = engine.address(spec)  # decided by validate_file where the inventory is silent
        reach = address if IPv4Address(listen).is_unspecified else listen
        base = f"http://{reach}:{engine.port(spec)}"
        status = EngineStatus(
            engine=engine.name,
            url=base,
            state="up",
            planned_models=[served_name(p) for _, p in placed],
            planned_gb=round(planned_gb, 2),
            memory_max_gb=plan.memory_max_gb.get(engine.name, 0.0),
        )
        if IPv4Address(listen).is_loopback:
            status.state = "local-only"
            status.detail = f"listens on {listen} only; nothing outside {spec.name} reaches it"
            found.append((status, None))
            continue
        headers, problem = _key_headers(spec.secrets.get(engine.api_key_secret or ""), read_key)
        found.append((status, EngineProbe(engine, base, headers, status.planned_models, problem)))
    return found


def host_status(
    spec: HostSpec, specs: dict[str, HostSpec], read_key: KeyReader, timeout: float
) -> HostStatus:
    decided = spec  # validate_file has decided every address the inventory leaves out
    plan = plan_host(decided, fleet_catalogue(), specs)
    engines = []
    for status, probe in engine_probes(decided, plan, read_key):
        if probe is not None:
            status.state, status.detail, status.loaded = probe_engine(probe, timeout)
        engines.append(status)
    address = service_address(decided)
    return HostStatus(
        host=spec.name,
        address=address,
        engines=engines,
        memory=host_memory(decided, address, timeout),
        vram_gb=plan.vram_gb,
        ram_gb=plan.ram_gb,
        planned_vram_gb=plan.vram_used_gb,
        planned_ram_gb=plan.ram_used_gb,
    )


def router_status(
    router: HostSpec, specs: dict[str, HostSpec], read_key: KeyReader, timeout: float
) -> RouterStatus:
    """The router's model groups and backends, asked with its master key."""
    from gpufleet.routing import model_names

    decided = router
    listen = decided.litellm.address
    reach = service_address(decided) if listen is None or listen.is_unspecified else str(listen)
    base = f"http://{reach}:{decided.litellm.port}"
    status = RouterStatus(
        router.name, base, "up", expected=sorted(model_names(specs, router.litellm))
    )
    if listen is not None and listen.is_loopback:
        status.state = "local-only"
        status.detail = f"listens on {listen} only; ask it through the gateway"
        return status
    headers, problem = _key_headers(router.litellm.master_key, read_key)
    try:
        listed = get_json(f"{base}/v1/models", timeout, headers)
        status.models = sorted(str(m["id"]) for m in listed.get("data") or [] if "id" in m)
        info = get_json(f"{base}/model/info", timeout, headers)
    except Unanswered as error:
        status.state, status.detail = _unanswered_state(error)
        if problem:
            status.detail += f"; {problem}"
        return status
    for entry in info.get("data") or []:
        model_info = entry.get("model_info") or {}
        status.deployments.append(
            RouterDeployment(
                str(entry.get("model_name")), model_info.get("host"), model_info.get("engine")
            )
        )
    return status


def collect(
    inventory: str,
    specs: dict[str, HostSpec],
    names: Iterable[str],
    read_key: KeyReader | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> FleetStatus:
    """Ask every engine of the chosen hosts, their exporters and every router, in parallel."""
    read = read_key or fleet_key_reader(specs)
    chosen = [specs[name] for name in names]
    routers = router_hosts(specs)
    with ThreadPoolExecutor(max_workers=8) as pool:
        host_jobs = [pool.submit(host_status, s, specs, read, timeout) for s in chosen]
        router_jobs = [pool.submit(router_status, r, specs, read, timeout) for r in routers]
        hosts = [job.result() for job in host_jobs]
        router_states = [job.result() for job in router_jobs]
    for host in hosts:
        for engine in host.engines:
            engine.routed = sorted(
                {
                    d.model_group
                    for r in router_states
                    for d in r.deployments
                    if d.host == host.host and d.engine == engine.engine
                }
            )
    return FleetStatus(inventory, hosts, router_states)


# --- output -----------------------------------------------------------------------------------


def status_adapter() -> Any:
    """The pydantic adapter of :class:`FleetStatus`: its JSON, its JSON Schema, its check."""
    from pydantic import TypeAdapter

    return TypeAdapter(FleetStatus)


def to_json(status: FleetStatus) -> str:
    return status_adapter().dump_json(status, indent=2).decode()


def json_schema() -> dict[str, Any]:
    schema: dict[str, Any] = status_adapter().json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gpufleet status"
    return schema


def _size(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


STATE_STYLE = {
    "up": "green",
    "down": "bold red",
    "loading": "yellow",
    "refused": "red",
    "local-only": "dim",
}


def _loaded_text(engine: EngineStatus) -> str:
    lines = []
    for model in engine.loaded:
        figures = []
        if model.size_gb is not None:
            part = f"{model.size_gb:.1f} GB"
            if model.vram_gb is not None:
                share = round(100 * model.vram_gb / model.size_gb) if model.size_gb else 0
                part += f", {share}% GPU"
            figures.append(part)
        if model.context:
            figures.append(f"ctx {model.context}")
        note = "" if model.planned else " (not planned)"
        lines.append(f"{model.name}{note}" + (f" ({'; '.join(figures)})" if figures else ""))
    if engine.state == "up" and not engine.loaded:
        lines.append("nothing loaded")
    return "\n".join(lines) or "-"


def _memory_text(engine: EngineStatus) -> str:
    planned = f"plan {engine.planned_gb:.1f} GB"
    measured = [m.size_gb for m in engine.loaded if m.size_gb is not None]
    if engine.engine == "ollama" and engine.state == "up":
        return f"{sum(measured):.1f} GB loaded / {planned}"
    return planned


def render(status: FleetStatus, console: Any) -> None:
    """The status as rich tables: the engines, the hosts' memory, the routers."""
    from rich.table import Table
    from rich.text import Text

    engines = Table(title=f"gpufleet status: {status.inventory}", show_lines=True)
    for column in ("host", "engine", "state", "models loaded", "memory", "routed"):
        engines.add_column(column)
    for host in status.hosts:
        if not host.engines:
            engines.add_row(host.host, "-", Text("no engines", style="dim"), "-", "-", "-")
        for engine in host.engines:
            state = Text(engine.state, style=STATE_STYLE[engine.state])
            if engine.detail:
                state.append(f"\n{engine.detail}", style="dim")
            missing = [m for m in engine.missing if engine.state == "up"]
            loaded = _loaded_text(engine)
            if missing and engine.engine != "ollama":
                loaded += "\nmissing: " + ", ".join(missing)
            engines.add_row(
                host.host,
                f"{engine.engine}\n{engine.url}",
                state,
                loaded,
                _memory_text(engine),
                "\n".join(engine.routed) or "-",
            )
    console.print(engines)

    memory = Table(title="memory: in use now (exporters) against the plan")
    for column in ("host", "RAM used / total GB", "RAM planned GB", "GPU used / total GB"):
        memory.add_column(column)
    memory.add_column("GPU planned GB")
    memory.add_column("source")
    for host in status.hosts:
        m = host.memory
        memory.add_row(
            host.host,
            f"{_size(m.ram_used_gb)} / {_size(m.ram_total_gb)}",
            f"{host.planned_ram_gb:.1f} of {host.ram_gb:g}",
            f"{_size(m.gpu_used_gb)} / {_size(m.gpu_total_gb)}",
            f"{host.planned_vram_gb:.1f} of {host.vram_gb:g}" if host.vram_gb else "-",
            m.source,
        )
    console.print(memory)

    for router in status.routers:
        table = Table(title=f"router {router.host} ({router.url})")
        table.add_column("model group")
        table.add_column("backends")
        table.add_column("listed")
        by_group: dict[str, list[str]] = {}
        for d in router.deployments:
            by_group.setdefault(d.model_group, []).append(f"{d.host or '?'}/{d.engine or '?'}")
        for group in sorted(set(router.expected) | set(router.models) | set(by_group)):
            listed = group in router.models
            table.add_row(
                group,
                ", ".join(by_group.get(group, [])) or "-",
                Text("yes" if listed else "no", style="green" if listed else "red"),
            )
        if router.state != "up":
            table.caption = f"{router.state}: {router.detail}"
            table.caption_style = STATE_STYLE[router.state]
        console.print(table)


# --- the command ------------------------------------------------------------------------------


@click.command(
    "status", short_help="Per host: engines up, models loaded, memory vs plan, router view."
)
@click.argument("inventory", type=click.Path(exists=True, dir_okay=False))
@limit_option()
@click.option("--json", "as_json", is_flag=True, help="The status as JSON (see --schema).")
@click.option("--schema", is_flag=True, help="Print the JSON Schema of --json and stop.")
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 60),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for each service.",
)
def status_command(
    inventory: str, limit: tuple[str, ...], as_json: bool, schema: bool, timeout: float
) -> None:
    """Per host: the engines that answer, the models they have loaded, memory in use against
    the plan, and what the router routes to them. Read-only; contacts the hosts over HTTP.
    Exits 3 when an engine or router that should answer from here does not."""
    from gpufleet.inventory import InventoryError, validate_file
    from gpufleet.selection import NoHostsSelected, select_hosts

    if schema:
        click.echo(json.dumps(json_schema(), indent=2))
        return
    try:
        specs = validate_file(inventory)
    except InventoryError as error:
        raise click.ClickException(str(error)) from None
    try:
        selection = select_hosts(specs, limit, source=inventory)
    except NoHostsSelected as error:
        raise click.ClickException(str(error)) from None
    for warning in selection.warnings():
        click.echo(warning, err=True)
    status = collect(inventory, specs, selection.names, timeout=timeout)
    if as_json:
        click.echo(to_json(status))
    else:
        from rich.console import Console

        render(status, Console())
    if not status.healthy:
        sys.exit(3)
