"""Facts about the machine itself."""

from __future__ import annotations

from pyinfra.api import FactBase


class ContainerVirtualization(FactBase[str | None]):
    """
    The container technology the host runs in (``systemd-nspawn``, ``lxc``, ``docker`` …),
    or None on bare metal and in VMs. Services such as time sync do not run in containers.
    """

    def command(self) -> str:
        return "systemd-detect-virt --container 2>/dev/null || true"

    def process(self, output: list[str]) -> str | None:
        kind = "".join(output).strip()
        return None if kind in ("", "none") else kind
