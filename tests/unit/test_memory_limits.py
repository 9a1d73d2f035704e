"""Memory limits of the engine servers: decided once by the planner from what each placement
holds in RAM, printed by the units (MemoryMax=) and containers (docker run --memory)."""

from pathlib import Path

import pytest

from gpufleet.catalogue import load_catalogue
from gpufleet.engines import memory_size
from gpufleet.inventory import validate_file
from gpufleet.models import HostSpec
from gpufleet.planner import MEMORY_FLOOR_GB, plan_host
from gpufleet.serving import describe
from gpufleet.sizing import SYSTEM_RESERVE_GB

ROOT = Path(__file__).parents[2]
CATALOGUE = load_catalogue()
EXAMPLE = validate_file(ROOT / "inventory/examples/proxmox_desktop.py")
SEED_000_DESKTOP = {
    "cpu": "Intel Core i7-8700",
    "cores": 6,
    "ram_gb": 32,
    "accelerators": [{"kind": "nvidia", "model": "RTX 5070 Ti"}],
}
"""Seed 000's Proxmox desktop: 32 GB DDR4, an RTX 5070 Ti with 16 GB."""
SEED_000_RAM_USED_GB = {"llama3.2:3b": 2.8, "deepseek-coder:6.7b": 6.2, "deepseek-coder:33b": 18.6}
"""RAM each model held there, run one at a time in a container allowed 26 GB (seed 000)."""


def host(models, hardware=SEED_000_DESKTOP, **data):
    return HostSpec(name="h", groups=("gpu_nodes",), hardware=hardware, models=models, **data)


def limits(spec):
    return plan_host(spec, CATALOGUE).memory_max_gb


@pytest.mark.parametrize("model", list(SEED_000_RAM_USED_GB))
def test_ollama_on_seed_000s_desktop_may_hold_what_each_model_held_there(model):
    spec = host([{"model": model, "quant": "Q4_0" if "deepseek" in model else None}])
    limit = limits(spec)["ollama"]
    assert limit >= SEED_000_RAM_USED_GB[model]
    assert limit <= 32 - SYSTEM_RESERVE_GB


def test_ollama_on_seed_000s_desktop_with_its_three_models():
    # The example inventory's host is that desktop: the three loaded at once (Ollama keeps
    # up to 3) need more than the host can give, so the limit is the host's RAM less the
    # system reserve, which still leaves the OS its share, and holds the 33b's 18.6 GB.
    limit = limits(EXAMPLE["proxmox-homelab"])["ollama"]
    assert limit == 32 - SYSTEM_RESERVE_GB
    assert limit >= max(SEED_000_RAM_USED_GB.values())


def test_ollama_limit_follows_its_loaded_set_not_the_host():
    models = [{"model": "deepseek-coder:33b"}, {"model": "llama3.2:3b"}]
    one = host(models, ollama={"max_loaded_models": 1})
    two = host(models, ollama={"max_loaded_models": 2})
    plan_one = plan_host(one, CATALOGUE)
    largest = max(p.need_gb for p in plan_one.placements)
    assert plan_one.memory_max_gb["ollama"] == pytest.approx((largest + 1.0) * 1.2, abs=0.1)
    assert limits(two)["ollama"] > plan_one.memory_max_gb["ollama"]


def test_a_server_of_one_model_is_limited_to_what_the_plan_puts_in_ram():
    # llama.cpp on the CPU beside vLLM: its whole need is in RAM; vLLM's is all on the GPU.
    desktop = plan_host(EXAMPLE["schlimers-server"], CATALOGUE)
    llama = next(p for p in desktop.placements if p.engine == "llama.cpp")
    vllm = next(p for p in desktop.placements if p.engine == "vllm")
    assert llama.ram_gb == llama.need_gb and vllm.ram_gb == 0
    assert desktop.memory_max_gb["llama.cpp"] == pytest.approx((llama.ram_gb + 1) * 1.2, abs=0.1)
    assert desktop.memory_max_gb["vllm"] == pytest.approx(8 * 1.2, abs=0.1)
    assert llama.memory_max_gb == desktop.memory_max_gb["llama.cpp"]  # the decision carries it
    # Triton's repository is not sized by the planner: it gets what the others leave.
    left = (
        128 - SYSTEM_RESERVE_GB - desktop.memory_max_gb["llama.cpp"] - desktop.memory_max_gb["vllm"]
    )
    assert desktop.memory_max_gb["triton"] == pytest.approx(left, abs=0.1)


def test_a_model_fully_on_the_gpu_gets_the_floor():
    spec = host(
        [{"model": "llama3.2:1b", "engine": "llama.cpp", "source": "/srv/m.gguf", "context": 4096}]
    )
    assert limits(spec)["llama.cpp"] == MEMORY_FLOOR_GB


def test_no_limit_is_above_the_hosts_ram_less_the_reserve_nor_below_the_floor():
    for spec in validate_file(ROOT / "inventory/homelab.py").values():
        for limit in limits(spec).values():
            ram = spec.hardware.ram_gb
            assert min(MEMORY_FLOOR_GB, ram) <= limit <= max(ram - SYSTEM_RESERVE_GB, 2), spec.name
    tiny = host(
        [{"model": "llama3.2:1b", "engine": "llama.cpp", "source": "/m.gguf", "context": 2048}],
        hardware={"cores": 4, "ram_gb": 1.5},
    )
    assert limits(tiny)["llama.cpp"] == 1.5  # the floor, up to the host's RAM


def test_an_explicit_limit_is_taken_and_one_below_the_plan_refused():
    models = [{"model": "qwen2.5:14b", "engine": "llama.cpp", "source": "/m.gguf", "context": 8192}]
    cpu = {"cores": 8, "ram_gb": 64}
    given = plan_host(host(models, hardware=cpu, llamacpp={"memory_max_gb": 20}), CATALOGUE)
    assert given.memory_max_gb["llama.cpp"] == 20 and not given.problems
    low = plan_host(host(models, hardware=cpu, llamacpp={"memory_max_gb": 4}), CATALOGUE)
    ((field, message),) = low.problems
    assert field == "llamacpp.memory_max_gb"
    assert "4 GB is less than the" in message and "llama.cpp's server" in message
    triton = {"enabled": True, "memory_max_gb": 12}
    assert limits(host([], triton=triton))["triton"] == 12


def test_memory_size_is_whole_mib_rounded_up():
    assert memory_size(2.5) == "2385M"
    assert memory_size(30.0) == "28611M"
    assert memory_size(0.001) == "1M"


def test_gpufleet_engines_shows_each_servers_limit():
    text = describe(EXAMPLE["proxmox-homelab"])
    assert "ollama on port 11434:" in text and "(memory max 30 GB)" in text
    assert "triton on port 8010: (its own models) (memory max" in describe(
        EXAMPLE["schlimers-server"]
    )
