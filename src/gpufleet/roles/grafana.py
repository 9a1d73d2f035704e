"""Grafana beside Prometheus: its datasource and gpufleet's dashboards provisioned as files.

Runbook it replaces: add Grafana's repository, install, log in as admin/admin, click a
datasource together, import dashboards by ID and hope their metric names match. Here the
datasource points at this host's Prometheus, the four dashboards (hosts, GPUs, inference,
router) query exactly the metrics gpufleet's Prometheus scrapes, and the admin password comes
from Vault.
"""

from __future__ import annotations

import json
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files

from gpufleet.dashboards import DATASOURCE_UID, dashboards
from gpufleet.models import HostSpec
from gpufleet.operations import config
from gpufleet.paths import template
from gpufleet.roles.steps import run_unit, signed_apt_repository, wait_until_answering
from gpufleet.secrets import read_secret
from gpufleet.vault import fleet_vault

KEYRING = "/etc/apt/keyrings/grafana.asc"
PROVISIONING = "/etc/grafana/provisioning"
DASHBOARDS = "/etc/grafana/dashboards/gpufleet"
"""Root's, read by Grafana: not below /var/lib/grafana, which is Grafana's to write."""
ENV_FILE = "/etc/grafana/gpufleet.env"


@deploy("Grafana")
def grafana(spec: HostSpec, specs: dict[str, HostSpec]) -> None:
    """
    Converge Grafana on a ``monitoring`` host that enables it.

    .. code:: python

        grafana(host_spec(), fleet_specs())
    """
    settings = spec.grafana

    # 1. Grafana's repository, signed by its own key only.
    files.directory(name="apt keyrings folder", path="/etc/apt/keyrings", mode="755")
    signed_apt_repository(
        "Grafana",
        key_url=settings.key_url,
        keyring=KEYRING,
        uri=settings.repo_url,
        suite="stable",
        components=["main"],
        fingerprint=settings.key_fingerprint,
    )
    package = f"grafana={settings.version}" if settings.version else "grafana"
    apt.packages(name="Grafana", packages=[package], no_recommends=True)

    # 2. Where it listens, and the admin password from the secret store.
    vault = fleet_vault(specs)
    secret = config.config_file(
        name="Grafana admin password (from the secret store)",
        dest=ENV_FILE,
        mode="640",
        group="grafana",
        render=lambda: (
            f"GF_SECURITY_ADMIN_PASSWORD={read_secret(settings.admin_password, vault)}\n"
        ),
    )
    unit = files.template(
        name="Grafana settings (systemd drop-in)",
        src=template("grafana/gpufleet.conf.j2"),
        dest="/etc/systemd/system/grafana-server.service.d/gpufleet.conf",
        mode="644",
        address=str(settings.address),
        port=settings.port,
        env_file=ENV_FILE,
    )

    # 3. Datasource and dashboards, as files Grafana provisions at start.
    datasource = files.template(
        name="Prometheus datasource",
        src=template("grafana/datasource.yaml.j2"),
        dest=f"{PROVISIONING}/datasources/gpufleet.yaml",
        mode="640",
        group="grafana",
        uid=DATASOURCE_UID,
        url=f"http://127.0.0.1:{spec.prometheus.port}",
    )
    provider = files.template(
        name="Dashboard provider",
        src=template("grafana/dashboards.yaml.j2"),
        dest=f"{PROVISIONING}/dashboards/gpufleet.yaml",
        mode="640",
        group="grafana",
        path=DASHBOARDS,
    )
    files.directory(
        name="Dashboards folder", path=DASHBOARDS, user="root", group="grafana", mode="755"
    )
    for board in dashboards():
        # Grafana re-reads dashboard files on its own: no restart for a changed panel.
        files.put(
            name=f"Dashboard {board['title']}",
            src=StringIO(json.dumps(board, indent=2, sort_keys=True) + "\n"),
            dest=f"{DASHBOARDS}/{board['uid']}.json",
            mode="644",
        )

    # 4. Run; restart on new settings; wait until it answers.
    started, restarted = run_unit("grafana-server", unit, secret, datasource, provider)
    wait_until_answering(
        "Grafana answers",
        f"http://127.0.0.1:{settings.port}",
        "/api/health",
        120,
        started,
        restarted,
    )
    host.noop(f"Grafana on port {settings.port}: {len(dashboards())} dashboards")
