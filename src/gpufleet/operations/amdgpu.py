"""Operations for AMD GPUs: the integrated GPU's share of system memory (its GTT)."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.files import FileContents
from pyinfra.facts.server import Which

GTT_CONF = "/etc/modprobe.d/gpufleet-amdgpu.conf"
PAGES_PER_GB = 262144
"""4 KiB pages in a GB (GiB) of GTT: the unit of the kernel's ``ttm.pages_limit``."""


def gtt_pages(gtt_gb: float) -> int:
    """``ttm.pages_limit`` for ``gtt_gb`` GB of GTT."""
    return int(gtt_gb * PAGES_PER_GB)


def gtt_conf(gtt_gb: float) -> list[str]:
    """The lines of gpufleet's modprobe file for ``gtt_gb`` GB of GTT."""
    return [
        "# Managed by gpufleet (amdgpu.gtt_gb); local edits are overwritten.",
        f"options ttm pages_limit={gtt_pages(gtt_gb)}",
    ]


@operation()
def gtt_limit(gtt_gb: float | None):
    """
    Set how much system memory an AMD integrated GPU may map (its GTT): the kernel's
    ``ttm.pages_limit`` in ``/etc/modprobe.d``, and the initramfs rebuilt where the host has
    one (it loads the driver there). The driver reads it once when it loads, so a new size
    takes a reboot: see the AMD GPU role.

    + gtt_gb: GB of GTT; None: the kernel's default (half of RAM), gpufleet's file removed

    .. code:: python

        amdgpu.gtt_limit(gtt_gb=96)
    """
    current = host.get_fact(FileContents, path=GTT_CONF)
    if gtt_gb is None:
        if current is None:
            host.noop("GTT size left to the kernel (half of RAM)")
            return
        yield f"rm -f {GTT_CONF}"
    else:
        lines = gtt_conf(gtt_gb)
        if current == lines:
            host.noop(f"GTT limit already {gtt_gb:g} GB ({gtt_pages(gtt_gb)} pages)")
            return
        # A minimal system without kmod has no /etc/modprobe.d yet.
        yield f"mkdir -p {GTT_CONF.rsplit('/', 1)[0]}"
        yield f"printf '%s\\n' {' '.join(shlex.quote(line) for line in lines)} > {GTT_CONF}"
    if host.get_fact(Which, command="update-initramfs"):
        yield "update-initramfs -u"
