"""Absent means removed, on the lab: a llama.cpp placement dropped from the inventory is
taken off its host on the next run (unit stopped, disabled and gone, downloaded model
deleted), the dry run shows it first, and the run after changes nothing. Put back, the
host serves it again. Skipped in the full suite for now (see the marker)."""

from __future__ import annotations

import pytest

from tests.unit.test_absent_removed import without_models

from .conftest import SPECS, pyinfra, ssh

HOST = "lab-lxc-1"
INFERENCE = "deploys/inference.py"
UNIT = "/etc/systemd/system/llama-server.service"
MODELS = "/var/lib/llama.cpp/models"


def why(run) -> str:
    """The run's last output and, from the host, its allow-list unit's state and log (its
    reload is the step seen failing)."""
    address = str(SPECS[HOST].lan_address)
    unit = ssh(
        address,
        "systemctl status gpufleet-firewall --no-pager 2>&1 | head -20; "
        "journalctl -u gpufleet-firewall -n 30 --no-pager 2>&1 || true",
    )
    return run.stderr[-3000:] + "\n--- gpufleet-firewall on the host ---\n" + unit


def state(address: str) -> str:
    return ssh(
        address,
        f"systemctl is-active llama-server || true; test -e {UNIT} && echo unit || echo no-unit; "
        f"ls {MODELS} 2>/dev/null | grep -c gguf || true",
    )


@pytest.fixture
def dropped_then_restored(lab_session, tmp_path):
    yield without_models(tmp_path, HOST)
    back = pyinfra(INFERENCE, "-y", "--limit", HOST, label="put the placement back")
    assert back.returncode == 0, why(back)
    assert state(str(SPECS[HOST].lan_address)).split() == ["active", "unit", "1"]


def test_a_dropped_placement_is_removed_from_its_host(dropped_then_restored):
    address = str(SPECS[HOST].lan_address)
    assert state(address).split() == ["active", "unit", "1"]

    dry = pyinfra(INFERENCE, "--dry", "--limit", HOST, inventory=dropped_then_restored)
    assert dry.returncode == 0, why(dry)
    would_change = {op["name"] for op in dry.report["plan"] if HOST in op["hosts_with_change"]}
    assert {
        "llama.cpp | Remove the llama.cpp units the inventory dropped",
        "llama.cpp | Remove the llama.cpp files the inventory dropped",
    } <= would_change
    assert state(address).split() == ["active", "unit", "1"]  # the dry run changed nothing

    first = pyinfra(INFERENCE, "-y", "--limit", HOST, inventory=dropped_then_restored)
    assert first.returncode == 0, why(first)
    changed = {name for name, _ in first.changed}
    assert "llama.cpp | Remove the llama.cpp units the inventory dropped" in changed
    assert state(address).split() == ["inactive", "no-unit", "0"]
    record = ssh(address, "cat /var/lib/gpufleet/record/llama.cpp.units")
    assert record == "# units gpufleet put here for llama.cpp\n"  # a record of nothing

    second = pyinfra(INFERENCE, "-y", "--limit", HOST, inventory=dropped_then_restored)
    assert second.returncode == 0, why(second)
    assert second.changed == []
