"""Alertmanager beside Prometheus: its config and flags from the inventory, checked by the
amtool and promtool of the Debian packages the monitoring deploy installs; where Prometheus
sends alerts; which ports it opens; webhook URLs that carry a token kept as secrets."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from gpufleet.checks import listeners
from gpufleet.inventory import InventoryError, validate_file
from gpufleet.models import AlertmanagerServer, AlertWebhook, HostSpec
from gpufleet.monitoring import (
    ALERTMANAGER_CONFIG,
    JOBS,
    KeyedJob,
    alertmanager_flags,
    alertmanager_target,
    alertmanager_yml,
)
from gpufleet.paths import render_template
from gpufleet.roles.monitoring import webhook_url
from gpufleet.secrets import SecretError, secret_uses

ROOT = Path(__file__).parents[2]
RULES = ROOT / "templates/prometheus/gpufleet.rules.yml"
TOKEN_URL = "https://ntfy.example.net/fleet-alerts?auth=tk_9f3a&priority=high"
"""A URL whose query carries a token and characters YAML and JSON treat specially."""


def monitoring_host(**alertmanager: object) -> HostSpec:
    return HostSpec.model_validate(
        {
            "name": "pi5l",
            "groups": ["monitoring"],
            "hardware": {"cores": 4, "ram_gb": 8},
            "alertmanager": alertmanager,
        }
    )


def settings(*webhooks: dict[str, object], **more: object) -> AlertmanagerServer:
    return AlertmanagerServer.model_validate({"webhooks": list(webhooks), **more})


def test_every_webhook_gets_every_alert_grouped_per_alert_and_host():
    two = settings(
        {"name": "pager", "url": "vault:kv/gpufleet/alertmanager#pager_url"},
        {"name": "log", "url": "http://10.0.0.111:9000/hook", "send_resolved": False},
    )
    text = alertmanager_yml(two, {"pager": TOKEN_URL, "log": "http://10.0.0.111:9000/hook"})
    assert text.startswith("# Managed by gpufleet")
    config = yaml.safe_load(text)
    assert config["route"] == {
        "receiver": "gpufleet",
        "group_by": ["alertname", "host"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "4h",
    }
    (receiver,) = config["receivers"]
    assert receiver["name"] == "gpufleet"
    # The URL comes back exactly, its ? & = and all, whatever it holds.
    assert receiver["webhook_configs"] == [
        {"url": TOKEN_URL, "send_resolved": True},
        {"url": "http://10.0.0.111:9000/hook", "send_resolved": False},
    ]
    assert "# pager" in text and "# log" in text


def test_amtool_accepts_the_config_the_lab_and_the_homelab_get(amtool, tmp_path):
    for inventory, host in (("inventory/lab.py", "lab-infra-1"), ("inventory/homelab.py", "pi5l")):
        am = validate_file(ROOT / inventory)[host].alertmanager
        config = tmp_path / f"{host}.yml"
        config.write_text(alertmanager_yml(am, {w.name: TOKEN_URL for w in am.webhooks}))
        result = subprocess.run(
            [amtool, "check-config", str(config)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert " - 1 receivers" in result.stdout
        assert TOKEN_URL not in result.stdout + result.stderr  # amtool reports, never echoes


def test_amtool_refuses_what_alertmanager_would_refuse(amtool, tmp_path):
    # What the deploy's `amtool check-config` stops before it reaches the running
    # Alertmanager: here a duration the model would have refused, written past the model.
    bad = AlertmanagerServer.model_construct(
        webhooks=(AlertWebhook(name="phone", url=TOKEN_URL),),
        group_by=("alertname",),
        group_wait="soon",
        group_interval="5m",
        repeat_interval="4h",
    )
    config = tmp_path / "alertmanager.yml"
    config.write_text(alertmanager_yml(bad, {"phone": TOKEN_URL}))
    result = subprocess.run([amtool, "check-config", str(config)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "soon" in result.stdout + result.stderr


def test_flags_listen_on_loopback_and_open_no_cluster_port():
    text = alertmanager_flags(AlertmanagerServer())
    assert text.startswith("# Managed by gpufleet")
    (line,) = [line for line in text.splitlines() if line.startswith("ARGS=")]
    # systemd splits $ARGS on whitespace, as the shell does here.
    flags = shlex.split(shlex.split(line.removeprefix("ARGS="))[0])
    assert flags == [
        f"--config.file={ALERTMANAGER_CONFIG}",
        "--web.listen-address=127.0.0.1:9093",
        "--cluster.listen-address=",
    ]


def test_prometheus_sends_to_the_alertmanager_of_its_own_host():
    assert alertmanager_target(monitoring_host()) is None  # no webhook: no Alertmanager
    hook = {"name": "phone", "url": "https://ntfy.example.net/x"}
    assert alertmanager_target(monitoring_host(webhooks=[hook])) == "127.0.0.1:9093"
    everywhere = monitoring_host(webhooks=[hook], address="0.0.0.0", port=9193)
    assert alertmanager_target(everywhere) == "127.0.0.1:9193"
    lan = monitoring_host(webhooks=[hook], address="10.0.0.111")
    assert alertmanager_target(lan) == "10.0.0.111:9093"
    lab = validate_file(ROOT / "inventory/lab.py")
    assert alertmanager_target(lab["lab-infra-1"]) == "127.0.0.1:9093"
    assert alertmanager_target(lab["lab-gpu-1"]) is None  # not a monitoring host


def prometheus_yml(alertmanager: str | None, fleet_ca: Path) -> str:
    return render_template(
        "prometheus/prometheus.yml.j2",
        scrape_interval="15s",
        rules=str(RULES),
        port=9090,
        host="pi5l",
        jobs=JOBS,
        keyed_jobs=[KeyedJob("llamacpp-key1", "llamacpp", "file:/unused")],
        keys_dir=str(fleet_ca.parent),
        file_sd="/etc/prometheus/file_sd",
        fleet_ca=str(fleet_ca),
        blackbox_port=9115,
        alertmanager=alertmanager,
    )


def test_prometheus_config_names_the_alertmanager_and_promtool_accepts_it(promtool, tmp_path):
    fleet_ca = tmp_path / "fleet-ca.crt"
    fleet_ca.write_text("")
    (tmp_path / "llamacpp-key1").write_text("placeholder-key\n")  # a keyed job's key file
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_yml("127.0.0.1:9093", fleet_ca))
    alerting = yaml.safe_load(config.read_text())["alerting"]
    assert alerting == {"alertmanagers": [{"static_configs": [{"targets": ["127.0.0.1:9093"]}]}]}
    result = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The rules stay, whether alerts go anywhere or not.
    assert yaml.safe_load(prometheus_yml(None, fleet_ca))["rule_files"] == [str(RULES)]
    assert yaml.safe_load(config.read_text())["rule_files"] == [str(RULES)]


def test_alertmanager_holds_a_port_only_where_it_runs():
    lab = validate_file(ROOT / "inventory/lab.py")
    infra = listeners(lab["lab-infra-1"])
    assert (9093, "alertmanager.port") in infra
    assert 9094 not in {port for port, _ in infra}  # the cluster port stays closed
    assert not any(field.startswith("alertmanager") for _, field in listeners(lab["lab-gpu-1"]))
    assert not any(field.startswith("alertmanager") for _, field in listeners(monitoring_host()))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://files.example.net/hook",
        "https://hooks.example.net/a b",
        'https://hooks.example.net/"x"',
        "hooks.example.net/x",
        "https:///x",
        "vault:kv/gpufleet/alertmanager",  # a reference names its key
    ],
)
def test_a_webhook_url_is_http_or_a_secret_reference(url):
    with pytest.raises(ValidationError, match="not an http"):
        AlertWebhook(name="phone", url=url)


def test_webhook_names_are_unique():
    hook = {"name": "phone", "url": "https://h/x"}
    with pytest.raises(ValidationError, match="two webhooks are named 'phone'"):
        settings(hook, hook)


def test_a_rejected_webhook_url_is_never_echoed(tmp_path):
    inventory = tmp_path / "leaky.py"
    inventory.write_text(
        "cpu_nodes = [('pi5l', {'ssh_hostname': '10.200.0.250',\n"
        "    'hardware': {'cores': 4, 'ram_gb': 8},\n"
        "    'alertmanager': {'webhooks': [{'name': 'phone',\n"
        "        'url': 'https://ntfy.example.net/alerts?auth=tk_leak x'}]}})]\n"
        "monitoring = ['pi5l']\n"
    )
    with pytest.raises(InventoryError) as raised:
        validate_file(inventory)
    message = str(raised.value)
    assert "host 'pi5l': alertmanager.webhooks[0].url: not an http(s) URL" in message
    assert "tk_leak" not in message


def test_a_webhook_url_with_a_token_is_a_secret_use():
    homelab = validate_file(ROOT / "inventory/homelab.py")
    (use,) = [u for u in secret_uses(homelab) if u.service == "alertmanager"]
    assert (use.host, use.field, use.reference) == (
        "pi5l",
        "alertmanager.webhooks[0].url",
        "vault:kv/gpufleet/alertmanager#pager_url",
    )
    assert use.generate is False  # the relay issues it; it is put in Vault by hand
    # A plain URL is no secret: the lab's.
    assert not [
        u for u in secret_uses(validate_file(ROOT / "inventory/lab.py")) if "alert" in u.field
    ]


def test_a_referenced_url_is_read_when_written_and_checked_without_showing_it(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(TOKEN_URL + "\n")
    bad.write_text("tk_9f3a-no-scheme\n")
    for secret in (good, bad):
        secret.chmod(0o600)
    assert webhook_url(AlertWebhook(name="pager", url=f"file:{good}"), None) == TOKEN_URL
    plain = AlertWebhook(name="lab", url="http://10.200.0.1:8381/alerts")
    assert webhook_url(plain, None) == "http://10.200.0.1:8381/alerts"
    with pytest.raises(SecretError) as raised:
        webhook_url(AlertWebhook(name="pager", url=f"file:{bad}"), None)
    assert "not an http(s) URL" in str(raised.value)
    assert "tk_9f3a" not in str(raised.value)
