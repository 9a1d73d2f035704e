"""Every shipped inventory validates; every bad inventory fails with one clear message."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet.inventory import InventoryError, validate_file

ROOT = Path(__file__).parents[2]
BAD = sorted((ROOT / "tests/fixtures/bad_inventories").glob("*.py"))
SHIPPED = [
    "inventory/homelab.py",
    "inventory/lab.py",
    "inventory/lab_pi.py",
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


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_inventory_names_host_field_and_fix(path):
    expected_host, expected_field, expected_fix = expectation(path)
    with pytest.raises(InventoryError) as raised:
        validate_file(path)
    message = str(raised.value)
    assert "no host was contacted" in message
    problem = next(str(p) for p in raised.value.problems if p.host == expected_host)
    assert f"host {expected_host!r}: {expected_field}" in problem
    assert expected_fix in problem


def test_at_least_ten_bad_inventories():
    assert len(BAD) >= 10


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
