"""The lab boots its Proxmox stand-in with what a Proxmox host has before gpufleet: a config
for each container the inventory lists, as ``pct create`` left it."""

import pytest

from gpufleet import lab

from .conftest import LAB_INVENTORY, ssh

CONF = "/etc/pve/lxc/107.conf"


def test_proxmox_stand_in_boots_with_its_containers_config(lab_session):
    at_boot = lab_session.pve_files_at_boot["lab-pve-1"]
    wanted = lab.container_configs(LAB_INVENTORY)["lab-pve-1"][CONF]
    # As Proxmox's cluster file system shows it: root:www-data, 0640.
    assert at_boot == f"== {CONF} root:www-data 640\n{wanted}"
    assert "hostname: lab-lxc-1\n" in at_boot


@pytest.mark.parametrize("name", ["lab-gpu-1", "lab-lxc-1", "lab-infra-1"])
def test_other_hosts_boot_without_proxmox_files(lab_session, name):
    assert lab_session.pve_files_at_boot[name] == ""


def test_lab_up_again_leaves_an_existing_config_alone(lab_session):
    pve = "10.200.0.13"
    before = ssh(pve, f"cat {CONF}")
    assert "hostname: lab-lxc-1" not in before, "the user's own config is there now"
    lab.up(LAB_INVENTORY)
    assert ssh(pve, f"cat {CONF}") == before
