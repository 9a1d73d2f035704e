"""Who reaches each port a host's gpufleet services listen on, where each service listens,
and the firewall allow-list that follows. One decision, read by the engines' flags, the unit
files, the exporters' flags and the nftables rules alike. Pure functions, no I/O.

A service whose ``address`` the inventory leaves out listens on loopback when nothing but its
own host uses it, and on every interface when other hosts do (the routers reach the engines,
the gateway reaches the router, monitoring scrapes the exporters). Then the firewall lets in
only those hosts and the ``firewall.admin_sources`` and resets every other connection::

    >>> [(e.service, e.address, e.sources) for e in exposures(specs["lab-gpu-1"], specs)][:1]
    [('node exporter', '0.0.0.0', ('10.200.0.1/32', '10.200.0.12'))]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from ipaddress import IPv4Address
from typing import Literal

from gpufleet.checks import Problem, gets_dcgm_exporter
from gpufleet.engines import serving
from gpufleet.engines.llamacpp import rpc_heads
from gpufleet.model_cache import cache_clients, cache_host
from gpufleet.models import HostSpec
from gpufleet.planner import RPC_SERVER

LOOPBACK = "127.0.0.1"
EVERYWHERE = "0.0.0.0"


@dataclass(frozen=True)
class Exposure:
    """One service's ports on one host, and who may reach them."""

    service: str
    ports: tuple[int, ...]
    field: str | None
    """The host-data field that says where it listens; None: it always listens everywhere
    (a container whose ports Docker publishes on every address)."""
    clients: tuple[str, ...]
    """Fleet hosts other than this one that reach it."""
    address: str
    """Where it listens: the inventory's address, else the decided one."""
    sources: tuple[str, ...]
    """Addresses the firewall lets in (clients' LAN and tailnet addresses, admin sources);
    empty when nothing is let in from outside."""
    guarded: bool
    """The firewall resets connections from anywhere else."""
    published: bool = False
    """Published by Docker: reached through the forward hook, not the input hook."""
    authenticated: bool = False
    """It asks every client for credentials (Vault, Grafana, Redis, PostgreSQL)."""
    port_range: tuple[int, int] | None = None
    """A range of ports it listens on besides ``ports`` (first, last): Ray's worker ports."""

    @property
    def port_text(self) -> str:
        """Its ports as one list: ``6379,6380,10002-10101``."""
        ports = [str(p) for p in self.ports]
        if self.port_range:
            ports.append(f"{self.port_range[0]}-{self.port_range[1]}")
        return ",".join(ports)


@dataclass(frozen=True)
class _Service:
    service: str
    ports: tuple[int, ...]
    field: str | None
    clients: frozenset[str]
    address: IPv4Address | tuple[IPv4Address, ...] | None
    authenticated: bool = False
    published: bool = False
    admitted: bool = True
    """The ``firewall.admin_sources`` are let in too."""
    port_range: tuple[int, int] | None = None


def _hosts(specs: dict[str, HostSpec], *groups: str) -> frozenset[str]:
    return frozenset(s.name for s in specs.values() if set(groups) & set(s.groups))


