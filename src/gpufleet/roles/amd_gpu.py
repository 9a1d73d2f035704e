"""AMD integrated GPU steps (Ryzen AI Max+ 395's Radeon 8060S, Radeon 780M/890M).

Runbook it replaces: install Mesa's Vulkan driver; raise the GTT so the GPU may map more
than half of the unified memory (``ttm.pages_limit`` in modprobe.d, initramfs rebuilt);
reboot, since the driver reads it only when it loads; check that the kernel holds it.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt

from gpufleet.facts.system import TtmPagesLimit
from gpufleet.models import HostSpec
from gpufleet.operations import amdgpu
from gpufleet.operations import nvidia as reboot_ops
from gpufleet.roles.steps import rolling_reboot

VULKAN_DRIVER_PACKAGES = ["mesa-vulkan-drivers", "libvulkan1"]
"""Mesa's RADV and the Vulkan loader, which Ollama's and llama.cpp's Vulkan backends open."""


@deploy("AMD GPU")
def amd_gpu(spec: HostSpec) -> None:
    """
    Mesa's Vulkan driver; on an integrated GPU, the GTT size the planner plans it with.

    .. code:: python

        amd_gpu(host_spec())
    """
    # 1. The driver the engines' Vulkan backends drive the GPU through.
    apt.packages(
        name="Mesa's Vulkan drivers (RADV)", packages=VULKAN_DRIVER_PACKAGES, no_recommends=True
    )

    # 2. An integrated GPU's GTT: what the planner gave it (amdgpu.gtt_gb), or the kernel's
    # default. A discrete card has its own VRAM.
    if not spec.hardware.amd_igpu:
        return
    gtt_gb = spec.amdgpu.gtt_gb
    written = amdgpu.gtt_limit(name="GTT size (ttm.pages_limit)", gtt_gb=gtt_gb)

    # 3. The driver reads it when it loads: a reboot where the kernel holds another.
    running = host.get_fact(TtmPagesLimit)
    if running is None:
        host.noop("no TTM module loaded (no GPU driver here): the limit applies when it loads")
        return
    wanted = amdgpu.gtt_pages(gtt_gb) if gtt_gb is not None else None
    stale = wanted is not None and running != wanted
    if not (stale or written.will_change):
        return
    reason = (
        f"GTT limit {f'{gtt_gb:g} GB' if gtt_gb is not None else 'back to the default'} "
        f"written; the running kernel holds {running / amdgpu.PAGES_PER_GB:g} GB"
    )
    if spec.amdgpu.reboot:
        rolling_reboot(spec, "Reboot into the new GTT size")
    else:
        reboot_ops.reboot_required(name="Report the reboot the GTT size needs", reason=reason)
