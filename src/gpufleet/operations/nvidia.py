"""Operations for the NVIDIA driver's life cycle."""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import operation
from pyinfra.facts.files import File

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
