"""The documented host data reference is generated; the lab refuses addresses not its own
and puts back the kernel limits it raises."""

import subprocess
from pathlib import Path

import pytest

from gpufleet import lab
from gpufleet.reference import markdown, marked_section

ROOT = Path(__file__).parents[2]


def test_documented_reference_matches_the_models():
    page = (ROOT / "docs/reference/host-data.md").read_text()
    assert marked_section(page) == markdown(), (
        "run: gpufleet reference, paste it between the markers of docs/reference/host-data.md"
    )


@pytest.mark.parametrize(
    "inventory", ["inventory/homelab.py", "inventory/examples/proxmox_desktop.py"]
)
def test_lab_refuses_real_homelab_addresses(inventory):
    with pytest.raises(lab.LabError, match=r"outside the lab network 10\.200\.0\.0/24"):
        lab.hosts_from_inventory(ROOT / inventory)


def test_lab_hosts_come_from_the_lab_inventory():
    hosts = lab.hosts_from_inventory(ROOT / "inventory/lab.py")
    assert [(h.name, str(h.address)) for h in hosts] == [
        ("lab-gpu-1", "10.200.0.11"),
        ("lab-pve-1", "10.200.0.13"),
        ("lab-lxc-1", "10.200.0.14"),
        ("lab-infra-1", "10.200.0.12"),
        ("lab-cpu-1", "10.200.0.16"),
        ("lab-amd-1", "10.200.0.17"),
    ]
    assert {h.veth for h in hosts} == {"gflv11", "gflv12", "gflv13", "gflv14", "gflv16", "gflv17"}
    # lab-amd-1 names release 13: a Debian 13 root; the others Debian 12's.
    assert {h.name: h.suite for h in hosts if h.suite != lab.SUITE} == {"lab-amd-1": "trixie"}


def test_lab_raises_inotify_floors_and_down_restores_what_it_found(tmp_path, monkeypatch):
    """32 systemd hosts need more inotify instances than Debian's 128: up raises each
    limit to its floor (never lowers one), a second up keeps the first values found, and
    down puts those back."""
    monkeypatch.setenv("GPUFLEET_LAB_DIR", str(tmp_path / "lab"))
    (tmp_path / "lab").mkdir()
    instances, watches = tmp_path / "max_user_instances", tmp_path / "max_user_watches"
    instances.write_text("128\n")
    watches.write_text("900000\n")
    monkeypatch.setattr(lab, "KERNEL_FLOORS", {str(instances): 2048, str(watches): 65536})

    lab._raise_kernel_floors()
    assert instances.read_text() == "2048\n"
    assert watches.read_text() == "900000\n"  # above its floor: left alone
    lab._raise_kernel_floors()  # a second up: 2048 is not what there was before the lab

    # down() with no lab left on the machine: every ip/nft/pgrep finds nothing.
    nothing = subprocess.CompletedProcess(args=[], returncode=1, stdout="", stderr="")
    monkeypatch.setattr(lab, "_run", lambda *args, check=True: nothing)
    monkeypatch.setattr(lab.Path, "write_text", _only_under(tmp_path, lab.Path.write_text))
    assert lab.down() == []
    assert instances.read_text() == "128\n"
    assert watches.read_text() == "900000\n"
    assert not (tmp_path / "lab/sysctl.saved").exists()


def _only_under(root, write_text):
    """Path.write_text that refuses paths outside ``root`` (this machine's /proc/sys)."""

    def guarded(path, *args, **kwargs):
        assert str(path).startswith(str(root)), f"the test wrote {path}"
        return write_text(path, *args, **kwargs)

    return guarded
