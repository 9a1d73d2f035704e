"""Prometheus on lab-infra-1, asked through its own HTTP API: every target the inventory
implies is scraped, every endpoint probed, the rules loaded, a firing rule reaches the
webhook the inventory names through Alertmanager, and a host added to the inventory becomes
a target on the next run."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import requests

from gpufleet.lab import ALERT_WEBHOOK_URL

from .conftest import LAB_INVENTORY, SPECS, pyinfra, ssh

PROMETHEUS = "http://10.200.0.12:9090/api/v1"
GPU = "10.200.0.11"
CANNOT_RUN_HERE = {("vllm", "lab-pve-1")}
"""vLLM's binary cannot be fetched here. (The DCGM exporter is not configured at all: it has
no image until the inventory names one by digest.)"""
"""Targets the inventory implies that the lab cannot serve: no GPU, no vLLM binary."""
ALERT_TIMEOUT_S = 900
"""TargetDown fires 5 minutes after Prometheus first finds those targets down; Alertmanager
then waits group_wait (10 s on the lab) and retries a webhook that was not listening yet
about once a minute. A cold 2-core machine gets three times that."""


def targets() -> list[dict]:
    return requests.get(f"{PROMETHEUS}/targets", timeout=10).json()["data"]["activeTargets"]


def settled_targets(seconds: float = 60) -> list[dict]:
    """The targets once each was scraped at least once."""
    deadline = time.monotonic() + seconds
    while True:
        found = targets()
        if all(t["health"] != "unknown" for t in found) or time.monotonic() > deadline:
            return found
        time.sleep(2)


def query(expression: str) -> list[dict]:
    reply = requests.get(f"{PROMETHEUS}/query", params={"query": expression}, timeout=10)
    return reply.json()["data"]["result"]


@pytest.fixture(scope="module")
def scraped(lab_session) -> list[dict]:
    return settled_targets()


def test_every_implied_target_is_scraped_and_up(scraped):
    jobs = {(t["labels"]["job"], t["labels"]["host"]) for t in scraped}
    up = {(t["labels"]["job"], t["labels"]["host"]) for t in scraped if t["health"] == "up"}
    assert {("node", name) for name in SPECS} <= up
    llama_servers = {"lab-gpu-1", "lab-infra-1", "lab-lxc-1", "lab-pve-1", "lab-cpu-1", "lab-amd-1"}
    assert {("llamacpp", name) for name in llama_servers} <= up
    assert {("nginx", "lab-infra-1"), ("litellm", "lab-infra-1"), ("vault", "lab-infra-1")} <= up
    assert ("prometheus", "lab-infra-1") in up
    assert jobs - up == CANNOT_RUN_HERE
    assert not {job for job, _ in jobs if job == "dcgm"}  # no image named: not installed
    # One blackbox probe target per HTTP endpoint the lab runs (each llama-server among them).
    assert sum(1 for t in scraped if t["labels"]["job"] == "blackbox" and t["health"] == "up") == 12


def test_probes_see_what_runs_and_what_does_not(scraped):
    probed = {
        (r["metric"]["service"], r["metric"]["host"]): r["value"][1] for r in query("probe_success")
    }
    for running in (
        ("llama.cpp", "lab-gpu-1"),
        ("llama.cpp", "lab-infra-1"),
        ("llama.cpp", "lab-pve-1"),
        ("llama.cpp", "lab-cpu-1"),  # the model it splits with lab-gpu-1
        ("llama.cpp", "lab-amd-1"),  # on its Vulkan device
        ("litellm", "lab-infra-1"),
        ("gateway", "lab-infra-1"),
        ("vault", "lab-infra-1"),
        ("model-cache", "lab-infra-1"),
    ):
        assert probed[running] == "1", running
    # Configured, not startable here: the probe says so (InferenceServerDown would fire).
    assert probed[("ollama", "lab-gpu-1")] == "0" and probed[("vllm", "lab-pve-1")] == "0"


def test_metrics_arrive_from_each_kind_of_exporter(scraped):
    assert query('node_memory_MemTotal_bytes{host="lab-gpu-1"}')
    assert query('llamacpp:tokens_predicted_total{host="lab-gpu-1"}')
    assert query('nginx_connections_accepted{host="lab-infra-1"}')
    assert query('vault_core_unsealed{host="lab-infra-1"}')[0]["value"][1] == "1"


def test_every_grafana_panel_query_is_valid_promql_on_the_real_prometheus(scraped):
    from gpufleet.dashboards import PANELS

    def answers() -> dict[str, list]:
        found = {}
        for dashboard, panels in PANELS.items():
            for title, _, expression, _ in panels:
                reply = requests.get(
                    f"{PROMETHEUS}/query", params={"query": expression}, timeout=10
                )
                assert reply.status_code == 200, (dashboard, title, reply.text[:300])
                assert reply.json()["status"] == "success", (dashboard, title)
                found[title] = reply.json()["data"]["result"]
        return found

    # What the lab runs has data behind its panels once rates have two samples. Not here:
    # GPUs, Jetson, vLLM, Triton; "/" (an nspawn host's root is not a filesystem the node
    # exporter reports); the router's counters, which start with its first request.
    expected = (
        "Targets up",
        "CPU busy",
        "Memory used",
        "Load (1m)",
        "Engine probes (1 = answering)",
        "llama.cpp generation speed",
        "llama.cpp requests in flight",
        "Gateway connections",
    )
    deadline = time.monotonic() + 90
    while True:
        found = answers()
        empty = [title for title in expected if not found[title]]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert not empty, f"panels without data on the lab: {empty}"


def test_tegrastats_metrics_reach_prometheus_through_the_real_node_exporter(scraped):
    # No Jetson here: a recorded Orin Nano tegrastats line, turned into the exporter's file on
    # lab-gpu-1, goes through the real node exporter's textfile collector to Prometheus.
    from pathlib import Path

    from gpufleet.tegrastats import exposition, parse_tegrastats

    fixture = Path(__file__).parents[1] / "fixtures/jetson/tegrastats-orin-nano-jp6.txt"
    line = fixture.read_text().splitlines()[0]
    target = "/var/lib/prometheus/node-exporter/gpufleet_tegra.prom"
    ssh(GPU, f"cat > {target}", stdin=exposition(parse_tegrastats(line)))
    try:
        metrics = requests.get(f"http://{GPU}:9100/metrics", timeout=10).text
        assert 'gpufleet_tegra_power_watts{rail="VDD_IN"} 4.673' in metrics
        assert "node_textfile_scrape_error 0" in metrics
        deadline = time.monotonic() + 60
        while not query('gpufleet_tegra_ram_used_bytes{host="lab-gpu-1"}'):
            assert time.monotonic() < deadline, "Prometheus never scraped the Jetson metrics"
            time.sleep(3)
        panel = query("gpufleet_tegra_gpu_load_percent")
        assert [r["metric"]["host"] for r in panel] == ["lab-gpu-1"]
    finally:
        ssh(GPU, f"rm -f {target}")


def test_alert_rules_are_loaded_and_evaluated(scraped):
    groups = requests.get(f"{PROMETHEUS}/rules", timeout=10).json()["data"]["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert len(rules) == 10 and all(r["health"] == "ok" for r in rules.values())
    # The targets the lab cannot serve are already on their way to TargetDown.
    pending = {(a["labels"]["job"], a["labels"]["host"]) for a in rules["TargetDown"]["alerts"]}
    assert pending == CANNOT_RUN_HERE


@pytest.mark.hosts("lab-infra-1")
def test_promtool_accepts_what_is_live(lab_host):
    assert lab_host.testinfra.run("promtool check config /etc/prometheus/prometheus.yml").rc == 0
    flags = lab_host.testinfra.file("/etc/default/prometheus").content_string
    assert "--storage.tsdb.retention.time=15d" in flags


class _Webhook(BaseHTTPRequestHandler):
    """Records what Alertmanager posts: (path, JSON body)."""

    posts: list[tuple[str, dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.posts.append((self.path, json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def webhook() -> Iterator[list[tuple[str, dict]]]:
    """The lab inventory's webhook, served on this machine's lab address."""
    url = urlsplit(ALERT_WEBHOOK_URL)
    server = ThreadingHTTPServer((str(url.hostname), int(url.port or 80)), _Webhook)
    _Webhook.posts = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield _Webhook.posts
    server.shutdown()
    server.server_close()


def test_a_firing_rule_reaches_the_webhook_the_inventory_names(scraped, webhook):
    def alertmanagers() -> list[str]:
        active = requests.get(f"{PROMETHEUS}/alertmanagers", timeout=10).json()["data"]
        return [a["url"] for a in active["activeAlertmanagers"]]

    # Prometheus's notifier finds its Alertmanagers a few seconds after a (re)start.
    deadline = time.monotonic() + 120
    while not alertmanagers() and time.monotonic() < deadline:
        time.sleep(2)
    assert alertmanagers() == ["http://127.0.0.1:9093/api/v2/alerts"]

    def fired() -> dict[tuple[str, str], dict]:
        return {
            (alert["labels"]["job"], alert["labels"]["host"]): alert
            for _, body in list(webhook)
            for alert in body["alerts"]
            if alert["labels"]["alertname"] == "TargetDown" and alert["status"] == "firing"
        }

    # What the lab cannot serve is down from the start: TargetDown is bound to fire.
    deadline = time.monotonic() + ALERT_TIMEOUT_S
    while set(fired()) != CANNOT_RUN_HERE:
        assert time.monotonic() < deadline, f"posted so far: {webhook}"
        time.sleep(5)
    alert = fired()[("vllm", "lab-pve-1")]
    path, body = next((path, body) for path, body in webhook if alert in body["alerts"])
    assert path == urlsplit(ALERT_WEBHOOK_URL).path
    assert (body["version"], body["receiver"]) == ("4", "gpufleet")
    assert alert["annotations"]["summary"] == "vllm on lab-pve-1 does not answer Prometheus"
    assert alert["labels"]["severity"] == "warning"


@pytest.mark.hosts("lab-infra-1")
def test_alertmanager_listens_on_loopback_only_with_a_checked_config(lab_host):
    host = lab_host.testinfra
    assert host.service("prometheus-alertmanager").is_running
    assert host.socket("tcp://127.0.0.1:9093").is_listening
    assert not host.socket("tcp://0.0.0.0:9093").is_listening
    assert not host.socket("tcp://10.200.0.12:9093").is_listening
    # No cluster: nothing on 9094, TCP or UDP, on any address.
    assert host.run("ss -Hltun 'sport = :9094'").stdout.strip() == ""
    config = host.file("/etc/prometheus/alertmanager.yml")
    assert (config.mode, config.user, config.group) == (0o640, "root", "prometheus")
    assert host.run("amtool check-config /etc/prometheus/alertmanager.yml").rc == 0


def test_a_host_added_to_the_inventory_is_scraped_after_the_next_run(tmp_path):
    grown = tmp_path / "lab_plus_one.py"
    grown.write_text(
        "import runpy\n"
        f"_lab = runpy.run_path({str(LAB_INVENTORY)!r})\n"
        "from gpufleet.lab import connection\n"
        "gpu_nodes = _lab['gpu_nodes']\n"
        "proxmox_hosts = _lab['proxmox_hosts']\n"
        "cpu_nodes = _lab['cpu_nodes'] + [('lab-new-1', {**connection('10.200.0.15'),\n"
        "    'hardware': {'cores': 2, 'ram_gb': 4}})]\n"
        "gateway, router, monitoring, vault = (_lab[g] for g in "
        "('gateway', 'router', 'monitoring', 'vault'))\n"
    )
    added = pyinfra("deploys/monitoring.py", "-y", "--limit", "lab-infra-1", inventory=grown)
    assert added.returncode == 0, added.stderr[-2000:]
    assert "10.200.0.15:9100" in ssh("10.200.0.12", "cat /etc/prometheus/file_sd/node.json")
    deadline = time.monotonic() + 60
    while not any(t["labels"].get("host") == "lab-new-1" for t in targets()):
        assert time.monotonic() < deadline, "Prometheus did not pick up the new target"
        time.sleep(2)
    back = pyinfra("deploys/monitoring.py", "-y", "--limit", "lab-infra-1")
    assert back.returncode == 0
    assert "lab-new-1" not in ssh("10.200.0.12", "cat /etc/prometheus/file_sd/node.json")
