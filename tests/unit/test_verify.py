"""gpufleet verify without a host: which checks each host gets, how it is reached, the table.
Listing collects the suites but runs none, so it contacts no host."""

import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet import verify
from gpufleet.catalogue import load_catalogue
from gpufleet.facts.gpu import parse_smi_csv
from gpufleet.facts.ollama import parse_ollama_ps
from gpufleet.inventory import InventoryError
from gpufleet.verify import (
    Outcome,
    gpus_differ,
    loaded_placements,
    loaded_report,
    ssh_connection,
    table,
    targets,
)

ROOT = Path(__file__).parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
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
    # An AI Max box (cpu_nodes) gets its GPU's checks: the Vulkan driver and the GTT size.
    ai_max = homelab_checks["gtr9-pro"]
    assert "amd_gpu: the kernel holds the planned gtt size" in ai_max
    assert not any(check.startswith("amd_gpu:") for check in gpu)
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
    # A check that does not apply to what the host runs skips: not a failure.
    skipped = [*outcomes[2:], Outcome("b", "amd_gpu", "gtt", "skip", "no TTM module loaded")]
    assert table(skipped).splitlines()[-1] == "verify: 1 hosts, all checks passed"


def test_suites_can_be_chosen_by_name():
    chosen = targets(ROOT / "inventory/homelab.py", ["pi5l"])
    code, outcomes = verify.run(chosen, list_only=True, suites=["platform"])
    assert code == 0
    assert outcomes and {o.suite for o in outcomes} == {"platform"}
    with pytest.raises(
        ValueError, match="the suites: amd_gpu, baseline, edge, gpu_node, inference, platform"
    ):
        verify.run(chosen, list_only=True, suites=["nginx"])


# --- GPU names as nvidia-smi prints them (tests/fixtures/gpu/SOURCES.md) ------------------


@pytest.mark.parametrize(
    "declared, seen",
    [
        (["H100 SXM"], [("NVIDIA H100 80GB HBM3", None)]),
        (["H100 PCIe"], [("NVIDIA H100 PCIe", None)]),
        (["H200"], [("NVIDIA H200", "0x233510DE")]),
        (["H200 NVL"], [("NVIDIA H200 NVL", None)]),
        (["RTX 5090", "RTX 4090"], [("NVIDIA GeForce RTX 4090", None), ("Renamed", "0x2B8510DE")]),
    ],
)
def test_gpu_names_match_through_the_catalogue(declared, seen):
    assert gpus_differ(declared, seen, load_catalogue()) is None


def test_a_different_or_unknown_part_is_named():
    catalogue = load_catalogue()
    # An H200 NVL (device 233b) is not the H200 SXM the inventory declares.
    assert gpus_differ(["H200"], [("NVIDIA H200 NVL", "0x233B10DE")], catalogue) == (
        "declared ['H200'], nvidia-smi shows ['H200 NVL']"
    )
    rows, _ = parse_smi_csv(
        (FIXTURES / "gpu" / "nvidia-smi-query-name-device-id-h100nvl.csv").read_text().splitlines(),
        ["name", "pci.device_id"],
    )
    seen = [(row["name"] or "", row["pci.device_id"]) for row in rows]
    assert gpus_differ(["H100 PCIe"], seen, catalogue) == (
        "declared ['H100 PCIe'], nvidia-smi shows ['NVIDIA H100 NVL (not catalogued)']"
    )
    assert "nvidia-smi shows []" in gpus_differ(["RTX 4090"], [], catalogue)


# --- what Ollama has loaded, against the plan -------------------------------------------


def loaded(name: str) -> list:
    return parse_ollama_ps((FIXTURES / "ollama" / name).read_text().splitlines())


def test_a_loaded_model_split_across_cpu_and_gpu_against_the_plan():
    split = loaded("ollama-ps-context-split.txt")  # llama4:16x17b, 48% on the GPU
    assert loaded_placements({"llama4:16x17b": "partial"}, split) == []
    assert loaded_placements({"llama4:16x17b": "gpu"}, split) == [
        "llama4:16x17b is 48% on the GPU, the plan puts it on gpu"
    ]
    whole = loaded("ollama-ps-faq-tabs.txt")  # llama3:70b, 100% GPU
    assert loaded_placements({"llama3:70b": "gpu"}, whole) == []
    assert loaded_placements({"llama3:70b": "cpu"}, whole) != []
    # Planned but not loaded, or loaded but not planned: nothing to hold against it.
    assert loaded_placements({"qwen3:8b": "gpu"}, whole) == []
    assert loaded_placements({}, split) == []


def test_the_report_line_says_what_is_loaded_where():
    assert loaded_report(loaded("ollama-ps-context-split.txt")) == (
        "loaded: llama4:16x17b 48% GPU (159 GB, context 128000)"
    )
    assert loaded_report([]) == "loaded: nothing"


def test_ollama_hosts_get_the_loaded_models_check(homelab_checks):
    check = "inference: loaded ollama models sit where the plan puts them"
    assert check in homelab_checks["akshat-pc"]
    assert check in homelab_checks["mac-mini-m4-pro"]
    assert check not in homelab_checks["pi5-01"]


def test_a_passing_check_can_report_what_it_saw():
    outcomes = [Outcome("a", "inference", "loaded", "pass", "loaded: nothing")]
    assert "        loaded: nothing" in table(outcomes).splitlines()


def test_the_model_cache_and_a_split_models_worker_get_checks_decided_with_the_fleet():
    """The lab's cache (lab-infra-1) and RPC worker (lab-gpu-1) get their checks; a host of
    neither does not, whatever its module's groups say."""
    code, outcomes = verify.run(targets(ROOT / "inventory/lab.py"), list_only=True)
    assert code == 0
    checks: dict[str, set[str]] = {}
    for outcome in outcomes:
        checks.setdefault(outcome.host, set()).add(f"{outcome.suite}: {outcome.check}")
    cache = "platform: model cache serves every file the fleet fetches"
    worker = "inference: ggml rpc server holds its layers for its serving host"
    assert {host for host, found in checks.items() if cache in found} == {"lab-infra-1"}
    assert {host for host, found in checks.items() if worker in found} == {"lab-gpu-1"}
