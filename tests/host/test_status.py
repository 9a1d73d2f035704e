"""`gpufleet status` against the running lab: lab-gpu-1's llama-server up with its model loaded,
the router listing it, and the engines the lab configures but cannot run shown as down."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from rich.console import Console

from gpufleet.status import FleetStatus, render, status_adapter, status_command

from .conftest import LAB_INVENTORY

pytestmark = pytest.mark.lab

GEMMA = "XS-LOC-FRE-gemma3-270m"


@pytest.fixture(scope="module")
def status(lab_session) -> FleetStatus:
    result = CliRunner().invoke(status_command, [str(LAB_INVENTORY), "--json"])
    assert result.exit_code in (0, 3), result.output[-2000:]  # 3: some engine is down
    assert "Traceback" not in result.stderr
    return status_adapter().validate_json(result.stdout)


def _engine(status: FleetStatus, host: str, engine: str):
    [found] = [e for h in status.hosts if h.host == host for e in h.engines if e.engine == engine]
    return found


def test_lab_gpu_1s_llama_server_is_up_with_its_model_loaded_and_routed(status):
    llama = _engine(status, "lab-gpu-1", "llama.cpp")
    assert llama.state == "up", llama.detail
    [model] = llama.loaded
    assert (model.name, model.planned) == (GEMMA, True)
    assert model.size_gb and 0.1 < model.size_gb < 1  # Gemma 3 270M's GGUF
    assert model.context == 2048  # the inventory's context, as the server runs it
    assert llama.missing == []
    assert GEMMA in llama.routed


def test_the_router_lists_the_model_with_its_backends(status):
    [router] = status.routers
    assert router.host == "lab-infra-1" and router.state == "up", router.detail
    assert GEMMA in router.models
    backends = {(d.host, d.engine) for d in router.deployments if d.model_group == GEMMA}
    assert ("lab-gpu-1", "llama.cpp") in backends
    # lab-infra-1's copy is the backup the router falls back to.
    assert ("lab-infra-1", "llama.cpp") in {
        (d.host, d.engine) for d in router.deployments if d.model_group == f"{GEMMA}.backup1"
    }


def test_engines_the_lab_cannot_run_are_down_not_a_traceback(status):
    # Ollama's binary and vLLM are configured but not installed in the lab.
    for host, engine in (("lab-gpu-1", "ollama"), ("lab-pve-1", "vllm")):
        found = _engine(status, host, engine)
        assert found.state == "down" and found.detail, (host, engine)
        assert found.loaded == []


def test_memory_in_use_comes_from_node_exporter(status):
    gpu = next(h for h in status.hosts if h.host == "lab-gpu-1")
    assert gpu.memory.source == "node exporter"
    assert gpu.memory.ram_total_gb and gpu.memory.ram_used_gb
    assert 0 < gpu.memory.ram_used_gb < gpu.memory.ram_total_gb
    assert gpu.planned_ram_gb > 0


def test_the_table_renders(status):
    console = Console(record=True, width=200, color_system=None)
    render(status, console)
    text = console.export_text()
    assert "lab-gpu-1" in text and GEMMA in text and "router lab-infra-1" in text
