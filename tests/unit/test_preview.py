"""Operation tests: every deploy planned on homelab.py's hosts from fact profiles (fresh
Debian 12 amd64/arm64 recorded on lab hosts; Raspberry Pi OS, a GPU node and macOS derived or
written from real outputs). No host is contacted: the profiles answer every fact."""

from __future__ import annotations

import hashlib
import plistlib
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from gpufleet.engines.ollama import RELEASE, RELEASE_SHA256
from gpufleet.engines.ollama_macos import OLLAMA_MACOS
from gpufleet.facts.tailscale import parse_status, served_proxies
from gpufleet.inventory import validate_file
from gpufleet.paths import EVERY_DEPLOY
from gpufleet.preview import FactProfile, MissingFact, PlannedOperation, plan, profiles_for
from gpufleet.roles.ollama import models_and_aliases
from gpufleet.serving import placement_runs

ROOT = Path(__file__).parents[2]
HOMELAB = "inventory/homelab.py"
FIXTURES = Path(__file__).parents[1] / "fixtures"


def planned(
    inventory: str, deploys: list[str], limit: list[str] | None = None, **overrides: Any
) -> dict[str, list[PlannedOperation]]:
    """Plan from each host's profile; ``overrides`` maps a fact name to a function of the
    arguments JSON that returns the value, or raises KeyError to fall back to the profile."""
    profiles = profiles_for(inventory, limit)

    def answer(host: str, fact: str, arguments: str) -> Any:
        if fact in overrides:
            try:
                return overrides[fact](arguments)
            except KeyError:
                pass
        return profiles[host].answer(fact, arguments)

    return plan(inventory, deploys, answer, limit)


def commands(operations: list[PlannedOperation]) -> list[str]:
    return [command for operation in operations for command in operation.commands]


@pytest.fixture(scope="module")
def homelab() -> dict[str, list[PlannedOperation]]:
    return planned(HOMELAB, list(EVERY_DEPLOY))


def test_every_homelab_host_plans_every_deploy_from_the_facts_of_a_fresh_host(homelab):
    from gpufleet.inventory import validate_file

    assert set(homelab) == set(validate_file(HOMELAB))
    for host, operations in homelab.items():
        assert any(operation.changes for operation in operations), host


def uploads(operations: list[PlannedOperation]) -> dict[str, str]:
    return {dest: content for o in operations for dest, content in o.uploads.items()}


def test_gpu_nodes_get_their_pinned_drivers_and_cpu_nodes_get_none(homelab):
    akshat = commands(homelab["akshat-pc"])
    # Blackwell on Debian 12: NVIDIA's CUDA repository, its 575 branch with the open kernel
    # modules (the only ones an RTX 5090 runs on), held at the version.
    (key,) = [c for c in akshat if "3bf863cc.pub" in c]
    assert "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/" in key
    assert (
        '"$got" = EB693B3035CD5710E231E123A4B469963BF863CC ]' in key
    )  # checked before apt trusts it
    cuda = uploads(homelab["akshat-pc"])["/etc/apt/sources.list.d/gpufleet-cuda.sources"]
    assert "Signed-By: /etc/apt/keyrings/cuda-archive-keyring.asc" in cuda
    assert any("install" in c and "nvidia-open-575" in c for c in akshat)
    assert not any("cuda-drivers" in c for c in akshat)
    hold = uploads(homelab["akshat-pc"])["/etc/apt/preferences.d/gpufleet-nvidia-driver"]
    assert "575.64.05" in hold
    old = uploads(homelab["old-office-pc"])["/etc/apt/preferences.d/gpufleet-nvidia-driver"]
    assert "535.261.03" in old
    assert not any("3bf863cc" in c for c in commands(homelab["old-office-pc"]))
    assert "nvidia" not in " ".join(commands(homelab["gtr9-pro"]))


def test_the_pi_fleet_is_planned_for_arm64_from_debians_packages(homelab):
    pi = commands(homelab["pi5-01"])
    assert any("prometheus-node-exporter" in c and "apt-get" in c for c in pi), pi
    for host in ("pi5-01", "pi5l"):
        assert not any("amd64" in c or "x86_64" in c for c in commands(homelab[host])), host


