"""NVIDIA GPU facts: what the PCI bus, nvidia-smi and the loaded driver say.

Detection does not depend on anything a deploy installs: without ``lspci`` the fact reads
sysfs and prints the same ``lspci -nn`` line shape, so the answer is the same before and after
pciutils is installed.
"""

from __future__ import annotations

import re
from typing import TypedDict

from pyinfra.api import FactBase

NVIDIA_VENDOR = "10de"
DISPLAY_CLASSES = {"0300", "0302"}  # VGA compatible controller, 3D controller
SMI_QUERY = "name,memory.total,driver_version,pci.bus_id"
SMI_UNKNOWN = {"[N/A]", "[Not Supported]", "N/A", "Not Supported", "[Unknown Error]"}
"""What nvidia-smi prints for a value the board does not report (memory on unified-memory parts
like GB10, power on many laptops and older GeForce cards): unknown, not a failure."""

_LSPCI = re.compile(
    r"^(?P<slot>(?:[0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])\s+(?P<class_name>.*?)\s*"
    r"\[(?P<class>[0-9a-f]{4})\]:\s+(?P<name>.*?)\s*"
    r"\[(?P<vendor>[0-9a-f]{4}):(?P<device>[0-9a-f]{4})\](?:\s+\(rev [0-9a-f]+\))?\s*$",
    re.I,
)
_DRIVER = re.compile(r"^NVRM version:.*?\s(\d+\.\d+(?:\.\d+)?)\s", re.M)
_MODULE = re.compile(r"^NVRM version: NVIDIA UNIX (Open )?.*?Kernel Module", re.M)


class PciGpu(TypedDict):
    slot: str
    class_code: str
    device_id: str
    name: str


class SmiGpu(TypedDict):
    name: str
    memory_total_mib: int | None
    """None where nvidia-smi reports none (``[N/A]`` on unified-memory parts)."""
    driver_version: str
    pci_bus_id: str


class NvidiaGpuReport(TypedDict):
    pci: list[PciGpu]
    nvidia_smi: list[SmiGpu]
    nvidia_smi_error: str | None
    driver_version: str | None
    module_flavour: str | None
    """``open`` or ``proprietary``: which kernel module is loaded; None when none is."""


def parse_lspci(lines: list[str]) -> list[PciGpu]:
    """NVIDIA display devices from ``lspci -nn`` / ``lspci -Dnn`` lines (audio functions and
    other vendors are left out)."""
    gpus: list[PciGpu] = []
    for line in lines:
        match = _LSPCI.match(line.strip())
        if not match or match["vendor"].lower() != NVIDIA_VENDOR:
            continue
        if match["class"] not in DISPLAY_CLASSES:
            continue
        slot = match["slot"].lower()
        gpus.append(
            PciGpu(
                slot=slot if slot.count(":") == 2 else f"0000:{slot}",
                class_code=match["class"],
                device_id=match["device"].lower(),
                name=match["name"].removeprefix("NVIDIA Corporation").strip(),
            )
        )
    return gpus


def parse_smi_csv(
    lines: list[str], fields: list[str]
) -> tuple[list[dict[str, str | None]], list[str]]:
    """``nvidia-smi --query-gpu=<fields> --format=csv[,noheader][,nounits]`` -> (one dict per
    GPU, the lines that are no GPU row: errors). A value the board does not report
    (``[N/A]``, ``[Not Supported]``) is None; a header line is skipped."""
    rows: list[dict[str, str | None]] = []
    errors: list[str] = []
    for line in lines:
        values = [value.strip() for value in line.split(",")]
        if not line.strip() or values[0].split(" [")[0] == fields[0]:
            continue  # blank, or the header (csv without noheader)
        if len(values) != len(fields):
            errors.append(line.strip())
            continue
        rows.append(
            {
                field: None if value in SMI_UNKNOWN else value
                for field, value in zip(fields, values, strict=True)
            }
        )
    return rows, errors


def parse_nvidia_smi_query(lines: list[str]) -> tuple[list[SmiGpu], str | None]:
    """``nvidia-smi --query-gpu=name,memory.total,driver_version,pci.bus_id
    --format=csv,noheader,nounits`` -> (GPUs, error text or None). A GPU stays a GPU when a
    field is unknown; a row whose memory is neither a number nor unknown is an error line."""
    rows, errors = parse_smi_csv(lines, SMI_QUERY.split(","))
    gpus: list[SmiGpu] = []
    for row in rows:
        memory = row["memory.total"]
        if memory is not None and not memory.isdigit():
            errors.append(", ".join(value or "" for value in row.values()))
            continue
        gpus.append(
            SmiGpu(
                name=row["name"] or "",
                memory_total_mib=int(memory) if memory is not None else None,
                driver_version=row["driver_version"] or "",
                pci_bus_id=row["pci.bus_id"] or "",
            )
        )
    return gpus, ("\n".join(errors) or None)


def parse_driver_version(text: str) -> str | None:
    """Driver version from ``/proc/driver/nvidia/version`` (``565.57.01``), or None."""
    match = _DRIVER.search(text)
    return match.group(1) if match else None


def parse_module_flavour(text: str) -> str | None:
    """``open`` (``NVIDIA UNIX Open Kernel Module for x86_64``) or ``proprietary`` (``NVIDIA
    UNIX x86_64 Kernel Module``) from ``/proc/driver/nvidia/version``; None without it."""
    match = _MODULE.search(text)
    if not match:
        return None
    return "open" if match.group(1) else "proprietary"


def split_sections(lines: list[str]) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if line.startswith("### "):
            current = sections.setdefault(line[4:].strip(), [])
        elif current is not None:
            current.append(line)
    return sections


