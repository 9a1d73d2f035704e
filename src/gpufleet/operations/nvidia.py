"""Operations for the NVIDIA driver's life cycle."""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import operation
from pyinfra.facts.files import File

from gpufleet.facts.system import Kernels

REBOOT_FLAG = "/run/reboot-required"
"""Debian's flag for a pending reboot (read by unattended-upgrades and login banners); it
lives in /run, so a reboot clears it."""


@operation()
def reboot_required(reason: str):
    """
    Record and report that the host must reboot; never reboots it.

    + reason: what needs the reboot, for the operator

    The first run that finds a reboot needed writes the flag and warns; later runs only note
    that it is still pending, so a converged host reports no change.

    .. code:: python

        nvidia.reboot_required(reason="NVIDIA driver 535.261.03 installed, module not loaded")
    """
    if host.get_fact(File, path=REBOOT_FLAG):
        host.noop(f"reboot still pending: {reason}")
        return
    logger.warning(f"{host.print_prefix}REBOOT REQUIRED: {reason}")
    yield f"echo '*** System restart required ***' > {REBOOT_FLAG}"
    yield f"echo {shlex.quote(f'gpufleet: {reason}')} >> {REBOOT_FLAG}.pkgs"


MODULE_FILES = "nvidia.ko*"
"""The driver's kernel module as DKMS installs it (``updates/dkms/nvidia.ko``, compressed
``.ko.xz``/``.ko.zst`` where the kernel's modules are) or Ubuntu ships it prebuilt."""


@operation()
def module_built(kernels: list[str], running: str | None = None, driver_changes: bool = False):
    """
    Check that the NVIDIA module is built for every kernel the host can boot, and have
    DKMS build it where it is not; fail, naming the kernels, where it still is not.

    + kernels: the kernels the host can boot (each one in ``/boot``)
    + running: the running kernel, when it is a distribution kernel: its headers must be
      present too (DKMS builds against them, and the next driver update needs them)
    + driver_changes: the driver is installed or changed in this run (DKMS builds it then):
      check after it, whatever the kernels held before

    A kernel installed since the driver (by unattended-upgrades, a Proxmox update) without
    its module boots without GPUs; the reboot into it must wait until the module is there.
    A converged host, every kernel holding the module, is no change.

    .. code:: python

        nvidia.module_built(
            kernels=["6.1.0-28-amd64", "6.1.0-31-amd64"],
            running="6.1.0-28-amd64",
            driver_changes=installed.will_change,
        )
    """
    report = host.get_fact(Kernels)
    lacking = [kernel for kernel in kernels if kernel not in report["with_nvidia_module"]]
    no_headers = running is not None and running not in report["with_headers"]
    if not (lacking or no_headers or driver_changes):
        shown = ", ".join(kernels) or "none in /boot"
        host.noop(f"NVIDIA module built for every kernel the host can boot ({shown})")
        return
    # After the install, for every kernel: the facts were read before DKMS ran.
    checked = kernels if driver_changes else lacking
    quoted = " ".join(shlex.quote(kernel) for kernel in checked)
    has_module = f"find /lib/modules/\"$k\" -name '{MODULE_FILES}' 2>/dev/null | grep -q ."
    script = [
        "missing=''",
        f"for k in {quoted}; do {has_module} && continue; "
        'dkms autoinstall -k "$k" >/dev/null 2>&1; '
        f'{has_module} || missing="$missing $k"; done'
        if checked
        else ":",
        'if [ -n "$missing" ]; then echo "no NVIDIA module for kernel(s)$missing: do not boot '
        "them; install their headers (linux-headers-<kernel>, proxmox-headers-<kernel>) and run "
        'again, or remove them; DKMS says why in /var/lib/dkms/nvidia/*/build/make.log" >&2; '
        "exit 1; fi",
    ]
    if running is not None:
        headers = f"/lib/modules/{shlex.quote(running)}/build/Makefile"
        why = f"no headers for the running kernel {running}: install them and run again"
        script.append(f"[ -e {headers} ] || {{ echo {shlex.quote(why)} >&2; exit 1; }}")
    yield "; ".join(script)