def test_pi5l_runs_the_orchestrator_stack_with_its_data_layer(homelab):
    names = [operation.name for operation in homelab["pi5l"]]
    for expected in (
        "LiteLLM database (PostgreSQL) | Role litellm",
        "LiteLLM database (PostgreSQL) | Set litellm's password",
        "Router state (Redis) | Redis",
        "LiteLLM router | Run litellm",
        "Gateway | Run nginx",
    ):
        assert any(expected in name for name in names), expected
    # The password reaches psql from a file, never on a command line.
    (set_password,) = [o for o in homelab["pi5l"] if "Set litellm's password" in o.name]
    assert set_password.commands == [
        "psql -v ON_ERROR_STOP=1 -q -f /etc/postgresql/gpufleet/set-litellm-password.sql"
    ]
    sql = next(o for o in homelab["pi5l"] if o.name.endswith("SQL that sets it"))
    (content,) = sql.uploads.values()
    assert "\\set password `cat /etc/postgresql/gpufleet/litellm.password`" in content


def test_the_mac_gets_launchd_daemons_not_apt_or_systemd(homelab):
    mac = homelab["mac-mini-m4-pro"]
    everything = " ".join(commands(mac))
    assert "apt" not in everything and "systemctl" not in everything
    assert "brew install node_exporter" in everything and "brew install ollama" in everything
    for label in ("com.gpufleet.ollama", "com.gpufleet.node-exporter"):
        (load,) = [o for o in mac if o.name.endswith(f"Load {label} (plist checked first)")]
        lint, _, bootstrap = load.commands
        assert lint == f"plutil -lint /Library/LaunchDaemons/{label}.plist"
        assert bootstrap == f"launchctl bootstrap system /Library/LaunchDaemons/{label}.plist"
    pulls = [c for c in commands(mac) if c.startswith("ollama pull")]
    assert pulls == [
        "ollama pull qwen2.5:14b",
        "ollama pull llama3.2:3b",
        "ollama pull phi3.5:3.8b",
        "ollama pull nomic-embed-text",
        "ollama pull llama3.2-vision:11b",
    ]


def plists(operations: list[PlannedOperation]) -> dict[str, dict[str, Any]]:
    return {
        dest: plistlib.loads(content.encode())
        for operation in operations
        for dest, content in operation.uploads.items()
        if dest.endswith(".plist")
    }


def test_the_macs_ollama_settings_live_in_its_launchd_plist(homelab):
    daemons = plists(homelab["mac-mini-m4-pro"])
    ollama = daemons["/Library/LaunchDaemons/com.gpufleet.ollama.plist"]
    assert ollama["ProgramArguments"] == ["/opt/homebrew/bin/ollama", "serve"]
    assert ollama["UserName"] == "admin"  # the account the profile logs in as
    assert ollama["EnvironmentVariables"]["OLLAMA_HOST"] == "0.0.0.0:11434"
    assert ollama["EnvironmentVariables"]["HOME"] == "/Users/admin"
    assert ollama["RunAtLoad"] is True and ollama["KeepAlive"] is True
    exporter = daemons["/Library/LaunchDaemons/com.gpufleet.node-exporter.plist"]
    assert exporter["ProgramArguments"][1] == "--web.listen-address=0.0.0.0:9100"


