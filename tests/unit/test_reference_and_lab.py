"""The documented host data reference is generated; the lab refuses addresses not its own."""

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
    ]
    assert {h.veth for h in hosts} == {"gflv11", "gflv12", "gflv13", "gflv14"}