class NvidiaGpus(FactBase[NvidiaGpuReport]):
    """
    NVIDIA GPUs on the PCI bus and what nvidia-smi and the loaded driver report.

    .. code:: python

        {
            "pci": [{"slot": "0000:01:00.0", "class_code": "0300", "device_id": "2684",
                     "name": "AD102 [GeForce RTX 4090]"}],
            "nvidia_smi": [{"name": "NVIDIA GeForce RTX 4090", "memory_total_mib": 24564,
                            "driver_version": "550.54.14", "pci_bus_id": "00000000:01:00.0"}],
            "nvidia_smi_error": None,       # e.g. "Failed to initialize NVML: ..."
            "driver_version": "550.54.14",  # from /proc/driver/nvidia/version
            "module_flavour": "open",       # or "proprietary"; None without a driver
        }
    """

    def command(self) -> str:
        return (
            "echo '### pci'; "
            "if command -v lspci >/dev/null 2>&1; then lspci -Dnn; "
            "else for d in /sys/bus/pci/devices/*; do "
            '[ -r "$d/vendor" ] || continue; '
            'printf "%s Class [%s]: Device [%s:%s]\\n" "${d##*/}" '
            '"$(cut -c3-6 "$d/class")" "$(cut -c3- "$d/vendor")" "$(cut -c3- "$d/device")"; '
            "done; fi; "
            "echo '### nvidia-smi'; "
            "if command -v nvidia-smi >/dev/null 2>&1; then "
            f"nvidia-smi --query-gpu={SMI_QUERY} --format=csv,noheader,nounits 2>&1 || true; fi; "
            "echo '### driver'; cat /proc/driver/nvidia/version 2>/dev/null || true"
        )

    def process(self, output: list[str]) -> NvidiaGpuReport:
        sections = split_sections(output)
        smi, smi_error = parse_nvidia_smi_query(sections.get("nvidia-smi", []))
        driver = "\n".join(sections.get("driver", []))
        return NvidiaGpuReport(
            pci=parse_lspci(sections.get("pci", [])),
            nvidia_smi=smi,
            nvidia_smi_error=smi_error,
            driver_version=parse_driver_version(driver),
            module_flavour=parse_module_flavour(driver),
        )


_reports: dict[str, NvidiaGpuReport] = {}


def detected_gpus() -> NvidiaGpuReport:
    """The :class:`NvidiaGpus` fact of the current host, read once per run: cards do not come
    and go during a deploy, and a driver the deploy installs loads only after a reboot."""
    from pyinfra import host

    if host.name not in _reports:
        _reports[host.name] = host.get_fact(NvidiaGpus)
    return _reports[host.name]


def require_gpu(force: bool, field: str, fix: str) -> None:
    """Stop the deploy before any change when the host shows no NVIDIA GPU (unless forced)."""
    from pyinfra import host
    from pyinfra.api.exceptions import DeployError

    if not detected_gpus()["pci"] and not force:
        raise DeployError(f"{host.name}: {field}: no NVIDIA GPU detected on this host; {fix}")


def describe(report: NvidiaGpuReport) -> str:
    """One line for a person: ``2 NVIDIA GPUs: RTX 4090 (24564 MiB), ...`` or
    ``no NVIDIA GPU (no PCI device with vendor 10de)``."""
    if not report["pci"] and not report["nvidia_smi"]:
        return "no NVIDIA GPU (no PCI display device with vendor 10de)"
    if report["nvidia_smi"]:
        cards = ", ".join(
            f"{g['name']} ({g['memory_total_mib'] or 'memory unknown'}"
            f"{' MiB' if g['memory_total_mib'] else ''})"
            for g in report["nvidia_smi"]
        )
        return (
            f"{len(report['nvidia_smi'])} NVIDIA GPU(s), driver {report['driver_version']}: {cards}"
        )
    cards = ", ".join(f"{g['name']} [10de:{g['device_id']}] at {g['slot']}" for g in report["pci"])
    why = report["nvidia_smi_error"] or "nvidia-smi not installed"
    return f"{len(report['pci'])} NVIDIA GPU(s) on the PCI bus, driver not usable ({why}): {cards}"


FRONTEND_MAJOR = 195
"""nvidia0..N, nvidiactl and nvidia-modeset: a major the kernel reserves for NVIDIA. Every
other NVIDIA major (nvidia-uvm, nvidia-caps, ...) is handed out at module load and differs
from host to host."""


def parse_proc_devices(lines: list[str]) -> dict[str, int]:
    """NVIDIA character-device majors from ``/proc/devices``.

    ``{"nvidia-frontend": 195, "nvidia-uvm": 510, "nvidia-caps": 235}``; the 550+ drivers
    name the frontend ``nvidia``. Block devices are ignored.
    """
    majors: dict[str, int] = {}
    in_character_devices = False
    for line in lines:
        stripped = line.strip()
        if stripped.endswith("devices:"):
            in_character_devices = stripped == "Character devices:"
            continue
        number, _, name = stripped.partition(" ")
        if in_character_devices and number.isdigit() and name.strip().startswith("nvidia"):
            majors.setdefault(name.strip(), int(number))
    return majors


def uvm_major(majors: dict[str, int]) -> int | None:
    """The nvidia-uvm major, or None while the nvidia-uvm module is not loaded."""
    return majors.get("nvidia-uvm")


class NvidiaDeviceMajors(FactBase[dict[str, int]]):
    """
    Majors of the NVIDIA character devices the loaded driver registered (``/proc/devices``).
    Empty when no NVIDIA module is loaded.

    .. code:: python

        {"nvidia-frontend": 195, "nvidia-uvm": 510, "nvidia-caps": 235}
    """

    def command(self) -> str:
        return "cat /proc/devices"

    def process(self, output: list[str]) -> dict[str, int]:
        return parse_proc_devices(output)