def test_a_converged_mac_plans_no_change(homelab):
    mac = ["mac-mini-m4-pro"]
    written = {
        dest: content for o in homelab["mac-mini-m4-pro"] for dest, content in o.uploads.items()
    }

    def present(arguments: str) -> dict[str, Any]:
        path = re.search(r'"path": "([^"]+)"', arguments).group(1)  # type: ignore[union-attr]
        if path in written:
            return {"user": "root", "group": "wheel", "mode": 644, "size": len(written[path])}
        raise KeyError(path)

    def sha1(arguments: str) -> str:
        path = re.search(r'"path": "([^"]+)"', arguments).group(1)  # type: ignore[union-attr]
        return hashlib.sha1(written[path].encode()).hexdigest()

    spec = validate_file(ROOT / HOMELAB)[mac[0]]
    _, modelfiles = models_and_aliases(placement_runs(spec, OLLAMA_MACOS))

    def modelfile(arguments: str) -> list[str] | None:
        """Each alias's Modelfile as the last run wrote it (the planner's parameters)."""
        path = re.search(r'"path": "([^"]+)"', arguments).group(1)  # type: ignore[union-attr]
        alias = path.rsplit("/", 1)[-1].removesuffix(".Modelfile")
        return modelfiles[alias].splitlines() if alias in modelfiles else None

    models = {"qwen2.5:14b", "llama3.2:3b", "phi3.5:3.8b", "nomic-embed-text:latest"}
    models |= {"llama3.2-vision:11b"}
    aliases = {f"{a}:latest" for a in modelfiles}
    again = planned(
        HOMELAB,
        ["deploys/common.py", "deploys/inference.py"],
        mac,
        **{
            "pyinfra.facts.files.File": present,
            "pyinfra.facts.files.Sha1File": sha1,
            "pyinfra.facts.brew.BrewPackages": lambda _: {
                "ollama": {"0.12.10"},
                "node_exporter": {"1.9.1"},
            },
            "pyinfra.facts.launchd.LaunchdStatus": lambda _: {
                "com.gpufleet.ollama": True,
                "com.gpufleet.node-exporter": True,
            },
            "gpufleet.facts.ollama.OllamaModels": lambda _: models | aliases,
            "pyinfra.facts.files.FileContents": modelfile,
        },
    )
    changing = [o.name for o in again["mac-mini-m4-pro"] if o.changes]
    assert changing == []


def test_a_fact_the_profile_cannot_answer_is_an_error_naming_it():
    profile = FactProfile("empty", {})
    with pytest.raises(MissingFact, match=r"'empty' has no value for fact pyinfra.facts.x.Y"):
        profile.answer("pyinfra.facts.x.Y", "{}")
    profile = FactProfile.load("nvidia-fresh")
    kernels = profile.answer("gpufleet.facts.system.Kernels", "{}")
    assert kernels == {
        "running": "6.1.0-28-amd64",
        "installed": ["6.1.0-28-amd64"],
        "with_headers": [],
        "with_nvidia_module": [],
    }  # parsed from its recorded output by the fact's own parser


def test_hosts_join_the_tailnet_from_tailscales_signed_repository_with_a_key_file(homelab):
    pi5l = homelab["pi5l"]
    keyring = "/usr/share/keyrings/tailscale-archive-keyring.gpg"
    (key,) = [o for o in pi5l if o.name.startswith("Tailscale | Tailscale's apt signing key")]
    fetch = " ".join(key.commands)
    assert "https://pkgs.tailscale.com/stable/debian/bookworm.noarmor.gpg" in fetch
    assert f" {keyring}" in fetch
    # Moved into place only after gpg read Tailscale's fingerprint from it.
    assert '"$got" = 2596A99EAAB33821893C0A79458CA832957F5868 ]' in fetch
    assert fetch.index("gpg --batch --show-keys") < fetch.index(f"mv {keyring}.part {keyring}")
    sources = uploads(pi5l)["/etc/apt/sources.list.d/tailscale.sources"]
    assert f"Signed-By: {keyring}" in sources and "Suites: bookworm" in sources
    (join,) = [o for o in pi5l if o.name == "Tailscale | Join the tailnet as pi5l"]
    assert join.commands == [
        "tailscale up --auth-key=file:/run/gpufleet-tailscale.authkey --hostname=pi5l; "
        "joined=$?; rm -f /run/gpufleet-tailscale.authkey; exit $joined"
    ]
    # The key is written by a function at run time: no plan holds it, no file keeps it.
    (auth,) = [o for o in pi5l if o.name.startswith("Tailscale | Auth key")]
    assert auth.commands == ["at run time: _install()"] and auth.uploads == {}
    assert "tailscale serve --bg --https=443 http://127.0.0.1:4000" in commands(pi5l)
    assert not any("tailscale serve" in c for c in commands(homelab["pi5-01"]))
    assert any("--hostname=akshat-pc" in c for c in commands(homelab["akshat-pc"]))
    # The Mac runs Tailscale's app: nothing is installed there.
    assert not any("tailscale" in c for c in commands(homelab["mac-mini-m4-pro"]))


