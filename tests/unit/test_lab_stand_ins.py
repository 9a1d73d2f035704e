"""What the lab's stand-ins have before gpufleet: the Proxmox stand-in's container configs."""

import re
from pathlib import Path

from gpufleet import lab
from gpufleet.configs import merge_lxc_conf, passthrough_lines

ROOT = Path(__file__).parents[2]
FIXTURES = ROOT / "tests/fixtures/proxmox"
KEY = re.compile(r"^(?P<key>[a-z0-9.]+): \S")


def test_proxmox_stand_in_gets_a_config_per_listed_container():
    configs = lab.container_configs(ROOT / "inventory/lab.py")
    assert list(configs) == ["lab-pve-1"]
    assert list(configs["lab-pve-1"]) == ["/etc/pve/lxc/107.conf"]
    conf = configs["lab-pve-1"]["/etc/pve/lxc/107.conf"]
    # The inventory's container 107 (lab-lxc-1) gives its name and size.
    assert "hostname: lab-lxc-1\n" in conf
    assert "cores: 2\n" in conf and "memory: 4096\n" in conf
    assert "rootfs: local-lvm:vm-107-disk-0,size=8G\n" in conf


def test_container_config_is_shaped_like_real_ones():
    conf = lab.container_configs(ROOT / "inventory/lab.py")["lab-pve-1"]["/etc/pve/lxc/107.conf"]
    assert all(KEY.match(line) for line in conf.splitlines()), conf
    keys = [line.split(":", 1)[0] for line in conf.splitlines()]
    assert keys == sorted(keys), "Proxmox writes a new container's keys sorted"
    real = {
        match["key"]
        for fixture in FIXTURES.glob("*.conf")
        for line in fixture.read_text().splitlines()
        if (match := KEY.match(line))
    }
    assert set(keys) <= real, set(keys) - real
    assert "nvidia" not in conf and "lxc." not in conf, "no GPU until gpufleet passes one"


def test_passthrough_applies_to_it_as_to_a_users_config():
    conf = lab.container_configs(ROOT / "inventory/lab.py")["lab-pve-1"]["/etc/pve/lxc/107.conf"]
    majors = {"nvidia-frontend": 195, "nvidia-uvm": 509}
    lines = passthrough_lines([0], majors, True)
    merged, notes = merge_lxc_conf(conf, lines, majors)
    assert merged == conf + "\n".join(lines) + "\n"
    assert notes == []


def test_hosts_outside_proxmox_hosts_get_no_container_configs():
    assert lab.container_configs(ROOT / "inventory/lab_pi.py") == {}
