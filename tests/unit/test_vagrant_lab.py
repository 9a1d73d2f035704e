"""The Vagrant lab's pieces agree: the Vagrantfile's VMs are inventory/vagrant.py's hosts, on a
network of their own, and CI runs them under time-outs (scripts/vagrant-lab.sh, docs/vagrant.md).
"""

import re
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from gpufleet import lab
from gpufleet.inventory import load_inventory, validate_file

ROOT = Path(__file__).parents[2]
VAGRANTFILE = (ROOT / "Vagrantfile").read_text()
INVENTORY = ROOT / "inventory/vagrant.py"
SCRIPT = (ROOT / "scripts/vagrant-lab.sh").read_text()
VAGRANT_NETWORK = IPv4Network("10.201.0.0/24")
LONG_RUNNING = r'vagrant (up|box add) |"\$BIN/(pyinfra|gpufleet)" |bash scripts/vagrant-box\.sh '


def vagrantfile_hosts() -> dict[str, str]:
    block = re.search(r"^HOSTS = \{(.*?)^\}", VAGRANTFILE, re.M | re.S)
    assert block, "the Vagrantfile has no HOSTS = { ... } block"
    return dict(re.findall(r'"([^"]+)"\s*=>\s*"([^"]+)"', block.group(1)))


def vagrantfile_setting(name: str) -> str:
    found = re.search(rf'^\s*lv\.{name} = "([^"]+)"', VAGRANTFILE, re.M)
    assert found, f"the Vagrantfile sets no lv.{name}"
    return found.group(1)


def test_the_vagrantfiles_vms_are_the_inventorys_hosts():
    hosts = {h.name: str(h.data.get("ssh_hostname")) for h in load_inventory(INVENTORY)}
    assert vagrantfile_hosts() == hosts
    assert "gpu_nodes" in validate_file(INVENTORY)["vm-gpu-1"].groups


def test_the_vagrant_lab_has_a_network_of_its_own():
    management = IPv4Network(vagrantfile_setting("management_network_address"))
    assert not management.overlaps(lab.LAB_NETWORK)
    assert not management.overlaps(VAGRANT_NETWORK)
    assert not VAGRANT_NETWORK.overlaps(lab.LAB_NETWORK)
    for name, spec in validate_file(INVENTORY).items():
        assert spec.lan_address in VAGRANT_NETWORK, name
        # This machine is the network's first address; verify reaches services from there.
        assert spec.firewall.admin_sources == (IPv4Network(f"{VAGRANT_NETWORK[1]}/32"),), name
    assert all(IPv4Address(a) in VAGRANT_NETWORK for a in vagrantfile_hosts().values())


def test_cleanup_removes_the_networks_the_vagrantfile_names():
    named = {vagrantfile_setting("management_network_name")}
    named |= set(re.findall(r'libvirt__network_name: "([^"]+)"', VAGRANTFILE))
    listed = re.search(r"^NETWORKS=\((.*)\)$", SCRIPT, re.M)
    assert listed and set(listed.group(1).split()) == named
    # Domains and box volumes are found by the prefix the Vagrantfile gives them.
    assert vagrantfile_setting("default_prefix") == "gpufleet-"
    assert "trap cleanup EXIT" in SCRIPT


def test_every_long_step_runs_under_a_time_out():
    """vagrant up, the converges, verify and the box build each go through ``step NAME LIMIT``."""
    limits = dict(re.findall(r"^(T_[A-Z]+)=(\d+)$", SCRIPT, re.M))
    assert limits and all(int(v) > 0 for v in limits.values())
    commands = SCRIPT.replace("\\\n", " ").splitlines()  # continued lines joined
    long_running = [
        line.strip()
        for line in commands
        if re.search(LONG_RUNNING, line) and not line.lstrip().startswith("#")
    ]
    assert len(long_running) >= 5, long_running
    for line in long_running:
        used = re.match(r'step "[^"]+" "\$(T_[A-Z]+)" ', line)
        assert used and used.group(1) in limits, line


def test_ci_runs_the_vagrant_lab_after_the_readmes_two_commands():
    steps = re.findall(r"^step make ([\w-]+)$", (ROOT / ".ci/run").read_text(), re.M)
    assert steps == ["demo", "bench-smoke", "test", "vagrant-test"]
    makefile = (ROOT / "Makefile").read_text()
    assert "inventory/vagrant.py" in makefile.split("\n\n")[0]  # make demo validates it
