"""gpufleet init and discover: the folder init writes works as written, recorded machine
outputs become the host data and groups discovery promises, and hosts.yaml is merged, never
duplicated."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from gpufleet import onboarding
from gpufleet.catalogue import load_catalogue
from gpufleet.facts.machine import Machine, parse_machine
from gpufleet.hosts_file import read_hosts
from gpufleet.inventory import InventoryError, validate_file
from gpufleet.onboarding import discover_command, discovered, init_command

ROOT = Path(__file__).parents[2]
RECORDED = ROOT / "tests/fixtures/discover"


def report(name: str):
    return parse_machine((RECORDED / f"{name}.txt").read_text().splitlines())


def found(name: str, address: str = "192.168.1.20"):
    connection = onboarding.connection_data(address, "root", None, 22)
    return discovered(report(name), address, connection, load_catalogue())


def test_a_desktop_with_its_driver_is_a_gpu_node_named_by_pci_id():
    machine = report("desk-rtx4090")
    assert machine["cpu"] == "AMD Ryzen 9 7950X 16-Core Processor"
    assert (machine["cores"], machine["ram_gb"], machine["os_id"]) == (16, 67.1, "debian")
    desk = found("desk-rtx4090")
    assert desk.entry["hardware"]["accelerators"] == [{"kind": "nvidia", "model": "RTX 4090"}]
    assert desk.groups == ["gpu_nodes"]
    assert "os" not in desk.entry and "arch" not in desk.entry  # the defaults: debian, x86_64
    assert desk.entry["lan_address"] == "192.168.1.20"
    # The Ryzen's own 2-CU graphics is no place for a model: named, left out.
    assert len(desk.todo) == 1 and "Raphael" in desk.todo[0] and "left out" in desk.todo[0]


def test_a_fresh_host_without_a_driver_is_read_from_the_pci_bus():
    rig = found("fresh-2x3090-4060ti", "10.0.0.5")
    accelerators = rig.entry["hardware"]["accelerators"]
    assert {"kind": "nvidia", "model": "RTX 3090", "count": 2} in accelerators
    # The catalogue knows the 4060 Ti by its PCI id, whatever lspci calls it.
    assert {"kind": "nvidia", "model": "RTX 4060 Ti"} in accelerators
    assert not any("4060" in line for line in rig.todo)
    assert rig.entry["os"] == "ubuntu"
    assert rig.entry["hardware"]["cpu"] == "Intel(R) Core(TM) i9-12900K"


def test_a_card_the_catalogue_lacks_is_written_as_the_host_names_it_with_a_todo():
    rig = found("fresh-unknown-card", "10.0.0.6")
    accelerators = rig.entry["hardware"]["accelerators"]
    assert {"kind": "nvidia", "model": "RTX 3090", "count": 2} in accelerators
    assert {"kind": "nvidia", "model": "GeForce RTX 6090"} in accelerators
    assert any("GeForce RTX 6090 [PCI 2fff]" in line for line in rig.todo)
    assert any("catalogue.yaml" in line for line in rig.todo)


def test_an_apu_is_named_by_rocm_smi_and_a_mac_by_system_profiler():
    halo = found("strix-halo")
    assert halo.entry["hardware"]["accelerators"] == [{"kind": "amd_igpu", "model": "Radeon 8060S"}]
    assert halo.groups == ["cpu_nodes"] and not halo.todo
    mini = found("mac-m4pro")
    assert mini.entry["hardware"] == {
        "cpu": "Apple M4 Pro",
        "cores": 14,
        "ram_gb": 68.7,
        "accelerators": [{"kind": "apple_metal", "model": "M4 Pro"}],
    }
    assert (mini.entry["os"], mini.entry["arch"]) == ("macos", "aarch64")


def test_an_apu_lspci_names_with_its_siblings_is_not_guessed():
    """lspci lists Radeon 8050S and 8060S under one device id: without rocm-smi the part is
    not guessed (an 8050S written as an 8060S would plan the wrong bandwidth)."""
    lines = (RECORDED / "strix-halo.txt").read_text().splitlines()
    start = lines.index("### rocm-smi")
    without_rocm = [*lines[: start + 1], *lines[start + 2 :]]
    halo = discovered(
        parse_machine(without_rocm),
        "192.168.1.30",
        onboarding.connection_data("192.168.1.30", "root", None, 22),
        load_catalogue(),
    )
    assert halo.entry["hardware"]["accelerators"] == []
    assert "integrated GPU" in halo.todo[0] and "catalogue.yaml" in halo.todo[0]


def test_boards_and_proxmox_get_their_os_and_groups():
    orin = found("jetson-orin-nano-super")
    assert orin.entry["hardware"]["accelerators"] == [
        {"kind": "jetson", "model": "Jetson Orin Nano Super"}
    ]
    assert (orin.entry["os"], orin.entry["arch"], orin.groups) == (
        "jetson-l4t",
        "aarch64",
        ["edge"],
    )
    pi = found("pi5")
    assert (pi.entry["os"], pi.entry["arch"], pi.groups) == ("raspios", "aarch64", ["cpu_nodes"])
    pve = found("proxmox-gtx1650")
    assert pve.entry["os"] == "proxmox"
    assert pve.groups == ["gpu_nodes", "proxmox_hosts"]
    assert pve.entry["hardware"]["accelerators"] == [{"kind": "nvidia", "model": "GTX 1650"}]


def test_the_fact_command_is_one_shell_line_with_every_section():
    command = Machine().command()
    for section in ("uname", "lscpu", "meminfo", "pci", "nvidia-smi", "rocm-smi", "amd-sysfs"):
        assert f"### {section}" in command
    assert "mem_info_vram_total" in command and "system_profiler SPDisplaysDataType" in command
    assert command.endswith("true")  # a missing tool never fails the fact


def test_init_writes_a_folder_that_refuses_to_be_overwritten(tmp_path, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(init_command, [str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ("inventory.py", "hosts.yaml", "group_data/all.py", "catalogue.yaml"):
        assert (tmp_path / name).is_file()
    assert yaml.safe_load((tmp_path / "catalogue.yaml").read_text()) == {
        "accelerators": {},
        "models": {},
    }
    assert (tmp_path / "deploys/gpu_node.py").read_text() == (
        ROOT / "deploys/gpu_node.py"
    ).read_text()
    (tmp_path / "inventory.py").write_text("# mine\n")
    again = runner.invoke(init_command, [str(tmp_path)])
    assert again.exit_code != 0 and "inventory.py" in again.output and "--force" in again.output
    assert (tmp_path / "inventory.py").read_text() == "# mine\n"
    assert runner.invoke(init_command, [str(tmp_path), "--force"]).exit_code == 0
    assert (tmp_path / "inventory.py").read_text() == onboarding.INVENTORY

    # No hosts yet: the check says how to add one.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InventoryError, match="gpufleet discover ADDRESS"):
        validate_file("inventory.py")


def test_discover_writes_hosts_the_inventory_validates_and_updates_them(tmp_path, monkeypatch):
    runner = CliRunner()
    assert runner.invoke(init_command, [str(tmp_path)]).exit_code == 0
    machines = {"192.168.1.20": report("desk-rtx4090"), "192.168.1.21": report("pi5")}
    monkeypatch.setattr(
        onboarding, "read_machines", lambda hosts, measure: {a: machines[a] for a in hosts}
    )
    key = tmp_path / "id_ed25519"
    key.write_text("not a real key\n")
    inventory = str(tmp_path / "inventory.py")
    arguments = ["192.168.1.20", "192.168.1.21", "--inventory", inventory, "--ssh-key", str(key)]
    result = runner.invoke(discover_command, arguments)
    assert result.exit_code == 0, result.output
    assert "desk (192.168.1.20): Debian GNU/Linux 12 (bookworm), x86_64" in result.output
    assert "added in hosts.yaml, groups: gpu_nodes" in result.output
    hosts = read_hosts(tmp_path / "hosts.yaml")
    assert list(hosts) == ["desk", "pi5l"]
    assert hosts["desk"]["ssh_key"] == str(key) and hosts["desk"]["ssh_user"] == "root"

    monkeypatch.chdir(tmp_path)
    specs = validate_file("inventory.py")
    assert specs["desk"].hardware.accelerators[0].model == "RTX 4090"
    assert specs["pi5l"].os == "raspios" and specs["pi5l"].groups == ("cpu_nodes",)
    # A GPU node needs no group_data for Debian's non-free driver archive.
    assert "non-free" in specs["desk"].apt_components

    # The user gives the desk a model and moves it to a group of their own choosing; a
    # second discover (new RAM) updates the host, keeps both, and adds no second entry.
    hosts["desk"]["models"] = [{"model": "qwen2.5-coder:7b"}]
    hosts["desk"]["groups"] = ["gpu_nodes", "router"]
    (tmp_path / "hosts.yaml").write_text(yaml.safe_dump({"hosts": hosts}))
    machines["192.168.1.20"]["ram_gb"] = 134.2
    again = runner.invoke(discover_command, ["192.168.1.20", "--inventory", inventory])
    assert again.exit_code == 0, again.output
    assert "updated in hosts.yaml, groups: gpu_nodes, router" in again.output
    hosts = read_hosts(tmp_path / "hosts.yaml")
    assert list(hosts) == ["desk", "pi5l"]
    assert hosts["desk"]["hardware"]["ram_gb"] == 134.2
    assert hosts["desk"]["models"] == [{"model": "qwen2.5-coder:7b"}]


def test_discover_reports_an_unreachable_host_and_refuses_bad_arguments(tmp_path, monkeypatch):
    runner = CliRunner()
    assert runner.invoke(init_command, [str(tmp_path)]).exit_code == 0
    monkeypatch.setattr(
        onboarding,
        "read_machines",
        lambda hosts, measure: dict.fromkeys(hosts, "could not connect"),
    )
    inventory = str(tmp_path / "inventory.py")
    result = runner.invoke(discover_command, ["192.168.1.99", "--inventory", inventory])
    assert result.exit_code == 1 and "192.168.1.99: could not connect" in result.output
    assert read_hosts(tmp_path / "hosts.yaml") == {}
    bad_group = runner.invoke(discover_command, ["10.0.0.1", "--group", "gpu_node"])
    assert bad_group.exit_code == 2 and "no group 'gpu_node'" in bad_group.output
    names = runner.invoke(discover_command, ["10.0.0.1", "10.0.0.2", "--name", "a"])
    assert names.exit_code == 2 and "1 --name for 2 addresses" in names.output


def test_a_broken_hosts_file_names_the_file_and_the_host(tmp_path, monkeypatch):
    runner = CliRunner()
    assert runner.invoke(init_command, [str(tmp_path)]).exit_code == 0
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hosts.yaml").write_text("hosts:\n  desk:\n    ssh_hostname: 10.0.0.1\n")
    with pytest.raises(InventoryError, match=r"host 'desk': groups: list the host's groups"):
        validate_file("inventory.py")
    (tmp_path / "hosts.yaml").write_text("hosts: [desk\n")
    with pytest.raises(InventoryError, match=r"hosts.yaml:\d+: not valid YAML"):
        validate_file("inventory.py")


def test_the_cli_runs_init_and_discover(tmp_path, capsys):
    from gpufleet.cli import main

    assert main(["init", str(tmp_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["init", str(tmp_path)]) == 1
    assert "already there" in capsys.readouterr().err
    assert main(["discover", "--help"]) == 0
    assert "--ssh-key" in capsys.readouterr().out


def test_a_discrete_radeon_is_declared_and_an_unknown_integrated_one_left_out():
    from gpufleet.onboarding import accelerators_of

    seen = [
        {"vendor": "amd", "name": "Radeon RX 7900 XTX", "pci_device_id": "744c", "vram_mib": 24560},
        {"vendor": "amd", "name": "Radeon RX 9950 XT", "pci_device_id": "7599", "vram_mib": 32752},
        {"vendor": "amd", "name": "Radeon 760M", "pci_device_id": "15bf", "vram_mib": 512},
    ]
    accelerators, todo = accelerators_of(seen, load_catalogue())
    assert accelerators == [
        {"kind": "amd_gpu", "model": "Radeon RX 7900 XTX"},
        # Not in the catalogue: as the host names it, with its VRAM, and a line to check it.
        {"kind": "amd_gpu", "model": "Radeon RX 9950 XT", "vram_gb": 32.0},
    ]
    assert any(line.startswith("Radeon RX 9950 XT [PCI 7599]: not in") for line in todo)
    assert any(line.startswith("Radeon 760M [PCI 15bf]: an AMD integrated GPU") for line in todo)
