"""Facts about the machine itself: containers, Secure Boot, kernels."""

from __future__ import annotations

import re
import shlex
from typing import Literal, TypedDict

from pyinfra.api import FactBase

from gpufleet.facts.gpu import split_sections


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


class TtmPagesLimit(FactBase[int | None]):
    """
    The GTT limit the running kernel's TTM holds, in 4 KiB pages (``ttm.pages_limit``, read
    when the GPU driver loaded); None where no TTM module is loaded (no AMD or other DRM GPU
    driver, a container).
    """

    def command(self) -> str:
        return "cat /sys/module/ttm/parameters/pages_limit 2>/dev/null || true"

    def process(self, output: list[str]) -> int | None:
        text = "".join(output).strip()
        return int(text) if text.isdigit() else None


SecureBootState = Literal["enabled", "disabled", "not-efi", "unknown"]

EFI_SECURE_BOOT_VARIABLE = (
    "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
)


def parse_secure_boot(lines: list[str]) -> SecureBootState:
    """``mokutil --sb-state`` output (or the fallback's ``efivar <bytes>`` line) -> state.

    ``SecureBoot enabled`` / ``SecureBoot disabled`` / ``EFI variables are not supported on
    this system``. The EFI variable holds 4 attribute bytes and then the value byte.
    """
    text = "\n".join(lines)
    if re.search(r"SecureBoot enabled", text):
        return "enabled"
    if re.search(r"SecureBoot disabled", text):
        return "disabled"
    if re.search(r"not supported on this system|doesn.t support Secure Boot|^no-efi$", text, re.M):
        return "not-efi"
    efivar = re.search(r"^efivar((?:\s+\d+)+)\s*$", text, re.M)
    if efivar:
        return "enabled" if efivar.group(1).split()[-1] == "1" else "disabled"
    return "unknown"


class SecureBoot(FactBase[SecureBootState]):
    """
    Secure Boot state: ``enabled`` (unsigned DKMS modules will not load), ``disabled``,
    ``not-efi`` (legacy BIOS boot, or a container without EFI variables) or ``unknown``.
    """

    def command(self) -> str:
        return (
            "if command -v mokutil >/dev/null 2>&1; then mokutil --sb-state 2>&1 || true; "
            f"elif [ -r {EFI_SECURE_BOOT_VARIABLE} ]; then "
            f"echo efivar $(od -An -t u1 {EFI_SECURE_BOOT_VARIABLE}); "
            "elif [ ! -d /sys/firmware/efi ]; then echo no-efi; fi"
        )

    def process(self, output: list[str]) -> SecureBootState:
        return parse_secure_boot(output)


class KernelReport(TypedDict):
    running: str
    installed: list[str]
    with_headers: list[str]
    with_nvidia_module: list[str]


def _version_key(release: str) -> list[int]:
    return [int(part) for part in re.findall(r"\d+", release)]


def parse_kernels(sections: dict[str, list[str]]) -> KernelReport:
    """Sections ``running`` (``uname -r``), ``images`` (``/boot/vmlinuz-*`` names),
    ``headers`` (``/lib/modules/*/build`` that resolve) and ``nvidia`` (``/lib/modules/*``
    trees holding an ``nvidia.ko*``) -> kernel report, newest last."""

    def releases(section: str) -> list[str]:
        names = {line.strip() for line in sections.get(section, []) if line.strip()}
        return sorted(names, key=_version_key)

    running = "".join(sections.get("running", [])).strip()
    images = {line.strip().removeprefix("vmlinuz-") for line in sections.get("images", [])}
    return KernelReport(
        running=running,
        installed=sorted((i for i in images if i), key=_version_key),
        with_headers=releases("headers"),
        with_nvidia_module=releases("nvidia"),
    )


class Kernels(FactBase[KernelReport]):
    """
    The running kernel, the kernels installed in /boot, those whose headers are present
    (what DKMS can build a module for) and those that hold an NVIDIA module (built by DKMS
    into ``updates/dkms``, or shipped prebuilt as Ubuntu's ``linux-modules-nvidia-*``).

    .. code:: python

        {"running": "6.1.0-28-amd64",
         "installed": ["6.1.0-28-amd64", "6.1.0-31-amd64"],
         "with_headers": ["6.1.0-31-amd64"],
         "with_nvidia_module": ["6.1.0-28-amd64"]}
    """

    def command(self) -> str:
        return (
            "echo '### running'; uname -r; "
            "echo '### images'; ls -1 /boot 2>/dev/null | grep '^vmlinuz-' || true; "
            "echo '### headers'; for d in /lib/modules/*; do "
            '[ -e "$d/build/Makefile" ] && echo "${d##*/}"; done; '
            "echo '### nvidia'; for d in /lib/modules/*; do "
            "find \"$d\" -name 'nvidia.ko*' -print 2>/dev/null | grep -q . "
            '&& echo "${d##*/}"; done; true'
        )

    def process(self, output: list[str]) -> KernelReport:
        return parse_kernels(split_sections(output))


class MachineResourcesReport(TypedDict):
    cores: int
    ram_gb: float