def test_a_logged_in_node_is_not_logged_in_again(homelab):
    running = parse_status(
        (FIXTURES / "tailscale" / "status-running.json").read_text().splitlines()
    )
    served = served_proxies((FIXTURES / "tailscale" / "serve-status.json").read_text().splitlines())
    again = planned(
        HOMELAB,
        ["deploys/common.py"],
        ["pi5l"],
        **{
            "gpufleet.facts.tailscale.TailscaleStatus": lambda _: running,
            "gpufleet.facts.tailscale.TailscaleServe": lambda _: served,
        },
    )
    names = [o.name for o in again["pi5l"] if o.changes]
    assert not [n for n in names if "Join the tailnet" in n or "Auth key" in n or "Serve" in n]
    renamed = planned(
        HOMELAB,
        ["deploys/common.py"],
        ["pi5l"],
        **{
            "gpufleet.facts.tailscale.TailscaleStatus": lambda _: {**running, "hostname": "pi"},
            "gpufleet.facts.tailscale.TailscaleServe": lambda _: served,
        },
    )
    assert "tailscale set --hostname=pi5l" in commands(renamed["pi5l"])
    assert not any("tailscale up" in c for c in commands(renamed["pi5l"]))


def test_tailscale_facts_parse_what_tailscale_prints():
    status = parse_status((FIXTURES / "tailscale" / "status-running.json").read_text().splitlines())
    assert status == {
        "backend_state": "Running",
        "hostname": "pi5l",
        "dns_name": "pi5l.tailf49db2.ts.net",
        "addresses": ["100.77.119.64", "fd7a:115c:a1e0::3a01:7740"],
        "tags": ["tag:ai"],
    }
    assert parse_status([]) is None  # tailscaled not answering
    served = served_proxies((FIXTURES / "tailscale" / "serve-status.json").read_text().splitlines())
    assert served == {"443/ -> http://127.0.0.1:4000"}
    assert served_proxies(["No serve config"]) == set()


def test_pi5l_gets_grafana_with_its_datasource_and_the_four_dashboards(homelab):
    import json

    import yaml

    from gpufleet.dashboards import DATASOURCE_UID

    pi5l = homelab["pi5l"]
    (key,) = [o for o in pi5l if o.name.startswith("Grafana | Grafana's apt signing key")]
    assert "https://apt.grafana.com/gpg.key" in " ".join(key.commands)
    written = uploads(pi5l)
    assert (
        "Signed-By: /etc/apt/keyrings/grafana.asc"
        in written["/etc/apt/sources.list.d/grafana.sources"]
    )
    source = yaml.safe_load(written["/etc/grafana/provisioning/datasources/gpufleet.yaml"])
    (prometheus,) = source["datasources"]
    assert prometheus["url"] == "http://127.0.0.1:9090" and prometheus["uid"] == DATASOURCE_UID
    provider = yaml.safe_load(written["/etc/grafana/provisioning/dashboards/gpufleet.yaml"])
    folder = provider["providers"][0]["options"]["path"]
    boards = {
        dest: json.loads(content)
        for dest, content in written.items()
        if dest.startswith(folder) and dest.endswith(".json")
    }
    assert sorted(b["title"] for b in boards.values()) == [
        "gpufleet / GPUs",
        "gpufleet / Hosts",
        "gpufleet / Inference",
        "gpufleet / Router",
    ]
    for board in boards.values():
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == DATASOURCE_UID
            assert panel["targets"][0]["expr"]
    # The admin password is written by a function at run time, from Vault.
    (secret,) = [
        o for o in pi5l if o.name == "Grafana | Grafana admin password (from the secret store)"
    ]
    assert secret.commands == ["at run time: _install()"]
    drop_in = written["/etc/systemd/system/grafana-server.service.d/gpufleet.conf"]
    assert "EnvironmentFile=/etc/grafana/gpufleet.env" in drop_in
    assert "GF_SERVER_HTTP_PORT=3000" in drop_in
    # Only the monitoring host gets Grafana.
    assert not any("grafana" in c for c in commands(homelab["pi5-01"]))


