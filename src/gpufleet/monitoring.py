"""What Prometheus scrapes and probes, derived from the inventory: one ``file_sd`` target list
per job, so a host added to the inventory is scraped after the next run with no edit to
``prometheus.yml``. Pure functions, no I/O. Example::

    >>> scrape_jobs(specs)["node"][0]
    {'targets': ['10.200.0.11:9100'], 'labels': {'host': 'lab-gpu-1'}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpufleet.checks import gets_alertmanager, gets_dcgm_exporter
from gpufleet.engines import ENGINES, Engine, serving
from gpufleet.models import AlertmanagerServer, HostSpec
from gpufleet.paths import render_template
from gpufleet.routing import reached_from, service_address

ALERTMANAGER_CONFIG = "/etc/prometheus/alertmanager.yml"
"""Where Debian's prometheus-alertmanager reads its config (its default ``--config.file``)."""

ENGINE_JOBS = tuple(dict.fromkeys(e.scrape_job for e in ENGINES if e.scrape_job))
JOBS = ("node", "dcgm", *ENGINE_JOBS, "litellm", "nginx", "vault")
"""Jobs Prometheus scrapes directly; ``blackbox`` probes are a job of their own."""


def scrape_jobs(
    specs: dict[str, HostSpec], monitor: HostSpec | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Every job's targets, in ``file_sd`` form, as ``monitor`` reaches them (its own
    services on loopback, where those that nothing else uses listen)."""
    jobs: dict[str, list[dict[str, Any]]] = {job: [] for job in JOBS}

    def _target(spec: HostSpec, port: int) -> dict[str, Any]:
        address = reached_from(monitor, spec) if monitor else service_address(spec)
        return {"targets": [f"{address}:{port}"], "labels": {"host": spec.name}}

    keyed = {(k.job, k.reference): k.name for k in keyed_jobs(specs)}
    for name in keyed.values():
        jobs[name] = []
    for spec in specs.values():
        jobs["node"].append(_target(spec, spec.node_exporter_port))
        if gets_dcgm_exporter(spec):
            jobs["dcgm"].append(_target(spec, spec.dcgm_exporter.port))
        for engine in serving(spec):
            reference = metrics_key(spec, engine)
            for target in engine.scrape_targets(spec):
                job = keyed.get((target.job, reference), target.job) if reference else target.job
                jobs[job].append(_target(spec, target.port))
        if "router" in spec.groups:
            jobs["litellm"].append(_target(spec, spec.litellm.port))
        if "gateway" in spec.groups:
            jobs["nginx"].append(_target(spec, spec.gateway.exporter_port))
        if "vault" in spec.groups:
            jobs["vault"].append(_target(spec, spec.vault.port))
    return jobs


@dataclass(frozen=True)
class KeyedJob:
    """Targets whose metrics ask for the engine's API key: one scrape job per key, whose
    ``job`` label is the engine's job all the same (rules and dashboards read that)."""

    name: str
    job: str
    reference: str
    """The key's secret reference; Prometheus reads the key from a 0640 file."""


def metrics_key(spec: HostSpec, engine: Engine) -> str | None:
    """The reference of the key ``engine`` on ``spec`` asks for on its metrics path."""
    secret = engine.api_key_secret
    if engine.metrics_need_key and secret and secret in spec.secrets:
        return spec.secrets[secret]
    return None


def keyed_jobs(specs: dict[str, HostSpec]) -> list[KeyedJob]:
    """One job per engine job and key: hosts that share a key share a job."""
    found: dict[tuple[str, str], None] = {}
    for spec in specs.values():
        for engine in serving(spec):
            reference = metrics_key(spec, engine)
            if reference is None:
                continue
            for target in engine.scrape_targets(spec):
                found[(target.job, reference)] = None
    numbered: dict[str, int] = {}
    jobs = []
    for job, reference in found:
        numbered[job] = numbered.get(job, 0) + 1
        jobs.append(KeyedJob(f"{job}-key{numbered[job]}", job, reference))
    return jobs


def probes(specs: dict[str, HostSpec], monitor: HostSpec | None = None) -> list[dict[str, Any]]:
    """Every HTTP endpoint the blackbox exporter checks, Ollama's included (it has no
    metrics of its own), labelled with host and service."""
    found = []

    def probe(spec: HostSpec, service: str, url: str) -> None:
        found.append({"targets": [url], "labels": {"host": spec.name, "service": service}})

    for spec in specs.values():
        address = reached_from(monitor, spec) if monitor else service_address(spec)
        for engine in serving(spec):
            probe(spec, engine.name, engine.probe_url(spec, str(address)))
        if "router" in spec.groups:
            probe(spec, "litellm", f"http://{address}:{spec.litellm.port}/health/liveliness")
        if "gateway" in spec.groups:
            probe(spec, "gateway", f"https://{address}:{spec.gateway.https_port}/health")
        if "vault" in spec.groups:
            probe(spec, "vault", f"https://{address}:{spec.vault.port}/v1/sys/health")
        if "model_cache" in spec.groups:
            probe(spec, "model-cache", f"http://{address}:{spec.model_cache.port}/health")
    return found


def alertmanager_target(spec: HostSpec) -> str | None:
    """``host:port`` where Prometheus on ``spec`` sends alerts; None when the host runs no
    Alertmanager. Loopback unless Alertmanager listens on one address that is not."""
    if not gets_alertmanager(spec):
        return None
    settings = spec.alertmanager
    address = settings.address
    reach = "127.0.0.1" if address.is_unspecified or address.is_loopback else str(address)
    return f"{reach}:{settings.port}"


def alertmanager_flags(settings: AlertmanagerServer) -> str:
    """``/etc/default/prometheus-alertmanager``: where it listens, and no cluster listener
    (an empty ``--cluster.listen-address`` turns the HA gossip port 9094 off)."""
    return (
        "# Managed by gpufleet (deploys/monitoring.py).\n"
        f'ARGS="--config.file={ALERTMANAGER_CONFIG} '
        f"--web.listen-address={settings.address}:{settings.port} "
        '--cluster.listen-address="\n'
    )


def alertmanager_yml(settings: AlertmanagerServer, urls: Mapping[str, str]) -> str:
    """``alertmanager.yml``: one route that groups every alert and one receiver holding every
    webhook. ``urls`` maps each webhook's name to its URL, secret references already read."""
    webhooks = [
        {"name": w.name, "url": urls[w.name], "send_resolved": w.send_resolved}
        for w in settings.webhooks
    ]
    return render_template(
        "alertmanager/alertmanager.yml.j2",
        group_by=list(settings.group_by),
        group_wait=settings.group_wait,
        group_interval=settings.group_interval,
        repeat_interval=settings.repeat_interval,
        webhooks=webhooks,
    )