@dataclass(frozen=True)
class FleetRoles:
    """Which hosts play which part across the fleet, worked out once for every host's
    services (each host's list would otherwise walk the whole fleet again)."""

    monitoring: frozenset[str]
    routers: frozenset[str]
    gateways: frozenset[str]
    direct_gateways: frozenset[str]
    vault_peers: frozenset[str]
    redis: str | None
    database: str | None
    rpc_heads: dict[str, frozenset[str]] = dataclass_field(default_factory=dict)
    """Worker -> the hosts whose models it holds layers of (their ``rpc_workers``)."""
    model_cache: str | None = None
    cache_clients: frozenset[str] = frozenset()
    """The hosts that fetch model files from the cache."""
    ray_clusters: dict[str, tuple[str, frozenset[str]]] = dataclass_field(default_factory=dict)
    """Host of a Ray cluster -> (its head, the cluster's other hosts)."""

    @classmethod
    def of(cls, specs: dict[str, HostSpec]) -> FleetRoles:
        from gpufleet.routing import database_host, redis_host, router_hosts

        direct = frozenset(s.name for s in specs.values() if s.gateway.direct_routes)
        gateways = _hosts(specs, "gateway")
        redis, database = redis_host(specs), database_host(specs)
        cache = cache_host(specs)
        return cls(
            _hosts(specs, "monitoring"),
            frozenset(r.name for r in router_hosts(specs)),
            gateways,
            gateways & direct,
            _hosts(specs, "vault"),
            redis.name if redis is not None else None,
            database.name if database is not None else None,
            rpc_heads(specs),
            cache.name if cache is not None else None,
            cache_clients(specs) if cache is not None else frozenset(),
            ray_clusters(specs),
        )


def ray_clusters(specs: dict[str, HostSpec]) -> dict[str, tuple[str, frozenset[str]]]:
    """Every host of a vLLM model split across hosts -> (the head that serves it, the
    cluster's other hosts)."""
    clusters: dict[str, tuple[str, frozenset[str]]] = {}
    for spec in specs.values():
        for placement in spec.models:
            if placement.ray_workers:
                members = frozenset({spec.name, *placement.ray_workers})
                for name in members:
                    clusters.setdefault(name, (spec.name, members - {name}))
    return clusters


def _services(spec: HostSpec, roles: FleetRoles) -> Iterator[_Service]:
    """Every port gpufleet opens on ``spec`` beside the gateway's public 80 and 443."""
    monitoring, routers, gateways = roles.monitoring, roles.routers, roles.direct_gateways
    yield _Service(
        "node exporter",
        (spec.node_exporter_port,),
        "node_exporter_address",
        monitoring,
        spec.node_exporter_address,
    )
    for engine in serving(spec):
        ports = tuple(listener.port for listener in engine.listeners(spec))
        settings = engine.settings(spec)
        address = getattr(settings, "address", None)
        field = f"{engine.settings_key}.address" if hasattr(settings, "address") else None
        published = field is None or getattr(settings, "install", "") == "container"
        yield _Service(
            engine.service, ports, field, routers | monitoring | gateways, address, False, published
        )
    if spec.name in roles.rpc_heads:
        # It asks no credentials and computes whatever it is sent: the hosts whose layers it
        # holds reach it, and nothing else, not even the admin sources.
        yield _Service(
            RPC_SERVER,
            (spec.llamacpp.rpc_port,),
            "llamacpp.rpc_address",
            roles.rpc_heads[spec.name],
            spec.llamacpp.rpc_address,
            admitted=False,
        )
    if spec.name in roles.ray_clusters:
        # Ray runs the code it is sent (its token aside): the cluster's hosts reach its
        # ports, and nothing else, not even the admin sources.
        from gpufleet.checks import ray_cluster_ports

        head, peers = roles.ray_clusters[spec.name]
        ray = spec.vllm.ray
        yield _Service(
            "ray",
            tuple(port for port, _ in ray_cluster_ports(spec, head=head == spec.name)),
            None,
            peers,
            None,
            admitted=False,
            port_range=(ray.min_worker_port, ray.max_worker_port),
        )
    if roles.model_cache == spec.name:
        yield _Service(
            "model cache",
            (spec.model_cache.port,),
            "model_cache.address",
            roles.cache_clients | monitoring,
            spec.model_cache.address,
        )
    if gets_dcgm_exporter(spec):
        exporter = spec.dcgm_exporter
        yield _Service(
            "dcgm-exporter",
            (exporter.port,),
            "dcgm_exporter.address",
            monitoring,
            exporter.address,
            published=True,
        )
    if "router" in spec.groups:
        yield _Service(
            "litellm",
            (spec.litellm.port,),
            "litellm.address",
            roles.gateways | monitoring,
            spec.litellm.address,
        )
    if roles.redis == spec.name:
        settings = spec.litellm.redis
        yield _Service(
            "redis", (settings.port,), "litellm.redis.bind", routers, settings.bind, True
        )
    if roles.database == spec.name:
        db = spec.litellm.database
        yield _Service("postgresql", (db.port,), "litellm.database.bind", routers, db.bind, True)
    if "gateway" in spec.groups:
        gateway = spec.gateway
        yield _Service(
            "nginx exporter",
            (gateway.exporter_port,),
            "gateway.exporter_address",
            monitoring,
            gateway.exporter_address,
        )
    if "monitoring" in spec.groups:
        yield _Service(
            "prometheus",
            (spec.prometheus.port,),
            "prometheus.address",
            frozenset(),
            spec.prometheus.address,
        )
        if spec.grafana.enabled:
            grafana = spec.grafana
            yield _Service(
                "grafana", (grafana.port,), "grafana.address", frozenset(), grafana.address, True
            )
    if "vault" in spec.groups:
        vault = spec.vault
        peers = roles.vault_peers
        yield _Service("vault", (vault.port,), "vault.address", frozenset(), vault.address, True)
        yield _Service(
            "vault cluster", (vault.cluster_port,), "vault.address", peers, vault.address, True
        )