def test_pi5l_gets_alertmanager_configured_before_it_starts_and_before_prometheus(homelab):
    pi5l = homelab["pi5l"]
    names = [o.name for o in pi5l]
    step = {o.name.removeprefix("Alertmanager | "): o for o in pi5l if o.name.startswith("Alert")}
    flags, install = "Alertmanager flags (listen address, no cluster)", "Alertmanager"
    config, ready = "Alertmanager config (amtool check-config)", "Alertmanager is ready"
    assert list(step)[:3] == [flags, install, config]  # flags first: the package keeps them
    assert any(
        "install --no-install-recommends prometheus-alertmanager" in c
        for c in commands([step[install]])
    )
    # The webhook URL comes from Vault when the file is written: never part of the plan.
    assert step[config].commands == ["at run time: _install()"]
    assert (
        step[ready]
        .commands[-1]
        .endswith("--base http://127.0.0.1:9093 --health /-/ready --timeout 120")
    )
    assert names.index(f"Alertmanager | {ready}") < names.index(
        "Prometheus | Prometheus config (promtool check config)"
    )
    assert not any("alertmanager" in c for c in commands(homelab["pi5-01"]))


def test_a_monitoring_host_without_webhooks_runs_no_alertmanager():
    plan_ = planned("inventory/examples/three_node.py", ["deploys/monitoring.py"])
    operations = [o for ops in plan_.values() for o in ops if o.name.startswith("Alertmanager")]
    assert [o.name for o in operations] == ["Alertmanager | No Alertmanager without webhooks"]
    assert not operations[0].changes and not operations[0].commands


EXAMPLE = "inventory/examples/proxmox_desktop.py"


def test_the_jetson_gets_its_container_runtime_and_tegrastats_not_a_desktop_driver():
    import json

    plan_ = planned(EXAMPLE, ["deploys/common.py", "deploys/edge.py"], ["jetson-orin-nano"])
    jetson = plan_["jetson-orin-nano"]
    everything = " ".join(commands(jetson))
    for desktop_step in ("cuda-keyring", "dkms", "nvidia-driver", "cuda-drivers", "nouveau"):
        assert desktop_step not in everything
    assert any("install" in c and "nvidia-container" in c for c in commands(jetson))
    written = uploads(jetson)
    daemon = json.loads(written["/etc/docker/daemon.json.gpufleet-new"])
    assert daemon["default-runtime"] == "nvidia" and "nvidia" in daemon["runtimes"]
    unit = written["/etc/systemd/system/gpufleet-tegrastats.service"]
    assert (
        "ExecStart=/usr/bin/python3 /usr/local/lib/gpufleet/tegrastats.py "
        "--out /var/lib/prometheus/node-exporter/gpufleet_tegra.prom" in unit
    )
    node_exporter = written["/etc/default/prometheus-node-exporter"]
    assert "--collector.textfile.directory=/var/lib/prometheus/node-exporter" in node_exporter


def test_a_host_said_to_be_a_jetson_that_is_not_stops_before_any_change():
    with pytest.raises(Exception, match=r"/etc/nv_tegra_release is missing: this is not Jetson"):
        planned(
            EXAMPLE,
            ["deploys/edge.py"],
            ["jetson-orin-nano"],
            **{"gpufleet.facts.jetson.JetsonRelease": lambda _: None},
        )


def test_triton_serves_a_repository_laid_out_from_the_inventory():
    on_host = {
        "/srv/models/bge-small-en-v1.5/model.onnx",
        "/srv/models/Llama-3.2-3B-Instruct-Q4_K_M.gguf",
    }

    def present(arguments: str) -> dict[str, Any]:
        path = re.search(r'"path": "([^"]+)"', arguments).group(1)  # type: ignore[union-attr]
        if path in on_host:
            return {"user": "root", "group": "root", "mode": 644, "size": 1}
        raise KeyError(path)

    desktop = planned(
        EXAMPLE,
        ["deploys/inference.py"],
        ["schlimers-server"],
        **{"pyinfra.facts.files.File": present},
    )["schlimers-server"]
    written = uploads(desktop)
    config = written["/srv/triton/models/bge-small-en-v1.5/config.pbtxt"]
    assert 'name: "bge-small-en-v1.5"' in config and 'backend: "onnxruntime"' in config
    assert "max_batch_size: 32" in config and "kind: KIND_GPU" in config
    assert (
        "cp -p /srv/models/bge-small-en-v1.5/model.onnx "
        "/srv/triton/models/bge-small-en-v1.5/1/model.onnx" in commands(desktop)
    )
    # The example names no image pinned by digest: the repository is laid out, no server is
    # installed and nothing is pulled by a tag (test_engine_secrets plans one with an image).
    assert "/etc/systemd/system/triton.service" not in written
    assert not any("tritonserver" in c for c in commands(desktop))


