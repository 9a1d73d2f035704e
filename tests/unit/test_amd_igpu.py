"""An AMD integrated GPU (Ryzen AI Max+ 395's Radeon 8060S): planned on its GTT share of
system memory, served by Ollama's Vulkan backend and by llama.cpp built with Vulkan."""

import itertools
from pathlib import Path

import pytest

from gpufleet import sandbox
from gpufleet.catalogue import load_catalogue
from gpufleet.checks import check_host
from gpufleet.engines import engine_for
from gpufleet.engines.llamacpp import (
    LLAMACPP,
    builds_for_gpu,
    builds_with_cuda,
    builds_with_vulkan,
    vulkan_build_problem,
)
from gpufleet.engines.ollama import OLLAMA
from gpufleet.inventory import validate_file
from gpufleet.models import HostSpec
from gpufleet.planner import plan_host, plan_summary
from gpufleet.serving import placement_runs
from gpufleet.sizing import SYSTEM_RESERVE_GB

ROOT = Path(__file__).parents[2]
CATALOGUE = load_catalogue()
HOMELAB = validate_file(ROOT / "inventory/homelab.py")
SHA = "a" * 64


def ai_max(**data) -> HostSpec:
    """A 128 GB AI Max box on Debian 13 serving one llama.cpp model."""
    return HostSpec.model_validate(
        {
            "name": "halo",
            "groups": ["cpu_nodes"],
            "release": data.pop("release", "13"),
            "hardware": {
                "cpu": "AMD Ryzen AI Max+ 395",
                "cores": 16,
                "ram_gb": 128,
                "ram_type": "lpddr5x",
                "accelerators": [{"kind": "amd_igpu", "model": "Radeon 8060S"}],
            },
            "llamacpp": {"source_sha256": SHA, **data.pop("llamacpp", {})},
            "models": [
                {
                    "model": "qwen2.5:72b",
                    "engine": "llama.cpp",
                    "source": "https://example.org/qwen2.5-72b-q4_k_m.gguf",
                    "sha256": SHA,
                    "context": 8192,
                }
            ],
            **data,
        }
    )


def test_seed_004_ai_max_boxes_plan_on_their_gpu_not_their_cpus():
    """Seed 004 plans its three AI Max boxes as "LARGE MODEL CPU" hosts: their Radeon 8060S
    maps half of the 128 GB by default (the kernel's GTT), and their models go there."""
    for name in ("gtr9-pro", "evo-x2", "ms-s1"):
        plan = plan_host(HOMELAB[name], CATALOGUE)
        assert plan.unified and plan.vram_gb == 64, name
        assert "128 GB unified memory (64 GB of it for the GPU" in plan_summary(plan)
        qwen = next(p for p in plan.placements if p.model.startswith("qwen2.5:72b"))
        assert qwen.where == "gpu" and qwen.gpu_layers == qwen.layers, name
    # gtr9-pro's 131k-token 70B (86 GB) is more than 64 GB: part of it stays with the CPUs.
    gtr9 = plan_host(HOMELAB["gtr9-pro"], CATALOGUE)
    llama = next(p for p in gtr9.placements if p.model.startswith("llama3.1:70b"))
    assert llama.where == "partial" and 0 < llama.gpu_layers < llama.layers


def test_a_larger_gtt_is_what_the_planner_gives_the_gpu_and_takes_from_the_cpus():
    default, raised = (
        plan_host(ai_max(), CATALOGUE),
        plan_host(ai_max(amdgpu={"gtt_gb": 110}), CATALOGUE),
    )
    assert default.vram_gb == 64 and raised.vram_gb == 110
    # Memory is counted once: what the GPU may map is not also the CPUs'.
    assert raised.ram_used_gb == 0.0
    assert raised.ram_gb - SYSTEM_RESERVE_GB - raised.vram_gb == pytest.approx(16)


def test_gtt_checks_name_the_field_and_the_fix():
    too_much = check_host(ai_max(amdgpu={"gtt_gb": 127}), CATALOGUE)
    assert [(p.field, "give at most 126" in p.message) for p in too_much] == [
        ("amdgpu.gtt_gb", True)
    ]
    no_igpu = HostSpec.model_validate(
        {"name": "box", "hardware": {"cores": 8, "ram_gb": 64}, "amdgpu": {"gtt_gb": 32}}
    )
    [problem] = check_host(no_igpu, CATALOGUE)
    assert problem.field == "amdgpu.gtt_gb" and "kind: amd_igpu" in problem.message
    vulkan_elsewhere = HostSpec.model_validate(
        {"name": "box", "hardware": {"cores": 8, "ram_gb": 64}, "llamacpp": {"vulkan_devices": "0"}}
    )
    [problem] = check_host(vulkan_elsewhere, CATALOGUE)
    assert problem.field == "llamacpp.vulkan_devices"


@pytest.mark.parametrize("devices", ["0;rm -rf /", "0 1", "-1", "0,", ""])
def test_vulkan_devices_refuse_anything_but_indexes(devices):
    with pytest.raises(ValueError, match="vulkan_devices"):
        ai_max(llamacpp={"vulkan_devices": devices})