def client_addresses(spec: HostSpec) -> tuple[str, ...]:
    """Where connections from ``spec`` come from: its LAN and its tailnet address."""
    return tuple(str(a) for a in (spec.lan_address, spec.tailscale_address) if a is not None)


def _listens(service: _Service, clients: frozenset[str], admins: bool) -> str:
    address = service.address
    if isinstance(address, tuple):  # Redis's and PostgreSQL's lists of addresses
        outside = [a for a in address if not a.is_loopback]
        return str(outside[0]) if outside else LOOPBACK
    if address is not None:
        return str(address)
    return EVERYWHERE if clients or admins else LOOPBACK


def exposures(
    spec: HostSpec, specs: dict[str, HostSpec], roles: FleetRoles | None = None
) -> list[Exposure]:
    """Each service's ports on ``spec``: where they listen and who may reach them (``roles``:
    the fleet's, where the caller has worked them out for every host)."""
    admins = tuple(str(n) for n in spec.firewall.admin_sources)
    found = []
    for service in _services(spec, roles or FleetRoles.of(specs)):
        clients = service.clients - {spec.name}
        address = _listens(service, clients, bool(admins))
        outside = not IPv4Address(address).is_loopback
        # A service that asks for credentials stays reachable where no admin source is
        # named: the control machine reaches Vault from wherever it is.
        guarded = outside and (not service.authenticated or bool(admins))
        sources: tuple[str, ...] = ()
        if guarded:
            fleet = sorted({a for c in clients for a in client_addresses(specs[c])})
            sources = tuple(dict.fromkeys([*(admins if service.admitted else ()), *fleet]))
        found.append(
            Exposure(
                service.service,
                service.ports,
                service.field,
                tuple(sorted(clients)),
                address,
                sources,
                guarded,
                service.published,
                service.authenticated,
                service.port_range,
            )
        )
    return found


DECIDED_FIELDS = (
    "node_exporter_address",
    "llamacpp.address",
    "llamacpp.rpc_address",
    "model_cache.address",
    "ollama.address",
    "vllm.address",
    "litellm.address",
    "dcgm_exporter.address",
    "gateway.exporter_address",
    "prometheus.address",
)
"""Address fields that may be left out: the decision fills them in."""


def _with(spec: HostSpec, field: str, value: IPv4Address) -> HostSpec:
    head, _, rest = field.partition(".")
    if not rest:
        return spec.model_copy(update={head: value})
    inner = getattr(spec, head)
    return spec.model_copy(update={head: inner.model_copy(update={rest: value})})


def _current(spec: HostSpec, field: str) -> object:
    value: object = spec
    for part in field.split("."):
        value = getattr(value, part)
    return value