def test_triton_metrics_are_scraped_and_its_readiness_probed():
    from gpufleet.inventory import validate_file
    from gpufleet.monitoring import probes, scrape_jobs

    specs = validate_file(EXAMPLE)
    assert [t["targets"] for t in scrape_jobs(specs)["triton"]] == [["schlimers-server:8012"]]
    urls = [p["targets"][0] for p in probes(specs) if p["labels"]["service"] == "triton"]
    assert urls == ["http://schlimers-server:8010/v2/health/ready"]


def test_a_preview_opens_no_network_connection(monkeypatch):
    # homelab.py's Vault is a real machine: not one request may be even started towards it.
    import socket

    import requests

    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args[1:] or kwargs)
        raise OSError("a preview must not connect anywhere")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(requests, "request", refuse)
    planned(HOMELAB, list(EVERY_DEPLOY))
    planned(EXAMPLE, ["deploys/vault.py", "deploys/router.py", "deploys/gateway.py"])
    assert attempts == []


def test_every_linux_model_host_installs_ollama_and_pulls_each_placement_by_its_tag(homelab):
    """Seed 004: "curl -fsSL https://ollama.ai/install.sh | sh" then "ollama pull" on every
    model host; here the pinned release, checked against the list its release publishes."""
    specs = validate_file(HOMELAB)
    linux_model_hosts = [n for n, s in specs.items() if s.models and s.os != "macos"]
    assert len(linux_model_hosts) == 10
    for name in linux_model_hosts:
        operations = homelab[name]
        download = next(o for o in operations if "Download Ollama" in o.name)
        arch = "arm64" if specs[name].arch == "aarch64" else "amd64"
        version = specs[name].ollama.version
        (fetch,) = download.commands
        assert f"/v{version}/ollama-linux-{arch}.tar.zst" in fetch
        assert f"'{RELEASE_SHA256[(version, arch)]}  '" in fetch and "sha256sum -c" in fetch
        (unpack,) = [
            o for o in operations if o.name.endswith(f"Unpack Ollama {version} into /usr/local")
        ]
        archive = f"/var/cache/gpufleet/ollama-{version}-{arch}.tar.zst"
        assert unpack.commands == [f"zstd -dc {archive} | tar -xf - -C /usr/local"]
        pulls = [c for c in commands(operations) if c.startswith("ollama pull ")]
        tags = list(dict.fromkeys(p.model for p in specs[name].models))
        assert pulls == [f"ollama pull {tag}" for tag in tags], name
        assert not any("no Ollama binary" in o.name for o in operations)


def test_another_ollama_release_is_checked_against_the_list_it_publishes():
    spec = validate_file(HOMELAB)["ms01"]
    other = spec.model_copy(update={"ollama": spec.ollama.model_copy(update={"version": "0.34.1"})})
    from gpufleet.engines.ollama import release_sha256

    assert release_sha256(spec.ollama, "amd64") == RELEASE_SHA256[(RELEASE, "amd64")]
    assert release_sha256(other.ollama, "amd64") is None  # read from v0.34.1's sha256sum.txt
    given = other.ollama.model_copy(update={"sha256": "ab" * 32})
    assert release_sha256(given, "arm64") == "ab" * 32


def installs(operations: list[PlannedOperation]) -> list[str]:
    """Packages named by the apt-get install commands of a plan."""
    return [
        package
        for command in commands(operations)
        if "apt-get" in command and " install " in command
        for package in command.split()
        if not package.startswith("-") and "=" not in package
    ]


