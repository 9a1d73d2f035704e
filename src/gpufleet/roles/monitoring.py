"""Prometheus on the ``monitoring`` group, scraping what the inventory deploys, Alertmanager
beside it posting the alerts to the inventory's webhooks, and the DCGM exporter on hosts with
an NVIDIA GPU.

Runbook it replaces: install Prometheus; hand-add every host to ``prometheus.yml``; write
alert rules and hope the expressions mean what they say (seed 003's VRAM rule did not). Here
targets are ``file_sd`` lists generated from the inventory, every file is checked by promtool
or the exporter itself before it counts, and Prometheus reloads only when its config changed.
Alertmanager's config is checked by amtool the same way, so a bad one never reaches the
running Alertmanager.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd
from pyinfra.operations.util import any_changed

from gpufleet import sandbox
from gpufleet.checks import gets_alertmanager, gets_dcgm_exporter
from gpufleet.facts.gpu import detected_gpus
from gpufleet.models import WEBHOOK_URL, AlertWebhook, HostSpec
from gpufleet.monitoring import (
    ALERTMANAGER_CONFIG,
    JOBS,
    alertmanager_flags,
    alertmanager_target,
    alertmanager_yml,
    keyed_jobs,
    probes,
    scrape_jobs,
)
from gpufleet.operations import config
from gpufleet.paths import TEMPLATES, render_template, template
from gpufleet.roles.fleet_ca import FLEET_CA_ON_HOST, trust_fleet_ca
from gpufleet.roles.steps import pull_image, run_service, run_unit, wait_until_answering
from gpufleet.secrets import SecretError, read_secret
from gpufleet.vault import VaultClient, fleet_vault

CONFIG = "/etc/prometheus/prometheus.yml"
FILE_SD = "/etc/prometheus/file_sd"
KEYS = "/etc/prometheus/keys"
RULES = "/etc/prometheus/rules/gpufleet.rules.yml"
BLACKBOX = "/etc/prometheus/blackbox.yml"
ALERTMANAGER = "prometheus-alertmanager"
ALERTMANAGER_FLAGS = "/etc/default/prometheus-alertmanager"


def _as_json(entries: list[dict[str, Any]]) -> str:
    return json.dumps(entries, indent=2) + "\n"


@deploy("Prometheus")
def prometheus(spec: HostSpec, specs: dict[str, HostSpec]) -> None:
    """
    Converge Prometheus and the blackbox exporter on a host of the ``monitoring`` group.

    .. code:: python

        prometheus(host_spec(), fleet_specs())
    """
    settings = spec.prometheus
    trust_fleet_ca(spec)
    apt.packages(
        name="Prometheus and the blackbox exporter",
        packages=["prometheus", "prometheus-blackbox-exporter"],
        no_recommends=True,
    )

    # 1. Targets: one file per job, read by Prometheus as they change (no reload needed).
    files.directory(name="Target lists folder", path=FILE_SD, mode="755")
    targets = {**scrape_jobs(specs, spec), "blackbox": probes(specs, spec)}
    for job, entries in targets.items():
        config.config_file(
            name=f"Targets: {job} ({len(entries)})",
            dest=f"{FILE_SD}/{job}.json",
            render=partial(_as_json, entries),
        )

    # Keys of the engines whose metrics ask for one, read from the secret store into files
    # only Prometheus reads (its config names the file, never the key).
    keyed = keyed_jobs(specs)
    vault = fleet_vault(specs) if keyed else None
    files.directory(name="Scrape keys folder", path=KEYS, group="prometheus", mode="750")
    for keyed_job in keyed:
        config.config_file(
            name=f"Scrape key: {keyed_job.name} (from the secret store)",
            dest=f"{KEYS}/{keyed_job.name}",
            render=partial(_key, keyed_job.reference, vault),
            group="prometheus",
            mode="640",
        )

    # 2. Rules, blackbox modules, main config: each checked before it counts.
    files.directory(name="Rules folder", path=RULES.rsplit("/", 1)[0], mode="755")
    rules = config.config_file(
        name="Alert rules (promtool check rules)",
        dest=RULES,
        render=(TEMPLATES / "prometheus/gpufleet.rules.yml").read_text,
        validate=f"promtool check rules {RULES}",
    )
    blackbox = config.config_file(
        name="Blackbox modules (checked by the exporter)",
        dest=BLACKBOX,
        render=lambda: render_template("prometheus/blackbox.yml.j2", fleet_ca=FLEET_CA_ON_HOST),
        validate=f"prometheus-blackbox-exporter --config.check --config.file={BLACKBOX}",
    )
    main = config.config_file(
        name="Prometheus config (promtool check config)",
        dest=CONFIG,
        render=lambda: render_template(
            "prometheus/prometheus.yml.j2",
            scrape_interval=settings.scrape_interval,
            rules=RULES,
            port=settings.port,
            host=spec.name,
            jobs=JOBS,
            keyed_jobs=keyed,
            keys_dir=KEYS,
            file_sd=FILE_SD,
            fleet_ca=FLEET_CA_ON_HOST,
            blackbox_port=settings.blackbox_port,
            alertmanager=alertmanager_target(spec),
        ),
        validate=f"promtool check config {CONFIG}",
    )
    arguments = config.config_file(
        name="Prometheus flags (retention, storage, port)",
        dest="/etc/default/prometheus",
        render=lambda: (
            "# Managed by gpufleet (deploys/monitoring.py).\n"
            f'ARGS="--storage.tsdb.retention.time={settings.retention} '
            f"--storage.tsdb.path={settings.storage_path} "
            f'--web.listen-address={settings.address}:{settings.port}"\n'
        ),
    )
    blackbox_arguments = config.config_file(
        name="Blackbox exporter flags",
        dest="/etc/default/prometheus-blackbox-exporter",
        render=lambda: (
            "# Managed by gpufleet (deploys/monitoring.py).\n"
            f'ARGS="--config.file {BLACKBOX} '
            f'--web.listen-address=127.0.0.1:{settings.blackbox_port}"\n'
        ),
    )
    files.directory(
        name="Time series folder",
        path=settings.storage_path,
        user="prometheus",
        group="prometheus",
        mode="755",
    )

    # 3. Restart on new flags, reload on new config; wait until it is ready after either.
    run_service("prometheus-blackbox-exporter", blackbox, blackbox_arguments)
    started, restarted = run_service("prometheus", arguments)
    # A (re)start already reads the new config; a SIGHUP that lands while Prometheus is still
    # starting, before it handles the signal, kills it.
    reloaded = systemd.service(
        name="Reload prometheus",
        service="prometheus",
        reloaded=True,
        _if=lambda: any_changed(rules, main)() and not any_changed(started, restarted)(),
    )
    wait_until_answering(
        "Prometheus is ready",
        f"http://127.0.0.1:{settings.port}",
        "/-/ready",
        120,
        started,
        restarted,
        reloaded,
    )


def _key(reference: str, vault: VaultClient | None) -> str:
    return read_secret(reference, vault)


def webhook_url(webhook: AlertWebhook, vault: VaultClient | None) -> str:
    """The URL a webhook posts to: its ``url``, or the secret that references. A secret that
    is not an http(s) URL is refused without showing it."""
    if not webhook.url_is_secret:
        return webhook.url
    value = read_secret(webhook.url, vault)
    if not WEBHOOK_URL.match(value):
        raise SecretError(f"{webhook.url}: not an http(s) URL without spaces or quotes")
    return value


@deploy("Alertmanager")
def alertmanager(spec: HostSpec, specs: dict[str, HostSpec]) -> None:
    """
    Converge Alertmanager on a ``monitoring`` host that has webhooks to notify; on one that
    has none, make sure none runs (it would discard every alert).

    .. code:: python

        alertmanager(host_spec(), fleet_specs())
    """
    settings = spec.alertmanager
    if not gets_alertmanager(spec):
        systemd.service(
            name="No Alertmanager without webhooks",
            service=ALERTMANAGER,
            running=False,
            enabled=False,
        )
        host.noop("alertmanager.webhooks is empty: no Alertmanager, alerts show in Prometheus")
        return

    # 1. Flags before the package: dpkg keeps a flags file it finds (--force-confold), so the
    #    service it starts never listens beyond loopback nor on the cluster port 9094.
    arguments = config.config_file(
        name="Alertmanager flags (listen address, no cluster)",
        dest=ALERTMANAGER_FLAGS,
        render=partial(alertmanager_flags, settings),
    )
    apt.packages(name="Alertmanager", packages=[ALERTMANAGER], no_recommends=True)

    # 2. Routes and webhooks, checked by amtool before they count; 0640, a URL may hold a token.
    vault = fleet_vault(specs)
    main = config.config_file(
        name="Alertmanager config (amtool check-config)",
        dest=ALERTMANAGER_CONFIG,
        mode="640",
        group="prometheus",
        render=lambda: alertmanager_yml(
            settings, {w.name: webhook_url(w, vault) for w in settings.webhooks}
        ),
        validate=f"amtool check-config {ALERTMANAGER_CONFIG}",
    )

    # 3. Restart on new flags, reload on a new config (not while starting: see prometheus()).
    started, restarted = run_service(ALERTMANAGER, arguments)
    reloaded = systemd.service(
        name=f"Reload {ALERTMANAGER}",
        service=ALERTMANAGER,
        reloaded=True,
        _if=lambda: main.did_change() and not any_changed(started, restarted)(),
    )
    wait_until_answering(
        "Alertmanager is ready",
        f"http://{alertmanager_target(spec)}",
        "/-/ready",
        120,
        started,
        restarted,
        reloaded,
    )
    host.noop(f"Alertmanager notifies {len(settings.webhooks)} webhook(s)")


@deploy("DCGM exporter")
def dcgm_exporter(spec: HostSpec) -> None:
    """
    Run NVIDIA's DCGM exporter (pinned image, through the NVIDIA runtime) as a systemd unit
    on a host whose NVIDIA GPU is present; a noop elsewhere.

    .. code:: python

        dcgm_exporter(host_spec())
    """
    exporter = spec.dcgm_exporter
    if spec.hardware.nvidia_gpu_count and exporter.enabled and exporter.image is None:
        host.noop(
            "dcgm_exporter.image is not set: no DCGM exporter (no GPU metrics) until it names "
            "an image pinned by digest, e.g. 'nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-4.1.3-"
            "ubuntu22.04@sha256:<digest>' ('docker buildx imagetools inspect IMAGE' or "
            "'skopeo inspect docker://IMAGE' prints the digest)"
        )
        return
    if not gets_dcgm_exporter(spec) or exporter.image is None:
        host.noop("no NVIDIA GPU declared, or dcgm_exporter.enabled is false: no DCGM exporter")
        return
    if not detected_gpus()["pci"]:
        host.noop("no NVIDIA GPU detected: DCGM exporter skipped")
        return
    unit = files.template(
        name="DCGM exporter unit",
        src=template("dcgm/dcgm-exporter.service.j2"),
        dest="/etc/systemd/system/dcgm-exporter.service",
        mode="644",
        image=exporter.image,
        address=exporter.address,
        port=exporter.port,
        sandbox=sandbox.docker_client(),
    )
    pull_image(exporter.image, unit)
    run_unit("dcgm-exporter", unit)
