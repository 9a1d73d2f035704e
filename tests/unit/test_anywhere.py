"""An inventory anywhere, gpufleet run from anywhere: validation and preview read the same
group_data pyinfra reads (asked of pyinfra itself), the deploys come from the package, and
what every fleet needs is a default, not a file to copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet import deploys
from gpufleet.cli import main
from gpufleet.inventory import InventoryError, group_data_folders, load_inventory, validate_file
from gpufleet.models import NVIDIA_DRIVER_COMPONENTS

ROOT = Path(__file__).parents[2]
PYINFRA = str(Path(sys.executable).parent / "pyinfra")
HOST = {
    "ssh_hostname": "192.168.1.20",
    "hardware": {"cores": 8, "ram_gb": 32},
}


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """A folder to run from with its own group_data, an inventory elsewhere with another,
    and a third given with --group-data; the same keys set in several, to show the order."""
    (tmp_path / "run/group_data").mkdir(parents=True)
    (tmp_path / "run/group_data/all.py").write_text(
        'role = "from the folder pyinfra runs in"\nnode_exporter_port = 9101\n'
    )
    (tmp_path / "fleet/group_data").mkdir(parents=True)
    (tmp_path / "fleet/group_data/all.py").write_text('role = "from beside the inventory"\n')
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra/cpu_nodes.py").write_text('service_user = "extra"\n')
    (tmp_path / "fleet/inv.py").write_text(f"cpu_nodes = [('desk', {HOST!r})]\n")
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def pyinfra_reads(inventory: Path, cwd: Path, *group_data: str) -> tuple[dict, list[str]]:
    """The host data pyinfra builds for ``inventory`` run from ``cwd``, and the group_data
    folders it looked at (its debug log), without connecting."""
    options = [f"--group-data={path}" for path in group_data]
    result = subprocess.run(
        [PYINFRA, "--debug", "--json", *options, str(inventory), "debug-inventory"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYINFRA_PROGRESS": "off"},
    )
    hosts = {host["name"]: host["data"] for host in json.loads(result.stdout)}
    marker = "Checking possible group_data at: "
    looked = [line.split(marker)[1] for line in result.stderr.splitlines() if marker in line]
    return hosts, looked


@pytest.mark.parametrize("where", ["run", "fleet", "elsewhere"])
def test_gpufleet_reads_the_group_data_pyinfra_reads(layout, where, monkeypatch):
    inventory = layout / "fleet/inv.py"
    cwd = layout / where
    extra = str(layout / "extra")
    pyinfra_hosts, looked = pyinfra_reads(inventory, cwd, extra)
    monkeypatch.chdir(cwd)
    ours = load_inventory(inventory, (extra,))
    assert {host.name: host.data.dict() for host in ours} == pyinfra_hosts
    folders = group_data_folders(inventory, extra=(extra,))
    assert [str(folder) for folder in folders] == [p for p in looked if Path(p).exists()]
    # The later folder wins, as in pyinfra: beside the inventory over the folder run from.
    assert pyinfra_hosts["desk"]["role"] == "from beside the inventory"
    assert pyinfra_hosts["desk"]["service_user"] == "extra"
    assert ("node_exporter_port" in pyinfra_hosts["desk"]) == (where == "run")


def test_a_check_inside_pyinfra_reads_its_group_data_option(layout):
    """The inventory's own check runs while pyinfra loads it: it reads --group-data too, so
    data pyinfra will give the host is not reported missing (hardware only in extra/)."""
    (layout / "extra/cpu_nodes.py").write_text("hardware = {'cores': 8, 'ram_gb': 32}\n")
    (layout / "fleet/inv.py").write_text(
        "from gpufleet.inventory import check_inventory\n"
        "cpu_nodes = [('desk', {'ssh_hostname': '192.168.1.20'})]\n"
        "check_inventory(__file__)\n"
    )
    hosts, _ = pyinfra_reads(layout / "fleet/inv.py", layout / "elsewhere", str(layout / "extra"))
    assert hosts["desk"]["hardware"] == {"cores": 8, "ram_gb": 32}
    without = subprocess.run(
        [PYINFRA, str(layout / "fleet/inv.py"), "debug-inventory"],
        cwd=layout / "elsewhere",
        capture_output=True,
        text=True,
    )
    assert without.returncode != 0
    assert "host 'desk': hardware: required and missing" in without.stderr + without.stdout


def test_a_gpu_node_gets_the_driver_archive_without_group_data(layout, monkeypatch):
    own = {**HOST, "ssh_hostname": "192.168.1.22", "apt_components": ["main", "non-free"]}
    nas = {**HOST, "ssh_hostname": "192.168.1.21"}
    (layout / "fleet/inv.py").write_text(
        f"gpu_nodes = [('desk', {HOST!r}), ('own', {own!r})]\ncpu_nodes = [('nas', {nas!r})]\n"
    )
    (layout / "run/group_data/all.py").unlink()
    (layout / "fleet/group_data/all.py").unlink()
    monkeypatch.chdir(layout / "elsewhere")
    specs = validate_file(layout / "fleet/inv.py")
    assert specs["desk"].apt_components == NVIDIA_DRIVER_COMPONENTS
    assert specs["nas"].apt_components == ("main",)
    assert specs["own"].apt_components == ("main", "non-free")  # given: kept as given


def test_the_repositorys_group_data_holds_nothing_every_fleet_needs():
    """Every key of the clone's group_data is a model default: an inventory without it
    (a fleet of its own, anywhere) gets the same hosts."""
    from gpufleet.models import HostSpec

    for file in sorted((ROOT / "group_data").glob("*.py")):
        values = {}
        exec(file.read_text(), values)
        for key, value in values.items():
            if key.startswith("__"):
                continue
            default = HostSpec.model_fields[key].default
            assert tuple(value) == tuple(default) if isinstance(value, list) else value == default


def test_the_clones_deploys_are_the_thin_files_init_writes():
    shipped = {path.stem for path in (ROOT / "deploys").glob("*.py")}
    assert shipped == set(deploys.NAMES)
    for name in deploys.NAMES:
        assert (ROOT / f"deploys/{name}.py").read_text() == deploys.thin_file(name)


def test_the_package_deploys_run_from_a_folder_without_deploys(layout, monkeypatch, capsys):
    """preview from an empty folder, of an inventory elsewhere: the packaged deploys."""
    (layout / "fleet/inv.py").write_text(f"gpu_nodes = [('desk', {HOST!r})]\n")
    monkeypatch.chdir(layout / "elsewhere")
    assert main(["preview", str(layout / "fleet/inv.py"), "--summary"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("desk (debian12-amd64): ") and "would change" in out
    assert main(["validate", str(layout / "fleet/inv.py")]) == 0


def test_a_rebuild_includes_the_packaged_deploys():
    source = deploys.path("rebuild").read_text()
    assert 'local.include("deploys/' not in source
    assert 'include("inference")' in source  # named deploys/inference.py (test_rebuild)


def test_an_unknown_deploy_name_says_which_there_are():
    with pytest.raises(FileNotFoundError, match="gpu_node"):
        deploys.path("gpu-node")


def test_a_missing_inventory_is_refused_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InventoryError, match="no such inventory file"):
        validate_file("inventory.py")