def test_a_proxmox_host_gets_the_headers_of_its_running_and_every_installed_pve_kernel():
    plan_ = planned(EXAMPLE, ["deploys/common.py", "deploys/proxmox_host.py"], ["xps15"])
    packages = installs(plan_["xps15"])
    # The profile's host runs 6.8.12-5-pve with 6.8.12-6 installed beside it (and two older).
    assert "proxmox-default-headers" in packages
    for release in ("6.8.12-5-pve", "6.8.12-6-pve", "6.8.12-1-pve", "6.8.4-2-pve"):
        assert f"proxmox-headers-{release}" in packages
    assert not [p for p in packages if p.startswith("linux-headers")]
    # Debian's driver (GTX 1650: proprietary modules) from contrib/non-free on PVE.
    assert "nvidia-kernel-dkms" in packages and "nvidia-open-kernel-dkms" not in packages
    debian = uploads(plan_["xps15"])["/etc/apt/sources.list.d/debian.sources"]
    assert "Components: main contrib non-free non-free-firmware" in debian


def test_a_proxmox_host_uses_pve_no_subscription_not_the_enterprise_repository():
    plan_ = planned(EXAMPLE, ["deploys/common.py"], ["xps15"])["xps15"]
    source = uploads(plan_)["/etc/apt/sources.list.d/gpufleet-pve.sources"]
    assert "URIs: http://download.proxmox.com/debian/pve" in source
    assert "Suites: bookworm" in source and "Components: pve-no-subscription" in source
    assert "Signed-By: /etc/apt/trusted.gpg.d/proxmox-release-bookworm.gpg" in source
    disabled = [c for c in commands(plan_) if c.startswith("sed")]
    assert len(disabled) == 2
    assert all("s/^(deb .*enterprise\\.proxmox\\.com.*)$/# \\1/" in c for c in disabled)
    # The Debian-only hosts get no Proxmox repository.
    desktop = planned(EXAMPLE, ["deploys/common.py"], ["schlimers-server"])["schlimers-server"]
    assert "/etc/apt/sources.list.d/gpufleet-pve.sources" not in uploads(desktop)


def test_the_ubuntu_blackwell_desktop_gets_the_open_modules_and_its_hwe_headers():
    plan_ = planned(EXAMPLE, ["deploys/gpu_node.py"], ["schlimers-server"])
    packages = installs(plan_["schlimers-server"])
    assert "nvidia-headless-575-server-open" in packages
    assert not [p for p in packages if p.startswith("nvidia-headless") and "open" not in p]
    # The 6.11 HWE kernel of Ubuntu 24.04: its headers and the HWE meta, not 6.8's.
    assert "linux-headers-6.11.0-26-generic" in packages
    assert "linux-headers-generic-hwe-24.04" in packages
    assert "linux-headers-generic" not in packages


BLACKWELL_LLAMACPP = """
from gpufleet.inventory import check_inventory

gpu_nodes = [("rtx-box", {{"ssh_hostname": "10.200.0.250", "os": "ubuntu", "hardware": {{
    "cores": 12, "ram_gb": 64, "accelerators": [{{"kind": "nvidia", "model": "RTX 5070 Ti"}}]}},
    "nvidia_driver": {{"source": "ubuntu", "version": "575.64.05"}},
    "llamacpp": {{"cuda_toolkit": {toolkit!r}}},
    "models": [{{"model": "llama3.2:3b", "engine": "llama.cpp", "alias": "S-LOC-FRE-llama3.2-3b",
                "source": "/srv/models/Llama-3.2-3B-Instruct-Q4_K_M.gguf", "context": 8192}}]}})]
check_inventory(__file__)
"""