def decide_addresses(
    spec: HostSpec, specs: dict[str, HostSpec], roles: FleetRoles | None = None
) -> HostSpec:
    """``spec`` with every address it leaves out decided (see :func:`exposures`); the spec
    every deploy, plan and preview renders from."""
    found = exposures(spec, specs, roles)
    decided = {e.field: e.address for e in found if e.field in DECIDED_FIELDS}
    for field in DECIDED_FIELDS:
        if _current(spec, field) is None:
            spec = _with(spec, field, IPv4Address(decided.get(field, LOOPBACK)))
    return spec


def decide_fleet(specs: dict[str, HostSpec]) -> dict[str, HostSpec]:
    """Every host of the fleet with its addresses decided."""
    roles = FleetRoles.of(specs)
    return {name: decide_addresses(spec, specs, roles) for name, spec in specs.items()}


def exposure_problems(specs: dict[str, HostSpec]) -> Iterator[Problem]:
    """A host another reaches through the firewall must have an address the firewall can let
    in; a host name alone cannot be written into an nftables rule."""
    missing: set[str] = set()
    roles = FleetRoles.of(specs)
    for spec in specs.values():
        found = exposures(spec, specs, roles)
        listening = {e.service: e for e in found}
        for engine in serving(spec):
            secret, exposure = engine.api_key_secret, listening.get(engine.service)
            if not secret or secret in spec.secrets or exposure is None:
                continue
            if not IPv4Address(exposure.address).is_loopback:
                yield Problem(
                    spec.name,
                    f"secrets.{secret}",
                    f"{engine.service} is reached from other hosts "
                    f"({', '.join(exposure.clients) or 'the admin sources'}) and asks them "
                    f"for no key; add secrets={{'{secret}': "
                    f"'vault:kv/gpufleet/{engine.settings_key}#api_key'}} (deploys/vault.py "
                    "generates it), or a file: reference to a 0600 file",
                )
        if not spec.firewall.enabled or spec.os == "macos":
            continue
        for exposure in found:
            if not exposure.guarded:
                continue
            for client in exposure.clients:
                if not client_addresses(specs[client]) and client not in missing:
                    missing.add(client)
                    yield Problem(
                        client,
                        "lan_address",
                        f"{spec.name}'s {exposure.service} lets in only the hosts that use it, "
                        f"by address, and {client} has none: add its lan_address or "
                        f"tailscale_address, or set firewall.enabled: false on {spec.name}",
                    )


def describe_exposures(specs: dict[str, HostSpec]) -> str:
    """Each host's gpufleet ports: where they listen, who may reach them (``gpufleet
    firewall``)."""
    lines = []
    roles = FleetRoles.of(specs)
    for spec in specs.values():
        lines.append(f"{spec.name}:" + ("" if spec.firewall.enabled else " (firewall off)"))
        for exposure in exposures(spec, specs, roles):
            ports = exposure.port_text
            reach = reach_text(spec, exposure)
            lines.append(f"  {exposure.service:<16} {exposure.address}:{ports:<12} {reach}")
    return "\n".join(lines)


Reach = Literal["this host", "sources", "anywhere"]


def reach(spec: HostSpec, exposure: Exposure) -> Reach:
    """Who reaches a service: its own host only (loopback), the addresses the firewall lets
    in, or any address that reaches the host (no firewall, or one that does not guard it)."""
    if IPv4Address(exposure.address).is_loopback:
        return "this host"
    if exposure.guarded and spec.firewall.enabled and spec.os != "macos":
        return "sources"
    return "anywhere"


def reach_text(spec: HostSpec, exposure: Exposure) -> str:
    """:func:`reach` in words, as ``gpufleet firewall`` prints it."""
    kind = reach(spec, exposure)
    if kind == "this host":
        return "this host only"
    if kind == "sources":
        return "from " + (", ".join(exposure.sources) or "nowhere else")
    return "from anywhere" + (" (asks for credentials)" if exposure.authenticated else "")
