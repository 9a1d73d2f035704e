"""Who answers which model name: the LiteLLM router's model list and fallbacks, and the
gateway's upstreams, all derived from the inventory's placements. Pure functions, no I/O.

Example::

    >>> config = router_config(specs["pi5l"], specs)
    >>> config.settings["router_settings"]["fallbacks"]
    [{'M-LOC-FRE-llama3.2-vision-11b': ['M-LOC-FRE-llama3.2-vision-11b.backup1']}]

Hosts that serve the same alias at the same priority form one model group (LiteLLM spreads
requests over them); each lower priority is a backup group the router falls back to, in
order: primary -> backup 1 -> backup 2, as seed 004's redundancy map reads.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from gpufleet.catalogue import fleet_catalogue
from gpufleet.engines import Engine, engine_for, served_name
from gpufleet.engines.base import CHAT, EMBEDDING
from gpufleet.models import HostSpec, LiteLLMRouter, ModelPlacement, RouterDatabase, RouterRedis
from gpufleet.planner import plan_host


def service_address(spec: HostSpec) -> str:
    """Where other hosts reach this one: its LAN address, its tailnet address, else its name."""
    if spec.lan_address is not None:
        return str(spec.lan_address)
    if spec.tailscale_address is not None:
        return str(spec.tailscale_address)
    return spec.tailscale_name or spec.name


def env_name(*parts: str) -> str:
    """An environment variable name for a secret the router reads (never its value)."""
    return "_".join(re.sub(r"[^A-Z0-9]+", "_", part.upper()).strip("_") for part in parts)


@dataclass(frozen=True)
class Backend:
    host: str
    placement: ModelPlacement
    group: str
    """The router's model name for this backend: the alias, or ``alias.backupN``."""
    index: int = 0
    """The placement's position in its host's ``models``."""


def backends(specs: dict[str, HostSpec]) -> list[Backend]:
    """Every placement of the fleet with the router model group it belongs to."""
    priorities: dict[str, set[int]] = defaultdict(set)
    for spec in specs.values():
        for placement in spec.models:
            priorities[served_name(placement)].add(placement.priority)
    found = []
    for spec in specs.values():
        for index, placement in enumerate(spec.models):
            name = served_name(placement)
            rank = sorted(priorities[name]).index(placement.priority)
            group = name if rank == 0 else f"{name}.backup{rank}"
            found.append(Backend(spec.name, placement, group, index))
    return found


def embedding_backends(specs: dict[str, HostSpec]) -> set[tuple[str, int]]:
    """(host, index) of the placements the planner decided serve embeddings: the router asks
    those through their engine's embeddings API."""
    catalogue = fleet_catalogue()
    return {
        (spec.name, plan.index)
        for spec in specs.values()
        if spec.models
        for plan in plan_host(spec, catalogue).placements
        if plan.kind == EMBEDDING
    }


def fallbacks(specs: dict[str, HostSpec], router: LiteLLMRouter) -> list[dict[str, list[str]]]:
    """LiteLLM ``fallbacks``: each alias to its backup groups (backup 1, then 2), then the
    extra ones the router declares, in the order declared: LiteLLM tries them in this order,
    so a cloud model declared last is asked last."""
    chains: dict[str, list[str]] = defaultdict(list)
    for backend in sorted(backends(specs), key=lambda b: b.group):
        name = served_name(backend.placement)
        if backend.group != name and backend.group not in chains[name]:
            chains[name].append(backend.group)
    for name, targets in router.fallbacks.items():
        chains[name] += [t for t in targets if t not in chains[name]]
    return [{name: targets} for name, targets in sorted(chains.items()) if targets]


def model_names(specs: dict[str, HostSpec], router: LiteLLMRouter) -> set[str]:
    return {b.group for b in backends(specs)} | {c.name for c in router.cloud_models}


@dataclass(frozen=True)
class DatabaseUrl:
    template: str
    """``postgresql://user:{password}@host:port/name``."""
    password: str
    """Reference of the password, filled in (URL-quoted) into the 0600 environment file."""

    def render(self, password: str) -> str:
        return self.template.format(password=quote(password, safe=""))


@dataclass
class RouterConfig:
    settings: dict[str, Any]
    """The contents of LiteLLM's ``config.yaml``: no secret values, only ``os.environ/NAME``."""
    environment: dict[str, str] = field(default_factory=dict)
    """Environment variable -> secret reference, resolved into a 0600 file on the host."""
    database_url: DatabaseUrl | None = None
    """``DATABASE_URL`` for LiteLLM, when it uses the fleet's PostgreSQL."""