def test_llamacpp_on_blackwell_builds_with_nvidias_toolkit_for_sm_120(tmp_path):
    from gpufleet.inventory import InventoryError

    refused = tmp_path / "refused.py"
    refused.write_text(BLACKWELL_LLAMACPP.format(toolkit="distribution"))
    with pytest.raises(InventoryError, match=r"llamacpp.cuda_toolkit: nvidia-cuda-toolkit"):
        validate_file(refused)

    inventory = tmp_path / "blackwell.py"
    inventory.write_text(BLACKWELL_LLAMACPP.format(toolkit="cuda-toolkit-12-8"))
    gguf = "/srv/models/Llama-3.2-3B-Instruct-Q4_K_M.gguf"

    def present(arguments: str) -> dict[str, Any]:
        if f'"path": "{gguf}"' in arguments:
            return {"user": "root", "group": "root", "mode": 644, "size": 1}
        raise KeyError(arguments)

    box = planned(
        str(inventory), ["deploys/inference.py"], None, **{"pyinfra.facts.files.File": present}
    )["rtx-box"]
    assert "cuda-toolkit-12-8" in installs(box) and "nvidia-cuda-toolkit" not in installs(box)
    assert any("3bf863cc.pub" in c for c in commands(box))
    (configure,) = [c for c in commands(box) if "cmake -S" in c]
    assert "-DGGML_CUDA=ON" in configure
    assert "-DCMAKE_CUDA_COMPILER=/usr/local/cuda-12.8/bin/nvcc" in configure
    assert "-DCMAKE_CUDA_ARCHITECTURES=120" in configure


def test_ollamas_drop_in_holds_the_planned_memory_limit(homelab):
    # old-office-pc: 32 GB; its two largest loaded models need more than 30 GB with
    # headroom, so the limit is its RAM less the 2 GB system reserve: 30 GB = 28611 MiB.
    drop_in = uploads(homelab["old-office-pc"])[
        "/etc/systemd/system/ollama.service.d/override.conf"
    ]
    assert "[Service]\nMemoryMax=28611M\n" in drop_in


def test_every_download_the_fleet_plans_is_checked_before_it_is_used(homelab):
    """Each file fetched from the network is checked against a pinned sha256 (or the checksum
    list its release publishes) or, for an apt key, a pinned fingerprint, before it is moved
    where anything uses it; no plan pipes a download into a shell."""
    fetches = [
        c
        for ops in homelab.values()
        for c in commands(ops)
        if re.search(r"curl -fsSL[^|]* -o |wget -q -O (?!-)", c)
    ]
    assert len(fetches) > 20
    for command in fetches:
        checked = "sha256sum -c" in command or "gpg --batch --show-keys" in command
        assert checked, command
        assert not re.search(r"(curl|wget)[^|;&]*\| *(sudo )?(ba)?sh\b", command), command


def test_an_ai_max_box_gets_its_vulkan_driver_and_keeps_the_default_gtt(homelab):
    """Seed 004's AI Max boxes are cpu_nodes: the GPU node deploy still gives their Radeon
    8060S Mesa's Vulkan driver. With the kernel's default GTT, which the plan counts on,
    nothing is written and no reboot is asked for."""
    gtr9 = {o.name: o for o in homelab["gtr9-pro"]}
    driver = gtr9["AMD GPU | Mesa's Vulkan drivers (RADV)"]
    assert driver.changes and "mesa-vulkan-drivers" in driver.commands[-1]
    assert not gtr9["AMD GPU | GTT size (ttm.pages_limit)"].changes
    assert not any("reboot" in name.lower() for name in gtr9)
    assert not any(name.startswith("AMD GPU") for name in {o.name for o in homelab["ser9"]})


def test_a_larger_gtt_is_written_for_the_driver_and_its_reboot_reported(tmp_path):
    inventory = tmp_path / "inventory/homelab.py"
    inventory.parent.mkdir()
    text = (ROOT / HOMELAB).read_text()
    gtr9 = '        "hardware": _AI_MAX,\n'
    assert gtr9 in text
    inventory.write_text(text.replace(gtr9, gtr9 + '        "amdgpu": {"gtt_gb": 96},\n', 1))
    shutil.copytree(ROOT / "group_data", tmp_path / "group_data")
    operations = planned(str(inventory), ["deploys/gpu_node.py"], ["gtr9-pro"])["gtr9-pro"]
    by_name = {o.name: o for o in operations}
    written = by_name["AMD GPU | GTT size (ttm.pages_limit)"]
    assert "options ttm pages_limit=25165824" in written.commands[1]
    assert written.commands[-1] == "update-initramfs -u"
    assert by_name["AMD GPU | Report the reboot the GTT size needs"].changes
