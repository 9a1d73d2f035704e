"""AMD GPUs: Mesa's Vulkan driver; an integrated GPU's GTT size the planner planned with."""

import pytest

from gpufleet.operations.amdgpu import PAGES_PER_GB, gtt_pages
from gpufleet.planner import AMD_GTT_DEFAULT_SHARE
from gpufleet.verify import applies


def applies_to(spec):
    return spec.hardware.amd_gpu


def test_mesa_vulkan_driver_is_installed(target):
    assert target.host.package("mesa-vulkan-drivers").is_installed
    assert target.host.package("libvulkan1").is_installed


@applies(lambda spec: spec.hardware.amd_igpu)
def test_the_kernel_holds_the_planned_gtt_size(target):
    """The GTT the running kernel allows the GPU is the planner's: ``amdgpu.gtt_gb``, else
    the kernel's default of half of RAM (a host that has not rebooted since the size changed
    fails here, with both figures)."""
    reply = target.host.run("cat /sys/module/ttm/parameters/pages_limit")
    if reply.rc != 0:
        pytest.skip("no TTM module loaded: no GPU driver runs here (a container)")
    running = int(reply.stdout.strip())
    gtt_gb = target.spec.amdgpu.gtt_gb
    if gtt_gb is not None:
        assert running == gtt_pages(gtt_gb), (
            f"the kernel allows {running / PAGES_PER_GB:g} GB of GTT, the plan {gtt_gb:g} GB: "
            "reboot the host"
        )
        return
    total_kib = int(target.host.check_output("awk '/^MemTotal/ {print $2}' /proc/meminfo"))
    default_pages = total_kib / 4 * AMD_GTT_DEFAULT_SHARE
    assert abs(running - default_pages) <= 0.05 * default_pages, (
        f"the kernel allows {running / PAGES_PER_GB:g} GB of GTT, not its default half of RAM "
        "the plan counts on: set amdgpu.gtt_gb to what it holds, or remove the setting that "
        "changed it"
    )
