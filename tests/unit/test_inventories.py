"""Every shipped inventory validates; every bad inventory fails with one clear message."""

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gpufleet.inventory import InventoryError, validate_file

ROOT = Path(__file__).parents[2]
BAD_FOLDER = ROOT / "tests/fixtures/bad_inventories"
# An inventory with a group_data folder of its own lies in a folder: folder/inventory.py.
BAD = sorted([*BAD_FOLDER.glob("*.py"), *BAD_FOLDER.glob("*/inventory.py")])
BAD_IDS = [p.parent.name if p.name == "inventory.py" else p.stem for p in BAD]
SHIPPED = [
    "inventory/homelab.py",
    "inventory/lab.py",
    "inventory/lab_pi.py",
    "inventory/vagrant.py",
    "bench/inventory.py",
    "inventory/examples/proxmox_desktop.py",
    "inventory/examples/three_node.py",
]


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_inventories_validate(path):
    specs = validate_file(ROOT / path)
    assert specs
    for spec in specs.values():
        assert spec.hardware.cores >= 1


def test_homelab_is_the_whole_fleet():
    specs = validate_file(ROOT / "inventory/homelab.py")
    assert len(specs) == 23  # 10 PCs and mini PCs, the Mac mini, 12 Pis
    akshat = specs["akshat-pc"]
    assert str(akshat.lan_address) == "10.0.0.5"
    assert akshat.tailscale_name == "akshat-pc.tailf49db2.ts.net"
    assert [a.model for a in akshat.hardware.accelerators] == ["RTX 5090"]
    assert akshat.ollama.max_loaded_models == 2  # 3 cannot be loaded at once (docstring)
    assert "XL-LOC-FRE-qwen2.5-coder-32b" in {m.alias for m in akshat.models}
    assert specs["gtr9-pro"].ollama.context_length == 131072
    assert set(specs["pi5l"].groups) == {"orchestrator", "gateway", "router", "monitoring", "vault"}
    assert not specs["pi5l"].models
    # group_data/gpu_nodes.py reaches GPU nodes only.
    assert "non-free" in akshat.apt_components
    assert specs["borgcube"].apt_components == ("main",)


def expectation(path: Path) -> tuple[str, str, str]:
    """The ``_expect = (host, field, fix)`` a bad inventory declares (read, not executed)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_expect":
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path.name} declares no _expect")


@pytest.mark.parametrize("path", BAD, ids=BAD_IDS)
def test_bad_inventory_names_host_field_and_fix(path):
    expected_host, expected_field, expected_fix = expectation(path)
    with pytest.raises(InventoryError) as raised:
        validate_file(path)
    message = str(raised.value)
    assert "no host was contacted" in message
    problem = next(str(p) for p in raised.value.problems if p.host == expected_host)
    assert f"host {expected_host!r}: {expected_field}" in problem
    assert expected_fix in problem


def test_the_catalogue_of_bad_inventories():
    assert len(BAD) >= 72
    assert len(set(BAD_IDS)) == len(BAD)


def never_printed(path: Path) -> str | None:
    """The ``_never_printed`` secret value a bad inventory declares, if any."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_never_printed":
            return ast.literal_eval(node.value)
    return None


SECRET_VALUES = [p for p in BAD if never_printed(p)]


def test_two_inventories_hold_a_secret_value():
    assert {p.stem for p in SECRET_VALUES} >= {"timestamp_api_key", "literal_hf_token"}


@pytest.mark.parametrize("path", SECRET_VALUES, ids=[p.stem for p in SECRET_VALUES])
def test_a_secret_value_is_never_echoed(path):
    with pytest.raises(InventoryError) as raised:
        validate_file(path)
    value = never_printed(path)
    assert value and value not in str(raised.value)
    assert "is not a reference" in str(raised.value)


@pytest.mark.parametrize("name", ["gpu_oversubscribed", "timestamp_api_key"])
def test_pyinfra_stops_before_connecting(name):
    """The real CLI path: the inventory check runs while pyinfra loads the inventory."""
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "pyinfra"),
            "-y",
            f"tests/fixtures/bad_inventories/{name}.py",
            "deploys/gpu_node.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYINFRA_PROGRESS": "off"},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "no host was contacted" in output
    assert "Connecting to hosts" not in output
    assert "sk-1757000000" not in output


def test_cli_validate_reports_and_exits_nonzero():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpufleet.cli",
            "validate",
            "tests/fixtures/bad_inventories/port_clash.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "host 'box': services[0].port: port 9100 is already used" in result.stderr