def _litellm_params(
    router_spec: HostSpec, spec: HostSpec, placement: ModelPlacement, kind: str = CHAT
) -> tuple[dict[str, str], str]:
    """LiteLLM's parameters for one backend, and the environment variable of the engine's
    key where it asks for one. An embedding model is asked through the engine's embeddings
    API, a chat model through its chat API."""
    engine = engine_for(spec, placement)
    provider = engine.embedding_provider if kind == EMBEDDING else engine.router_provider
    api_path = "" if provider == "ollama" else engine.api_path
    params = {
        "model": f"{provider}/{served_name(placement)}",
        "api_base": f"http://{reached_from(router_spec, spec)}:{engine.port(spec)}{api_path}",
    }
    if engine.api_key_secret and engine.api_key_secret in spec.secrets:
        variable = env_name(f"{engine.settings_key}_key", spec.name)
        params["api_key"] = f"os.environ/{variable}"
        return params, variable
    if provider == "openai":
        # The engine asks for no key; LiteLLM's OpenAI client insists on one being set.
        params["api_key"] = "none"
    return params, ""


def redis_host(specs: dict[str, HostSpec]) -> HostSpec | None:
    """The router host that runs the shared Redis: the first that enables it."""
    return next((s for s in router_hosts(specs) if s.litellm.redis.enabled), None)


def database_host(specs: dict[str, HostSpec]) -> HostSpec | None:
    """The router host that runs LiteLLM's PostgreSQL: the first that enables it."""
    return next((s for s in router_hosts(specs) if s.litellm.database.enabled), None)


def router_hosts(specs: dict[str, HostSpec]) -> list[HostSpec]:
    """The hosts of the ``router`` group, in inventory order."""
    return [s for s in specs.values() if "router" in s.groups]


def reached_from(client: HostSpec, server: HostSpec) -> str:
    """Where ``client`` reaches a service of ``server``: loopback on its own host (where a
    service nothing else uses listens), else the server's service address."""
    return "127.0.0.1" if server.name == client.name else service_address(server)


def state_servers(
    specs: dict[str, HostSpec],
) -> list[tuple[str, HostSpec, RouterRedis | RouterDatabase]]:
    """The shared servers the routers use, as (field, host, settings)."""
    servers: list[tuple[str, HostSpec, RouterRedis | RouterDatabase]] = []
    redis, database = redis_host(specs), database_host(specs)
    if redis is not None:
        servers.append(("litellm.redis", redis, redis.litellm.redis))
    if database is not None:
        servers.append(("litellm.database", database, database.litellm.database))
    return servers


def router_config(router_spec: HostSpec, specs: dict[str, HostSpec]) -> RouterConfig:
    """LiteLLM's proxy configuration for the router host ``router_spec``."""
    router = router_spec.litellm
    environment = {"LITELLM_MASTER_KEY": router.master_key}
    model_list: list[dict[str, object]] = []
    embedding = embedding_backends(specs)
    for backend in backends(specs):
        spec = specs[backend.host]
        kind = EMBEDDING if (backend.host, backend.index) in embedding else CHAT
        params, variable = _litellm_params(router_spec, spec, backend.placement, kind)
        secret = engine_for(spec, backend.placement).api_key_secret
        if variable and secret:
            environment[variable] = spec.secrets[secret]
        model_list.append(
            {
                "model_name": backend.group,
                "litellm_params": params,
                "model_info": {
                    "id": f"{backend.host}/{backend.placement.engine}/{backend.group}",
                    "host": backend.host,
                    "engine": backend.placement.engine,
                    # LiteLLM's health checks ask an embedding model for an embedding.
                    "mode": "embedding" if kind == EMBEDDING else "chat",
                },
            }
        )
    for cloud in router.cloud_models:
        variable = env_name("cloud_key", cloud.name)
        environment[variable] = cloud.api_key
        params = {"model": cloud.model, "api_key": f"os.environ/{variable}"}
        if cloud.api_base:
            params["api_base"] = cloud.api_base
        model_list.append(
            {"model_name": cloud.name, "litellm_params": params, "model_info": {"id": cloud.name}}
        )
    settings: dict[str, Any] = {
        "model_list": model_list,
        "router_settings": {
            "routing_strategy": router.routing_strategy,
            "num_retries": router.num_retries,
            "timeout": router.timeout_s,
            "cooldown_time": router.cooldown_s,
            "allowed_fails": router.allowed_fails,
            "fallbacks": fallbacks(specs, router),
        },
        "litellm_settings": {
            "drop_params": True,
            "request_timeout": router.timeout_s,
            # /metrics for Prometheus, without the admin key (the metrics hold no secret).
            "callbacks": ["prometheus"],
            "require_auth_for_metrics_endpoint": False,
        },
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
    }
    redis = redis_host(specs)
    if redis is not None:
        environment["REDIS_PASSWORD"] = redis.litellm.redis.password
        settings["router_settings"].update(
            {
                "redis_host": reached_from(router_spec, redis),
                "redis_port": redis.litellm.redis.port,
                "redis_password": "os.environ/REDIS_PASSWORD",
            }
        )
    database = database_host(specs)
    database_url = None
    if database is not None and database.litellm.database.router_uses_it:
        db = database.litellm.database
        address = reached_from(router_spec, database)
        database_url = DatabaseUrl(
            f"postgresql://{db.user}:{{password}}@{address}:{db.port}/{db.name}", db.password
        )
    return RouterConfig(settings, environment, database_url)


