"""testinfra: the Proxmox host stand-in and its LXC container stand-in."""

import pytest

from .conftest import BEFORE_GPUFLEET

CONF = "/etc/pve/lxc/107.conf"


@pytest.mark.group("proxmox_hosts")
def test_container_config_keeps_the_users_lines_and_gains_the_gpu(lab_host):
    before = BEFORE_GPUFLEET["lab-pve-1"][CONF].splitlines()
    after = lab_host.testinfra.file(CONF).content_string.splitlines()
    # Every line the user wrote is there, in order, byte for byte (trailing spaces too).
    assert after[: len(before)] == before
    added = after[len(before) :]
    uvm = lab_host.spec.proxmox.device_majors["nvidia-uvm"]
    nodes = ["nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"]
    assert added == [
        "lxc.cgroup2.devices.allow: c 195:* rwm",
        f"lxc.cgroup2.devices.allow: c {uvm}:* rwm",
        *(f"lxc.mount.entry: /dev/{n} dev/{n} none bind,optional,create=file" for n in nodes),
    ]


@pytest.mark.group("proxmox_hosts")
def test_uvm_major_comes_from_the_host_not_a_constant(lab_host):
    content = lab_host.testinfra.file(CONF).content_string
    assert "c 509:* rwm" in content
    for folklore in ("507", "508", "510", "511"):
        assert f"c {folklore}:" not in content


@pytest.mark.group("proxmox_hosts")
def test_devices_created_at_boot(lab_host):
    rules = lab_host.testinfra.file("/etc/udev/rules.d/70-gpufleet-nvidia-uvm.rules")
    assert 'KERNEL=="nvidia_uvm", RUN+="/usr/bin/nvidia-modprobe -c0 -u"' in rules.content_string
    assert lab_host.testinfra.file("/usr/bin/nvidia-modprobe").is_file
    modules = lab_host.testinfra.file("/etc/modules-load.d/gpufleet-nvidia.conf")
    assert modules.content_string.splitlines()[-2:] == ["nvidia", "nvidia-uvm"]


@pytest.mark.hosts("lab-lxc-1")
def test_container_gets_the_hosts_user_space_and_no_module(lab_host):
    for package in ("nvidia-smi", "libcuda1", "libnvidia-ml1"):
        installed = lab_host.testinfra.package(package)
        assert installed.is_installed and installed.version.startswith("535.261.03-"), package
    for package in ("nvidia-kernel-dkms", "nvidia-open-kernel-dkms", "dkms"):
        assert not lab_host.testinfra.package(package).is_installed, package
    assert not lab_host.testinfra.file("/lib/modules").exists
    assert not lab_host.testinfra.file("/etc/modprobe.d/gpufleet-blacklist-nouveau.conf").exists