HOMELAB = ROOT / "inventory" / "homelab.py"

# Seed 004's performance table, row by row, on the host and model each row names.
SEED_SPEEDS_MET = [
    ("gtr9-pro", "qwen2.5:72b-instruct-q4_K_M", 5),  # AI Max+ CPU, 70B Q4: 5-10
    ("ser9", "phi3.5:3.8b", 20),  # NPU, 3-14B: 20-40
    ("mac-mini-m4-pro", "qwen2.5:14b", 15),  # M4 Pro, 3-14B: 15-25
    ("borgcube", "qwen2.5:7b", 8),  # Intel CPU, 7-14B: 8-12
]
SEED_SPEEDS_REFUSED = [
    ("akshat-pc", "qwen2.5:72b", 20),  # RTX 5090, 70B+: 20-30
    ("akshat-pc", "llama3.2-vision:90b", 20),
    ("akshat-pc", "deepseek-coder-v2:236b", 20),
    ("old-office-pc", "qwen2.5-coder:32b-instruct-q4_K_M", 10),  # RTX 2080S, 30B Q4: 10-15
    ("ms01", "qwen2.5:14b", 8),  # Intel CPU, 7-14B: 8-12
]


def _plan_with_claim(host: str, tag: str, tok_s: float) -> list[tuple[str, str]]:
    from gpufleet.catalogue import load_catalogue
    from gpufleet.planner import plan_host

    spec = validate_file(HOMELAB)[host]
    models = [
        m.model_copy(update={"claimed_tok_s": tok_s}) if m.model == tag else m for m in spec.models
    ]
    assert any(m.model == tag for m in models), f"{host} has no {tag}"
    return plan_host(spec.model_copy(update={"models": models}), load_catalogue()).problems


@pytest.mark.parametrize(("host", "tag", "tok_s"), SEED_SPEEDS_MET)
def test_the_seed_speeds_the_hardware_reaches_are_claimed_and_accepted(host, tag, tok_s):
    spec = validate_file(HOMELAB)[host]
    claimed = {m.model: m.claimed_tok_s for m in spec.models}
    assert claimed[tag] == tok_s
    assert not _plan_with_claim(host, tag, tok_s)


@pytest.mark.parametrize(("host", "tag", "tok_s"), SEED_SPEEDS_REFUSED)
def test_the_seed_speeds_the_hardware_cannot_reach_are_refused(host, tag, tok_s):
    problems = _plan_with_claim(host, tag, tok_s)
    assert any(
        where.endswith(".claimed_tok_s") and "measure it" in why for where, why in problems
    ), problems


def test_every_ollama_placement_of_the_shipped_inventories_uses_a_library_tag():
    """The seed's "-q4" tags are not in Ollama's library: a pull of one fails."""
    for path in SHIPPED:
        for spec in validate_file(ROOT / path).values():
            for placement in spec.models:
                assert not re.search(r"-q\d$", placement.model), (path.name, placement.model)


def _gpufleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpufleet.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("inventory", "where", "line"),
    [
        ("syntax_error.py", "tests/fixtures/broken_inventories/syntax_error.py", 5),
        ("group_data_syntax_error/inventory.py", "group_data_syntax_error/group_data/all.py", 3),
    ],
)
def test_a_syntax_error_is_one_message_with_file_and_line(inventory, where, line):
    result = _gpufleet("validate", f"tests/fixtures/broken_inventories/{inventory}")
    assert result.returncode == 1
    assert f"{where}:{line}: Python syntax error" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_an_empty_inventory_exits_nonzero():
    result = _gpufleet("validate", "tests/fixtures/bad_inventories/empty_inventory.py")
    assert result.returncode == 1
    assert "host '-': inventory: no hosts" in result.stderr


def test_a_host_listed_by_name_in_a_second_group_is_fine():
    """lab.py lists lab-pve-1 with its data in gpu_nodes and by name in proxmox_hosts."""
    specs = validate_file(ROOT / "inventory/lab.py")
    assert {"gpu_nodes", "proxmox_hosts"} <= set(specs["lab-pve-1"].groups)


def test_one_data_object_in_two_groups_is_fine(tmp_path):
    inventory = tmp_path / "two_groups.py"
    inventory.write_text(
        "_box = ('nas', {'ssh_hostname': '10.200.0.31', 'hardware': {'cores': 4, 'ram_gb': 16}})\n"
        "cpu_nodes = [_box]\n"
        "monitoring = [_box]\n"
    )
    assert set(validate_file(inventory)["nas"].groups) >= {"cpu_nodes", "monitoring"}


