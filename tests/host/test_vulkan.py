"""An AMD integrated GPU's path, on lab-amd-1 (Debian 13, a declared Radeon 8060S): the
planner puts the model on the GPU's GTT share, llama-server is built with llama.cpp's Vulkan
backend and runs every layer on a real Vulkan device (Mesa's software lavapipe stands in for
RADV), and the answer comes through the gateway."""

from __future__ import annotations

import itertools

from gpufleet.catalogue import load_catalogue
from gpufleet.engines.llamacpp import LLAMACPP
from gpufleet.operations.amdgpu import GTT_CONF, gtt_conf
from gpufleet.planner import plan_host
from gpufleet.serving import placement_runs

from .conftest import SPECS, ssh
from .test_secure_gateway import completes_through_the_gateway

HOST = "lab-amd-1"
ADDRESS = str(SPECS[HOST].lan_address)
SERVER = "$(pgrep -o -x llama-server)"


def vulkan_run():
    return placement_runs(SPECS[HOST], LLAMACPP, fleet=SPECS)[0]


def test_the_planner_puts_the_model_on_the_gtt_share():
    plan = plan_host(SPECS[HOST], load_catalogue())
    assert plan.unified and plan.vram_gb == SPECS[HOST].amdgpu.gtt_gb
    [placement] = plan.placements
    assert placement.where == "gpu" and placement.gpu_layers == placement.layers


def test_llama_server_runs_with_the_planned_layers_and_devices(lab_session):
    run = vulkan_run()
    argv = ssh(ADDRESS, f"tr '\\0' '\\n' < /proc/{SERVER}/cmdline").split("\n")[:-1]
    assert argv == list(run.rendered.command)
    assert dict(itertools.pairwise(argv))["--n-gpu-layers"] == str(run.decision.layers)
    environ = ssh(ADDRESS, f"tr '\\0' '\\n' < /proc/{SERVER}/environ").split("\n")
    assert "GGML_VK_VISIBLE_DEVICES=0" in environ


def test_the_layers_are_on_a_vulkan_device(lab_session):
    """The server runs with ``--device Vulkan0`` (it stops where no Vulkan device shows),
    lavapipe's driver is mapped into it, and Mesa compiled shader pipelines for it into the
    service's cache folder: the model's layers ran on the Vulkan device."""
    argv = ssh(ADDRESS, f"tr '\\0' '\\n' < /proc/{SERVER}/cmdline").split("\n")
    assert dict(itertools.pairwise(argv))["--device"] == "Vulkan0"
    maps = ssh(ADDRESS, f"cat /proc/{SERVER}/maps")
    assert "libvulkan.so" in maps and "libvulkan_lvp.so" in maps
    cached = ssh(ADDRESS, "du -sk /var/cache/llama-server/mesa_shader_cache_db | cut -f1")
    assert int(cached) > 100, cached  # KiB of compiled pipelines


def test_the_binary_is_a_vulkan_build_of_its_own_key(lab_session):
    """lab-amd-1 compiled its own binary (Debian 13 and Vulkan make another build key than
    lab-gpu-1's CPU build), linked against the Vulkan loader."""
    assert "libvulkan.so.1" in ssh(ADDRESS, "ldd /usr/local/bin/llama-server")
    stamp = "cat /usr/local/bin/llama-server.gpufleet-build"
    assert ssh(ADDRESS, stamp) != ssh(str(SPECS["lab-gpu-1"].lan_address), stamp)


def test_the_gtt_size_is_written_for_the_driver(lab_session):
    gtt = SPECS[HOST].amdgpu.gtt_gb
    assert ssh(ADDRESS, f"cat {GTT_CONF}").splitlines() == gtt_conf(gtt)
    assert "options ttm pages_limit=524288" in gtt_conf(gtt)  # 2 GB of 4 KiB pages


def test_the_vulkan_model_answers_through_the_gateway(lab_session, fleet_ca, client_key):
    completes_through_the_gateway(SPECS[HOST].models[0].alias, ADDRESS, client_key, fleet_ca)
