"""gpufleet verify without a host: which checks each host gets, how it is reached, the table.
Listing collects the suites but runs none, so it contacts no host."""

import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet import verify
from gpufleet.inventory import InventoryError
from gpufleet.verify import Outcome, ssh_connection, table, targets

ROOT = Path(__file__).parents[2]
GPUFLEET = str(Path(sys.executable).parent / "gpufleet")


@pytest.fixture(scope="module")
def homelab_checks() -> dict[str, set[str]]:
    code, outcomes = verify.run(targets(ROOT / "inventory/homelab.py"), list_only=True)
    assert code == 0
    checks: dict[str, set[str]] = {}
    for outcome in outcomes:
        assert outcome.result == "pass"  # listed, never run
        checks.setdefault(outcome.host, set()).add(f"{outcome.suite}: {outcome.check}")
    return checks


def test_every_host_is_checked_for_ssh_and_its_node_exporter(homelab_checks):
    assert len(homelab_checks) == 23
    for host, checks in homelab_checks.items():
        assert "baseline: reachable over ssh" in checks, host
        assert "baseline: node exporter answers with this hosts metrics" in checks, host


def test_checks_follow_groups_and_placements(homelab_checks):
    gpu = homelab_checks["akshat-pc"]
    assert "gpu_node: nvidia smi sees every declared gpu" in gpu
    assert "inference: ollama has every placed model" in gpu
    assert not any(check.startswith("platform:") for check in gpu)
    pi5l = homelab_checks["pi5l"]
    assert "platform: secret store is initialized and unsealed" in pi5l
    assert "platform: router is alive" in pi5l
    assert not any(check.startswith("gpu_node:") for check in pi5l)
    assert "platform: router database listens where the inventory says" in pi5l
    assert "platform: grafana runs and is healthy" in pi5l
    # A Pi with nothing placed gets the baseline only, Tailscale included.
    pi = homelab_checks["pi5-01"]
    assert {check.split(":")[0] for check in pi} == {"baseline"}
    assert "baseline: on the tailnet under the inventorys name" in pi


def test_the_jetson_and_triton_get_their_own_checks():
    code, outcomes = verify.run(
        targets(ROOT / "inventory/examples/proxmox_desktop.py"), list_only=True
    )
    assert code == 0
    checks: dict[str, set[str]] = {}
    for outcome in outcomes:
        checks.setdefault(outcome.host, set()).add(f"{outcome.suite}: {outcome.check}")
    jetson = checks["jetson-orin-nano"]
    assert "edge: tegrastats metrics are fresh and served" in jetson
    assert "baseline: apt sources are one deb822 file" not in jetson  # Jetson Linux keeps its
    assert "inference: triton is ready with every model" in checks["schlimers-server"]
    assert not any(c.startswith("edge:") for c in checks["schlimers-server"])


def test_a_mac_gets_no_apt_or_systemd_checks(homelab_checks):
    mac = homelab_checks["mac-mini-m4-pro"]
    assert "baseline: apt sources are one deb822 file" not in mac
    assert "baseline: node exporter listens where the inventory says" not in mac
    assert "baseline: node exporter answers with this hosts metrics" in mac
    assert "inference: ollama macos runs and answers" in mac
    assert "inference: ollama has every placed model" in mac


def test_limit_narrows_to_hosts_and_groups_and_refuses_unknown_names():
    lab = ROOT / "inventory/lab.py"
    assert [t.name for t in targets(lab, ["lab-gpu-1"])] == ["lab-gpu-1"]
    assert [t.name for t in targets(lab, ["proxmox_hosts"])] == ["lab-pve-1"]
    with pytest.raises(ValueError, match="no-such-host"):
        targets(lab, ["no-such-host"])


def test_a_bad_inventory_fails_before_any_check_is_collected():
    bad = ROOT / "tests/fixtures/bad_inventories/bad_lan_address.py"
    with pytest.raises(InventoryError):
        targets(bad)
    result = subprocess.run(
        [GPUFLEET, "verify", str(bad)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 1
    assert "lan_address" in result.stderr
    assert "verify:" not in result.stdout


def test_connection_follows_the_hosts_ssh_data():
    connection = ssh_connection(
        "gpu-box",
        {
            "ssh_hostname": "192.0.2.7",
            "ssh_user": "admin",
            "ssh_port": 2222,
            "ssh_key": "~/.ssh/fleet",
            "ssh_known_hosts_file": "/dev/null",
            "ssh_strict_host_key_checking": "no",
            "_sudo": True,
        },
    )
    assert connection["hostspec"] == "ssh://admin@192.0.2.7:2222"
    assert connection["ssh_identity_file"] == str(Path("~/.ssh/fleet").expanduser())
    assert "UserKnownHostsFile=/dev/null" in connection["ssh_extra_args"]
    assert "StrictHostKeyChecking=no" in connection["ssh_extra_args"]
    assert "BatchMode=yes" in connection["ssh_extra_args"]
    assert connection["sudo"] is True
    # Without ssh_hostname the inventory name is the address; root needs no sudo.
    plain = ssh_connection("pi5l", {"ssh_user": "root", "_sudo": True})
    assert plain["hostspec"] == "ssh://root@pi5l"
    assert "sudo" not in plain


def test_the_table_groups_by_host_and_names_each_failure():
    outcomes = [
        Outcome("a", "baseline", "reachable over ssh"),
        Outcome("a", "inference", "ollama runs", "FAIL", "ollama is not running"),
        Outcome("b", "baseline", "reachable over ssh"),
    ]
    text = table(outcomes)
    lines = text.splitlines()
    assert lines[0] == "a: 1 passed, 1 failed, 2 checks"
    assert "  FAIL  inference: ollama runs" in lines
    assert lines[lines.index("  FAIL  inference: ollama runs") + 1].strip() == (
        "ollama is not running"
    )
    assert "b: 1 passed, 0 failed, 1 checks" in lines
    assert lines[-1] == "verify: 2 hosts, failing: a"
    assert table(outcomes[2:]).splitlines()[-1] == "verify: 1 hosts, all checks passed"


def test_suites_can_be_chosen_by_name():
    chosen = targets(ROOT / "inventory/homelab.py", ["pi5l"])
    code, outcomes = verify.run(chosen, list_only=True, suites=["platform"])
    assert code == 0
    assert outcomes and {o.suite for o in outcomes} == {"platform"}
    with pytest.raises(
        ValueError, match="the suites: baseline, edge, gpu_node, inference, platform"
    ):
        verify.run(chosen, list_only=True, suites=["nginx"])
