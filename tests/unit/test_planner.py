"""The capacity planner against what the fleet's write-ups measured and claimed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet.catalogue import load_catalogue
from gpufleet.inventory import validate_file
from gpufleet.models import HostSpec
from gpufleet.planner import plan_host, plan_summary, ram_bandwidth
from gpufleet.sizing import SYSTEM_RESERVE_GB

ROOT = Path(__file__).parents[2]
CATALOGUE = load_catalogue()
RTX_5070_TI_DESKTOP = {
    "cpu": "Intel Core i7-8700",
    "cores": 6,
    "ram_gb": 32,
    "accelerators": [{"kind": "nvidia", "model": "RTX 5070 Ti"}],
}


def plan(models, hardware=RTX_5070_TI_DESKTOP, **data):
    spec = HostSpec(name="h", groups=("gpu_nodes",), hardware=hardware, models=models, **data)
    return plan_host(spec, CATALOGUE)


def test_small_models_match_the_vram_measured_on_the_5070_ti():
    # Measured with Ollama on that desktop: llama3.2:3b 2.4 GB, deepseek-coder:6.7b 4.8 GB
    # of VRAM (Ollama's tags: Q4_K_M and Q4_0; its default 2048-token context then).
    result = plan([{"model": "llama3.2:3b"}, {"model": "deepseek-coder:6.7b", "quant": "Q4_0"}])
    small, coder = result.placements
    assert small.where == coder.where == "gpu"
    assert small.need_gb == pytest.approx(2.4, rel=0.15)
    assert coder.need_gb == pytest.approx(4.8, rel=0.15)


def test_the_33b_model_spills_to_ram_as_measured():
    [coder] = plan([{"model": "deepseek-coder:33b", "quant": "Q4_0"}]).placements
    assert coder.where == "partial"  # measured: part of it ran from RAM, >7 min an answer
    assert 0 < coder.gpu_layers < coder.layers
    assert coder.bound_tok_s is not None and coder.bound_tok_s < 15


def test_70b_q4_does_not_fit_the_16_gb_card_and_hybrid_is_far_below_30_tok_s():
    desktop = {**RTX_5070_TI_DESKTOP, "ram_gb": 128, "ram_type": "ddr5"}
    [vllm] = plan(
        [
            {
                "model": "llama3.3:70b",
                "engine": "vllm",
                "quant": "AWQ",
                "gpus": 1,
                "source": "/srv/models/x.gguf",
            }
        ],
        hardware=desktop,
    ).placements
    assert vllm.where == "does-not-fit" and vllm.problem and "cannot offload" in vllm.problem
    [hybrid] = plan([{"model": "llama3.3:70b"}], hardware=desktop).placements
    assert hybrid.where == "partial"
    assert hybrid.bound_tok_s is not None and hybrid.bound_tok_s < 5  # claimed: 30-40


def test_claimed_speed_above_the_bound_is_refused():
    desktop = {**RTX_5070_TI_DESKTOP, "ram_gb": 128, "ram_type": "ddr5"}
    result = plan([{"model": "llama3.3:70b", "claimed_tok_s": 30}], hardware=desktop)
    [(field, message)] = result.problems
    assert field == "models[0].claimed_tok_s"
    assert "30 tok/s claimed for llama3.3:70b" in message


def test_five_gpus_on_a_one_gpu_node_is_refused():
    with pytest.raises(Exception, match="5 GPUs requested but the host has 1"):
        validate_file(ROOT / "tests/fixtures/bad_inventories/gpu_oversubscribed.py")


def test_moe_speed_follows_active_parameters():
    unified = {
        "cores": 16,
        "ram_gb": 128,
        "accelerators": [{"kind": "amd_igpu", "model": "Radeon 8060S"}],
    }
    dense, moe = plan(
        [{"model": "llama3.1:70b-q4"}, {"model": "mixtral:8x22b-q4"}], hardware=unified
    ).placements
    assert moe.weights_gb > dense.weights_gb  # more weights in memory
    assert moe.bound_tok_s > dense.bound_tok_s  # fewer read per token


def test_memory_bandwidth_from_type_and_channels():
    spec = HostSpec(name="h", hardware={"cores": 8, "ram_gb": 64, "ram_type": "ddr5"})
    assert ram_bandwidth(spec)[0] == pytest.approx(89.6)  # 2 x 8 bytes x 5600 MT/s
    spec = HostSpec(
        name="h", hardware={"cores": 8, "ram_gb": 64, "ram_channels": 8, "ram_mts": 4800}
    )
    assert ram_bandwidth(spec)[0] == pytest.approx(307.2)


def test_plan_of_the_whole_fleet_runs_from_the_cli_without_contacting_hosts():
    result = subprocess.run(
        [sys.executable, "-m", "gpufleet.cli", "plan", "inventory/homelab.py", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plans = {p["host"]: p for p in json.loads(result.stdout)}
    assert plans["akshat-pc"]["placements"][0]["where"] == "gpu"
    assert all(not p["problems"] for p in plans.values())


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    from gpufleet.gguf import GGUFError, read_header

    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(GGUFError, match="is not a GGUF file"):
        read_header(fake)
    fake.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (1).to_bytes(8, "little"))
    with pytest.raises(GGUFError, match="file ends inside its header"):
        read_header(fake)


def test_apple_and_jetson_unified_memory_is_planned_as_gpu_memory():
    """Seed 004's Mac Mini (24 GB) and the Jetson example (8 GB) run their models on the GPU
    from the share of memory it may use, not "0 GB VRAM, cpu"."""
    catalogue = load_catalogue()
    mac = plan_host(validate_file(ROOT / "inventory/homelab.py")["mac-mini-m4-pro"], catalogue)
    assert mac.unified and mac.vram_gb == 16  # two thirds of 24 GB: Metal's working set
    assert {p.where for p in mac.placements} == {"gpu"}
    assert all(p.gpu_layers == p.layers for p in mac.placements)
    assert "24 GB unified memory (16 GB of it for the GPU" in plan_summary(mac)
    jetson_spec = validate_file(ROOT / "inventory/examples/proxmox_desktop.py")["jetson-orin-nano"]
    jetson = plan_host(jetson_spec, catalogue)
    assert jetson.unified and jetson.vram_gb == jetson_spec.hardware.ram_gb - SYSTEM_RESERVE_GB
    assert {p.where for p in jetson.placements} == {"gpu"}


def test_unified_memory_is_not_counted_twice():
    """What the GPU may hold is taken out of system memory: a model larger than the GPU's
    share plus what is left is refused, as on a discrete card with the same total."""
    spec = HostSpec.model_validate(
        {
            "name": "mac",
            "os": "macos",
            "arch": "aarch64",
            "hardware": {
                "cores": 12,
                "ram_gb": 24,
                "accelerators": [{"kind": "apple_metal", "model": "M4 Pro"}],
            },
            # ~25 GB: more than the GPU's 16 GB and the 6 GB left beside it together, less
            # than 16 GB "VRAM" plus all 22 GB of usable memory counted again.
            "models": [
                {"model": "qwen2.5:32b", "alias": "L-LOC-FRE-qwen2.5-32b", "context": 16384}
            ],
        }
    )
    plan = plan_host(spec, load_catalogue())
    assert 22 < plan.placements[0].need_gb < 16 + 24 - SYSTEM_RESERVE_GB
    assert plan.problems and "needs" in plan.problems[0][1]