def test_llama_cpp_builds_with_vulkan_and_offloads_what_the_planner_decided():
    spec = ai_max(llamacpp={"vulkan_devices": "0"})
    assert builds_with_vulkan(spec) and builds_for_gpu(spec) and not builds_with_cuda(spec)
    [run] = placement_runs(spec, engine_for(spec, spec.models[0]))
    flags = dict(itertools.pairwise(run.rendered.command))
    assert flags["--n-gpu-layers"] == str(run.decision.gpu_layers) == "80"
    # Layers planned on the GPU: no Vulkan device, no server (not the CPUs unnoticed).
    assert flags["--device"] == "Vulkan0"
    assert run.rendered.environment == (
        ("MESA_SHADER_CACHE_DIR", "/var/cache/llama-server"),
        ("GGML_VK_VISIBLE_DEVICES", "0"),
    )
    # Kept off the GPU: a CPU build, told nothing about Vulkan.
    cpu = ai_max(llamacpp={"gpu_layers": 0, "vulkan_devices": "0"})
    assert not builds_with_vulkan(cpu)
    assert LLAMACPP.vulkan_environment(cpu, "llama-server") == ()
    [run] = placement_runs(cpu, engine_for(cpu, cpu.models[0]))
    flags = dict(itertools.pairwise(run.rendered.command))
    assert flags["--n-gpu-layers"] == "0" and "--device" not in flags


def test_a_vulkan_build_on_debian_12_is_refused_before_any_host_is_asked():
    assert check_host(ai_max(), CATALOGUE) == []
    [problem] = check_host(ai_max(release=None), CATALOGUE)
    assert problem.field == "os" and "Debian 12's libvulkan-dev is 1.3.239" in problem.message
    [problem] = check_host(ai_max(release="12"), CATALOGUE)
    assert problem.field == "release"
    # Kept off the GPU, it is a CPU build: Debian 12 serves it.
    assert check_host(ai_max(release=None, llamacpp={"gpu_layers": 0}), CATALOGUE) == []


def test_vulkan_build_needs_headers_debian_12_does_not_have():
    problem = vulkan_build_problem("Debian", "12")
    assert problem and "1.3.272" in problem and "1.3.239" in problem
    assert "llamacpp.gpu_layers: 0" in problem
    assert vulkan_build_problem("Debian", "13") is None
    assert vulkan_build_problem("Ubuntu", "24.04") is None
    assert vulkan_build_problem("Ubuntu", "22.04")
    assert vulkan_build_problem("Fedora", "43") is None  # not known here: the compiler says


def test_amd_gpu_servers_reach_the_render_nodes_through_their_groups():
    unit = sandbox.llama_server("amd", "/var/lib/gpufleet/models/m.gguf").service
    assert "DeviceAllow=char-drm rw" in unit and "SupplementaryGroups=render video" in unit
    assert "SupplementaryGroups" not in sandbox.llama_server("none", "/m.gguf").service
    assert "SupplementaryGroups" not in sandbox.llama_server("nvidia", "/m.gguf").service


def test_the_running_gtt_limit_is_read_from_the_kernel():
    from gpufleet.facts.system import TtmPagesLimit

    fact = TtmPagesLimit()
    assert fact.process(["25165824"]) == 25165824
    assert fact.process([]) is None  # no TTM module loaded: a container, no GPU driver


def radeon_desktop(**data) -> HostSpec:
    """A newcomer's desktop with two Radeon RX 7900 XTX cards (24 GB each) on Debian 13."""
    return HostSpec.model_validate(
        {
            "name": "rx",
            "release": "13",
            "hardware": {
                "cores": 8,
                "ram_gb": 64,
                "accelerators": [{"kind": "amd_gpu", "model": "Radeon RX 7900 XTX", "count": 2}],
            },
            "llamacpp": {"source_sha256": SHA},
            "models": [
                {
                    "model": "qwen2.5:32b",
                    "engine": "llama.cpp",
                    "source": "https://example.org/qwen2.5-32b-q4_k_m.gguf",
                    "sha256": SHA,
                    "context": 8192,
                }
            ],
            **data,
        }
    )


def test_discrete_radeon_cards_are_planned_on_their_vram_and_served_through_vulkan():
    spec = radeon_desktop()
    plan = plan_host(spec, CATALOGUE)
    assert plan.vram_gb == 48 and not plan.unified and plan.gpu_bandwidth_gbs == 960
    [placement] = plan.placements
    assert placement.where == "gpu"
    assert builds_with_vulkan(spec) and sandbox.host_gpu(spec) == "amd"
    [run] = placement_runs(spec, engine_for(spec, spec.models[0]))
    assert dict(itertools.pairwise(run.rendered.command))["--device"] == "Vulkan0,Vulkan1"
    assert check_host(spec, CATALOGUE) == []
    # No GTT beside a card's own VRAM.
    [problem] = check_host(radeon_desktop(amdgpu={"gtt_gb": 16}), CATALOGUE)
    assert problem.field == "amdgpu.gtt_gb"


def test_an_nvidia_card_beside_a_radeon_is_the_one_the_engines_use():
    spec = radeon_desktop(
        hardware={
            "cores": 8,
            "ram_gb": 64,
            "accelerators": [
                {"kind": "nvidia", "model": "RTX 3090"},
                {"kind": "amd_gpu", "model": "Radeon RX 7900 XTX"},
            ],
        }
    )
    assert spec.hardware.gpu_count == 1 and spec.hardware.amd_gpu_count == 0
    assert plan_host(spec, CATALOGUE).vram_gb == 24  # the 3090's, not 48
    assert builds_with_cuda(spec) and not builds_with_vulkan(spec)


def test_ollama_uses_vulkan_on_a_radeon_and_keeps_only_integrated_gpus_by_flag():
    env = dict(OLLAMA.environment(radeon_desktop()))
    assert env["OLLAMA_VULKAN"] == "1" and "OLLAMA_IGPU_ENABLE" not in env