@dataclass(frozen=True)
class Upstream:
    name: str
    servers: tuple[str, ...]
    route: str
    """URI prefix on the gateway that reaches it."""
    key: str | None = None
    """Reference of the key the engine asks for: the gateway sends it in the client's stead
    (the client's own key stops at the gateway)."""


def placement_engines(spec: HostSpec) -> set[Engine]:
    """The engines serving this host's placements."""
    return {engine_for(spec, placement) for placement in spec.models}


def gateway_upstreams(gateway_spec: HostSpec, specs: dict[str, HostSpec]) -> list[Upstream]:
    """The router first (``/v1/``), then one route per inference server when asked for."""
    routers = router_hosts(specs)
    upstreams = []
    if routers:
        servers = tuple(f"{reached_from(gateway_spec, s)}:{s.litellm.port}" for s in routers)
        upstreams.append(Upstream("litellm", servers, "/v1/"))
    if gateway_spec.gateway.direct_routes:
        for spec in specs.values():
            for engine in sorted(placement_engines(spec), key=lambda e: e.name):
                server = f"{reached_from(gateway_spec, spec)}:{engine.port(spec)}"
                name = env_name(spec.name, engine.name).lower()
                route = f"/engines/{spec.name}/{engine.name}/"
                key = spec.secrets.get(engine.api_key_secret or "")
                upstreams.append(Upstream(name, (server,), route, key))
    return upstreams


@dataclass(frozen=True)
class MapRow:
    """One alias of the redundancy map: the hosts of each rank, then the other models."""

    alias: str
    ranks: tuple[tuple[str, ...], ...]
    """Hosts serving the alias: primary, backup 1, backup 2 …"""
    then: tuple[str, ...]
    """The other model groups the router falls back to after those, in order."""


def redundancy_map(specs: dict[str, HostSpec], router: LiteLLMRouter) -> list[MapRow]:
    """Seed 004's "Redundancy Map" as the inventory gives it, one row per alias."""
    hosts: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for backend in backends(specs):
        hosts[served_name(backend.placement)][backend.group].append(backend.host)
    chains = {name: chain for entry in fallbacks(specs, router) for name, chain in entry.items()}
    rows = []
    for alias in sorted(hosts):
        groups = hosts[alias]
        ranks = [alias, *sorted(g for g in groups if g != alias)]
        then = tuple(t for t in chains.get(alias, []) if t not in groups)
        rows.append(MapRow(alias, tuple(tuple(groups[g]) for g in ranks if g in groups), then))
    return rows


def format_map(rows: list[MapRow]) -> list[str]:
    """The map as a table: alias, primary, backup 1, backup 2, then (fallbacks, cloud last)."""
    header = ("model", "primary", "backup 1", "backup 2", "then")
    table = [
        (
            row.alias,
            *(", ".join(row.ranks[i]) if i < len(row.ranks) else "-" for i in range(3)),
            " -> ".join(row.then) or "-",
        )
        for row in rows
    ]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(4)]
    return [
        "  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r[:4])) + "  " + r[4]
        for r in [header, *table]
    ]


def describe_routes(specs: dict[str, HostSpec], only: Collection[str] | None = None) -> str:
    """What ``gpufleet routes`` prints: per router, each model group with its hosts, the
    fallback chains, and the keys it reads by reference; per gateway, its routes. ``only``:
    the router and gateway hosts to describe (all when None); routes still span the fleet."""
    lines = []
    for router in router_hosts(specs):
        if only is not None and router.name not in only:
            continue
        config = router_config(router, specs)
        lines.append(f"{router.name}: LiteLLM on port {router.litellm.port}")
        groups: dict[str, list[str]] = defaultdict(list)
        for entry in config.settings["model_list"]:
            params = entry["litellm_params"]
            groups[entry["model_name"]].append(f"{params['model']} @ {params.get('api_base', '-')}")
        for name in sorted(groups):
            lines.append(f"  {name}")
            lines += [f"    {target}" for target in groups[name]]
        lines.append(f"{router.name}: redundancy map")
        lines += format_map(redundancy_map(specs, router.litellm))
        for chain in fallbacks(specs, router.litellm):
            for name, targets in chain.items():
                lines.append(f"  fallback {name} -> {' -> '.join(targets)}")
        for variable, reference in config.environment.items():
            lines.append(f"  key {variable} <- {reference}")
    for gateway in (s for s in specs.values() if "gateway" in s.groups):
        if only is not None and gateway.name not in only:
            continue
        lines.append(f"{gateway.name}: NGINX on port {gateway.gateway.https_port} (TLS 1.3)")
        for upstream in gateway_upstreams(gateway, specs):
            lines.append(f"  {upstream.route} -> {', '.join(upstream.servers)}")
        for client, reference in sorted(gateway.gateway.clients.items()):
            lines.append(f"  client {client} <- {reference}")
    return "\n".join(lines)