def parse_resources(lines: list[str]) -> MachineResourcesReport:
    """``cores <n>`` and ``/proc/meminfo``'s MemTotal line -> cores and RAM in GB (decimal,
    as the inventory counts)."""
    cores, ram_kb = 0, 0
    for line in lines:
        if line.startswith("cores "):
            cores = int(line.split()[1])
        elif line.startswith("MemTotal:"):
            ram_kb = int(line.split()[1])
    return MachineResourcesReport(cores=cores, ram_gb=round(ram_kb * 1024 / 1e9, 1))


class MachineResources(FactBase[MachineResourcesReport]):
    """
    Physical CPU cores (``lscpu``; ``nproc`` where lscpu is missing) and total memory.

    .. code:: python

        {"cores": 16, "ram_gb": 201.2}
    """

    def command(self) -> str:
        return (
            "echo cores $(lscpu -p=Core,Socket 2>/dev/null | grep -v '^#' | sort -u | wc -l "
            "| sed 's/^0$//' | grep . || nproc); grep MemTotal /proc/meminfo"
        )

    def process(self, output: list[str]) -> MachineResourcesReport:
        return parse_resources(output)


class PostgresLogin(FactBase[bool]):
    """
    Whether ``role`` logs in to ``database`` on 127.0.0.1 with the password kept in
    ``password_file`` on the host (read there by the shell, so it is in no command).

    .. code:: python

        host.get_fact(PostgresLogin, role="litellm", database="litellm", port=5432,
                      password_file="/etc/postgresql/gpufleet/litellm.password")
    """

    def command(self, role: str, database: str, port: int, password_file: str) -> str:
        return (
            f'[ -r {password_file} ] && PGPASSWORD="$(cat {password_file})" '
            f"psql -h 127.0.0.1 -p {port} -U {role} -d {database} -w -Atc 'select 1' "
            "2>/dev/null || true"
        )

    def process(self, output: list[str]) -> bool:
        return "".join(output).strip() == "1"


def release_codename() -> str:
    """The current host's release codename (``bookworm``, ``jammy``), from os-release; empty
    when it names none."""
    from pyinfra import host
    from pyinfra.facts.server import LinuxDistribution

    return str(host.get_fact(LinuxDistribution)["release_meta"].get("VERSION_CODENAME", ""))


class AccountEntry(TypedDict):
    uid: int
    gid: int
    comment: str
    home: str
    shell: str
    group: str
    """The primary group's name."""
    groups: list[str]
    """Secondary groups."""


class Account(FactBase[AccountEntry | None]):
    """
    One account, from the name service (``getent passwd``) with its groups, or None where
    there is none. pyinfra's ``Users`` answers the same for every account and runs half a
    dozen programs per account to do it (their last logins and password hashes included):
    about 400 processes on a stock Debian host for each operation that asks it.

    .. code:: python

        {"uid": 998, "gid": 998, "comment": "", "home": "/var/lib/gpufleet",
         "shell": "/usr/sbin/nologin", "group": "gpufleet", "groups": ["video"]}
    """

    def command(self, user: str) -> str:
        name = shlex.quote(user)
        return (
            f"if entry=$(getent passwd {name}); then"
            f' echo "$entry"; id -gn {name}; id -Gn {name}; fi'
        )

    def process(self, output: list[str]) -> AccountEntry | None:
        if len(output) < 3:
            return None
        fields = output[0].split(":")
        if len(fields) != 7:
            return None
        group = output[1].strip()
        return {
            "uid": int(fields[2]),
            "gid": int(fields[3]),
            "comment": fields[4],
            "home": fields[5],
            "shell": fields[6],
            "group": group,
            "groups": [each for each in output[2].split() if each != group],
        }


class GroupExists(FactBase[bool]):
    """Whether the name service knows a group of this name (``getent group``)."""

    def command(self, group: str) -> str:
        return f"getent group {shlex.quote(group)} >/dev/null && echo yes || echo no"

    def process(self, output: list[str]) -> bool:
        return "".join(output).strip() == "yes"


class EstablishedPeers(FactBase[list[str]]):
    """``address:port`` of every established TCP connection's far end on the host."""

    def command(self) -> str:
        return "ss -Htn state established | awk '{print $4}'"

    def requires_command(self) -> str:
        return "ss"

    def process(self, output: list[str]) -> list[str]:
        return sorted({line.strip() for line in output if line.strip()})


DRAIN_TABLE = "gpufleet-drain"
"""The nftables table that holds a drained host's inference ports out of rotation; its own
table, so that the allow-list's reload (its own table only) leaves it in place."""


class DrainedPorts(FactBase[list[int]]):
    """
    The ports a drain holds out of rotation (new connections from other hosts reset); empty
    when the host is in rotation.

    .. code:: python

        [8080]
    """

    default = list

    def command(self) -> str:
        return (
            f"nft list table inet {DRAIN_TABLE} 2>/dev/null | grep -o 'dport [{{0-9, }}]*' || true"
        )

    def process(self, output: list[str]) -> list[int]:
        ports = {int(p) for line in output for p in re.split(r"[,\s]+", line) if p.isdigit()}
        return sorted(ports)