def test_a_group_dict_the_host_repeats_in_full_is_fine(tmp_path):
    inventory = tmp_path / "repeats.py"
    inventory.write_text(
        "router = ([('orch', {'ssh_hostname': '10.200.0.31', "
        "'hardware': {'cores': 4, 'ram_gb': 16}, "
        "'models': [{'model': 'llama3.2:3b', 'alias': 'S-LOC-FRE-llama3.2-3b'}], "
        "'litellm': {'redis': {'enabled': True}, 'version': '1.106.12'}})], "
        "{'litellm': {'redis': {'enabled': True}}})\n"
        "vault = ['orch']\n"
    )
    assert validate_file(inventory)["orch"].litellm.redis.enabled


def test_an_ssh_password_is_never_echoed():
    with pytest.raises(InventoryError) as raised:
        validate_file(BAD_FOLDER / "ssh_password_not_a_string.py")
    assert "31415926" not in str(raised.value)


def test_pyinfra_stops_before_connecting_without_the_check_line(tmp_path):
    """An inventory without ``check_inventory(__file__)``: gpufleet's pyinfra.connectors entry
    point (pyproject.toml) makes pyinfra validate it before it connects. The entry point is
    given here as an installed package would give it, whatever this checkout's install holds."""
    dist = tmp_path / "gpufleet_checks_probe-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: gpufleet-checks-probe\nVersion: 0\n"
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    entries = project["entry-points"]["pyinfra.connectors"]
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (dist / "entry_points.txt").write_text(f"[pyinfra.connectors]\n{lines}")
    paths = [str(ROOT / "src"), str(tmp_path), os.environ.get("PYTHONPATH", "")]
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "pyinfra"),
            "-y",
            "tests/fixtures/unchecked/port_clash.py",
            "deploys/gpu_node.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYINFRA_PROGRESS": "off", "PYTHONPATH": os.pathsep.join(paths)},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "no host was contacted" in output
    assert "port 9100 is already used" in output
    assert "SSH error" not in output and "Connected" not in output


def test_a_deploy_checks_the_whole_inventory_before_its_first_operation(tmp_path):
    """Where pyinfra connected without the guard (the entry point not installed), the deploy's
    first line, host_spec(), refuses a problem between hosts before any operation."""
    from gpufleet.preview import plan

    inventory = tmp_path / "unchecked.py"
    inventory.write_text(
        "cpu_nodes = [\n"
        "    ('nas', {'ssh_hostname': '10.200.0.31', 'hardware': {'cores': 4, 'ram_gb': 16}}),\n"
        "    ('htpc', {'ssh_hostname': '10.200.0.31', 'hardware': {'cores': 4, 'ram_gb': 16}}),\n"
        "]\n"
    )
    with pytest.raises(InventoryError) as raised:
        plan(str(inventory), [str(ROOT / "deploys/common.py")], lambda *args: None)
    assert "stopped before any change" in str(raised.value)
    assert "host 'htpc': ssh_hostname: 10.200.0.31 is also nas's" in str(raised.value)


def test_an_inventory_that_raises_names_file_and_line(tmp_path):
    inventory = tmp_path / "raises.py"
    inventory.write_text("cpu_nodes = [\n    ('nas', HARDWARE),\n]\n")
    with pytest.raises(InventoryError) as raised:
        validate_file(inventory)
    assert f"{inventory}:2: the file raised NameError" in str(raised.value)


def test_a_run_validates_each_host_once(monkeypatch):
    """pyinfra builds the inventory twice (once in the file's own check) and each deploy asks
    for its host's spec and the fleet's: one validation per host serves them all."""
    import gpufleet.inventory
    from gpufleet.preview import plan, profiles_for

    monkeypatch.setenv("GPUFLEET_BENCH_HOSTS", "3")
    inventory = str(ROOT / "bench/inventory.py")
    profiles = profiles_for(inventory)
    validated: list[str] = []
    spec_for = gpufleet.inventory.spec_for

    def counted(name, groups, data):
        validated.append(name)
        return spec_for(name, groups, data)

    monkeypatch.setattr(gpufleet.inventory, "spec_for", counted)
    planned = plan(
        inventory,
        [str(ROOT / "deploys/common.py")],
        lambda host, fact, arguments: profiles[host].answer(fact, arguments),
    )
    assert sorted(planned) == ["bench-1", "bench-2", "bench-3"]
    assert sorted(validated) == sorted(planned)
