"""What a machine is, read once over SSH for ``gpufleet discover``: its system and
architecture, CPU, cores, memory and GPUs (NVIDIA, AMD, Apple, Jetson).

One command gathers everything, in sections, with what every system answers (POSIX shell,
``/proc``, ``/sys``, ``sysctl`` on a Mac) and the vendors' tools where they are installed;
no section needs root, and a missing tool leaves its section empty.
"""

from __future__ import annotations

import json
import re
from typing import Literal, NotRequired, TypedDict

from pyinfra.api import FactBase

from gpufleet.facts.bandwidth import BandwidthReading
from gpufleet.facts.gpu import DISPLAY_CLASSES, NVIDIA_VENDOR, parse_smi_csv, split_sections

AMD_VENDOR = "1002"
GPU_CLASSES = {*DISPLAY_CLASSES, "0380"}
"""VGA, 3D and other display controllers (AMD's APUs show as the last, 0380)."""
NVIDIA_SMI_FIELDS = "name,memory.total,pci.device_id,pci.bus_id,driver_version"
PCI_LINES = (
    "if command -v lspci >/dev/null 2>&1; then lspci -Dnn; "
    "else for d in /sys/bus/pci/devices/*; do "
    '[ -r "$d/vendor" ] || continue; '
    'printf "%s Class [%s]: Device [%s:%s]\\n" "${d##*/}" '
    '"$(cut -c3-6 "$d/class")" "$(cut -c3- "$d/vendor")" "$(cut -c3- "$d/device")"; '
    "done; fi"
)
"""``lspci -Dnn``, or the same line shape from sysfs where pciutils is not installed."""

_LSPCI = re.compile(
    r"^(?P<slot>\S+)\s+(?P<class_name>.*?)\s*\[(?P<class>[0-9a-f]{4})\]:\s+(?P<name>.*?)\s*"
    r"\[(?P<vendor>[0-9a-f]{4}):(?P<device>[0-9a-f]{4})\](?:\s+\(rev [0-9a-f]+\))?\s*$",
    re.I,
)


class SeenGpu(TypedDict):
    vendor: Literal["nvidia", "amd", "apple", "jetson"]
    name: str
    """What the host calls it: nvidia-smi's name, rocm-smi's or lspci's, the Mac's chip."""
    pci_device_id: str | None
    """The PCI device id (``2684``), where there is a PCI device."""
    vram_mib: int | None
    """Memory the GPU reports as its own, MiB; None where it reports none (unified memory,
    no driver yet)."""


class MachineReport(TypedDict):
    hostname: str
    system: str
    """``Linux`` or ``Darwin``."""
    machine: str
    """``uname -m``: ``x86_64``, ``aarch64``, ``arm64``."""
    os_id: str
    """``/etc/os-release``'s ID (``debian``, ``ubuntu``), ``macos`` on a Mac."""
    os_name: str
    """The system's own name for itself (``Debian GNU/Linux 12 (bookworm)``)."""
    proxmox: bool
    board: str
    """``/proc/device-tree/model`` (``Raspberry Pi 5 Model B Rev 1.0``), empty on a PC."""
    tegra: bool
    """Jetson Linux (``/etc/nv_tegra_release``)."""
    cpu: str
    cores: int
    """Physical cores (logical CPUs where the system does not tell them apart)."""
    ram_gb: float
    """Memory in GB (decimal, as the inventory counts)."""
    gpus: list[SeenGpu]
    nvidia_driver: str | None
    """The NVIDIA driver nvidia-smi runs with; None without one."""
    bandwidth: NotRequired[BandwidthReading]
    """The host's memory bandwidth, where discovery measured it (not this fact's)."""


def _key_values(lines: list[str], separator: str = "=") -> dict[str, str]:
    values = {}
    for line in lines:
        key, found, value = line.partition(separator)
        if found:
            values[key.strip()] = value.strip().strip('"')
    return values


def parse_pci(lines: list[str]) -> list[dict[str, str]]:
    """Display devices of NVIDIA and AMD from ``lspci -Dnn`` lines."""
    devices = []
    for line in lines:
        match = _LSPCI.match(line.strip())
        if not match or match["class"] not in GPU_CLASSES:
            continue
        vendor = match["vendor"].lower()
        if vendor not in (NVIDIA_VENDOR, AMD_VENDOR):
            continue
        name = match["name"]
        for prefix in ("NVIDIA Corporation", "Advanced Micro Devices, Inc. [AMD/ATI]"):
            name = name.removeprefix(prefix).strip()
        devices.append(
            {"slot": match["slot"].lower(), "vendor": vendor, "device": match["device"].lower()}
            | {"name": name}
        )
    return devices


def _pci_product(name: str) -> str:
    """The marketing name lspci gives in brackets (``AD102 [GeForce RTX 4090]`` ->
    ``GeForce RTX 4090``), else the whole name."""
    match = re.search(r"\[([^\]]+)\]\s*$", name)
    return match.group(1) if match else name


def nvidia_gpus(pci: list[dict[str, str]], smi_lines: list[str]) -> list[SeenGpu]:
    """NVIDIA GPUs: nvidia-smi's rows where the driver answers (names and memory as the
    driver reports them), else the PCI bus's devices (a fresh host, no driver yet)."""
    rows, _errors = parse_smi_csv(smi_lines, NVIDIA_SMI_FIELDS.split(","))
    if rows:
        gpus = []
        for row in rows:
            device = (row["pci.device_id"] or "").lower().removeprefix("0x")
            memory = row["memory.total"]
            gpus.append(
                SeenGpu(
                    vendor="nvidia",
                    name=row["name"] or "NVIDIA GPU",
                    # nvidia-smi's 0x268410DE: device 2684 of vendor 10de
                    pci_device_id=device[:4] if len(device) == 8 else device or None,
                    vram_mib=int(memory) if memory and memory.isdigit() else None,
                )
            )
        return gpus
    return [
        SeenGpu(
            vendor="nvidia",
            name=_pci_product(device["name"]),
            pci_device_id=device["device"],
            vram_mib=None,
        )
        for device in pci
        if device["vendor"] == NVIDIA_VENDOR
    ]


def parse_rocm_smi(text: str) -> list[tuple[str, int | None]]:
    """``rocm-smi --showproductname --showmeminfo vram --json`` -> (card series, VRAM MiB)
    per card."""
    try:
        cards = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return []
    found = []
    for card, values in sorted(cards.items()):
        if not card.startswith("card") or not isinstance(values, dict):
            continue
        name = values.get("Card Series") or values.get("Card series") or values.get("Card SKU")
        total = str(values.get("VRAM Total Memory (B)") or "")
        mib = int(total) // 2**20 if total.isdigit() else None
        found.append((str(name or "AMD GPU"), mib))
    return found


def amd_gpus(pci: list[dict[str, str]], rocm: str, sysfs: list[str]) -> list[SeenGpu]:
    """AMD GPUs: each amdgpu card in sysfs (``/sys/class/drm/cardN/device``: its PCI device
    id and ``mem_info_vram_total``), named by rocm-smi where it is installed, else by lspci."""
    names = {device["device"]: _pci_product(device["name"]) for device in pci}
    series = parse_rocm_smi(rocm)
    gpus = []
    for i, line in enumerate(line for line in sysfs if line.strip()):
        parts = line.split()
        device = parts[1].lower().removeprefix("0x") if len(parts) > 1 else ""
        vram = int(parts[2]) // 2**20 if len(parts) > 2 and parts[2].isdigit() else None
        name = series[i][0] if i < len(series) else names.get(device, "AMD GPU")
        gpus.append(SeenGpu(vendor="amd", name=name, pci_device_id=device or None, vram_mib=vram))
    if not gpus:  # no amdgpu driver bound: what the PCI bus shows
        gpus = [
            SeenGpu(vendor="amd", name=names[d["device"]], pci_device_id=d["device"], vram_mib=None)
            for d in pci
            if d["vendor"] == AMD_VENDOR
        ]
    return gpus


def apple_gpus(text: str) -> list[SeenGpu]:
    """Apple silicon GPUs from ``system_profiler SPDisplaysDataType -json``."""
    try:
        displays = json.loads(text).get("SPDisplaysDataType", []) if text.strip() else []
    except (json.JSONDecodeError, AttributeError):
        return []
    return [
        SeenGpu(
            vendor="apple",
            name=str(display.get("sppci_model") or display.get("_name")),
            pci_device_id=None,
            vram_mib=None,
        )
        for display in displays
        if "Apple" in str(display.get("spdisplays_vendor", "")) + str(display.get("sppci_model"))
    ]


def _number(text: str) -> int:
    return int(text) if text.strip().isdigit() else 0


def parse_machine(output: list[str]) -> MachineReport:
    sections = split_sections(output)

    def text(name: str) -> str:
        return "\n".join(sections.get(name, [])).strip()

    uname = text("uname").split()
    system = uname[0] if uname else ""
    release = _key_values(sections.get("os-release", []))
    sysctl = _key_values(sections.get("sysctl", []), ":")
    board = text("board").replace("\x00", "").strip()
    tegra = bool(text("tegra"))
    pci = parse_pci(sections.get("pci", []))

    if system == "Darwin":
        cpu = sysctl.get("machdep.cpu.brand_string", "")
        cores = _number(sysctl.get("hw.physicalcpu", ""))
        ram_bytes = _number(sysctl.get("hw.memsize", ""))
        os_id, os_name = "macos", f"macOS {text('sw_vers')}".strip()
        gpus = apple_gpus(text("system_profiler"))
    else:
        lscpu = _key_values(sections.get("lscpu", []), ":")
        cpu = lscpu.get("Model name", "")
        cores = _number(text("cores")) or _number(text("nproc"))
        meminfo = _key_values(sections.get("meminfo", []), ":")
        ram_bytes = _number(meminfo.get("MemTotal", "0 kB").split()[0]) * 1024
        os_id = release.get("ID", "")
        os_name = release.get("PRETTY_NAME", os_id)
        gpus = [
            *nvidia_gpus(pci, sections.get("nvidia-smi", [])),
            *amd_gpus(pci, text("rocm-smi"), sections.get("amd-sysfs", [])),
        ]
        if tegra:
            gpus.append(SeenGpu(vendor="jetson", name=board, pci_device_id=None, vram_mib=None))
    smi_rows, _errors = parse_smi_csv(sections.get("nvidia-smi", []), NVIDIA_SMI_FIELDS.split(","))
    return MachineReport(
        hostname=text("hostname"),
        system=system,
        machine=uname[1] if len(uname) > 1 else "",
        os_id=os_id,
        os_name=os_name,
        proxmox=bool(text("proxmox")),
        board=board,
        tegra=tegra,
        cpu=cpu,
        cores=cores,
        ram_gb=round(ram_bytes / 1e9, 1),
        gpus=gpus,
        nvidia_driver=next((r["driver_version"] for r in smi_rows if r["driver_version"]), None),
    )


class Machine(FactBase[MachineReport]):
    """
    The machine's system, architecture, CPU, cores, memory and GPUs, as ``gpufleet
    discover`` writes them into a fleet's hosts.yaml.

    .. code:: python

        {"hostname": "desk", "system": "Linux", "machine": "x86_64", "os_id": "debian",
         "os_name": "Debian GNU/Linux 12 (bookworm)", "proxmox": False, "board": "",
         "tegra": False, "cpu": "AMD Ryzen 9 7950X 16-Core Processor", "cores": 16,
         "ram_gb": 67.2, "gpus": [{"vendor": "nvidia", "name": "NVIDIA GeForce RTX 4090",
         "pci_device_id": "2684", "vram_mib": 24564}]}
    """

    def command(self) -> str:
        return "; ".join(
            (
                "echo '### uname'; uname -sm",
                "echo '### hostname'; hostname -s 2>/dev/null || hostname",
                "echo '### os-release'; cat /etc/os-release 2>/dev/null",
                "echo '### sw_vers'; sw_vers -productVersion 2>/dev/null",
                "echo '### proxmox'; command -v pveversion >/dev/null 2>&1 && echo yes",
                "echo '### tegra'; cat /etc/nv_tegra_release 2>/dev/null",
                "echo '### board'; tr -d '\\000' < /proc/device-tree/model 2>/dev/null; echo",
                "echo '### lscpu'; LC_ALL=C lscpu 2>/dev/null",
                # Physical cores: distinct (core, socket) pairs; a CPU without them (some
                # ARM boards) leaves the logical count below.
                "echo '### cores'; LC_ALL=C lscpu -p=CORE,SOCKET 2>/dev/null"
                " | grep -v '^#' | sort -u | wc -l",
                "echo '### nproc'; nproc 2>/dev/null",
                "echo '### meminfo'; grep '^MemTotal:' /proc/meminfo 2>/dev/null",
                "echo '### sysctl'; sysctl machdep.cpu.brand_string hw.physicalcpu hw.memsize"
                " 2>/dev/null",
                f"echo '### pci'; {{ {PCI_LINES}; }} 2>/dev/null",
                "echo '### nvidia-smi'; command -v nvidia-smi >/dev/null 2>&1 && "
                f"nvidia-smi --query-gpu={NVIDIA_SMI_FIELDS} --format=csv,noheader,nounits"
                " 2>/dev/null",
                "echo '### rocm-smi'; command -v rocm-smi >/dev/null 2>&1 && "
                "rocm-smi --showproductname --showmeminfo vram --json 2>/dev/null",
                "echo '### amd-sysfs'; for d in /sys/class/drm/card[0-9] /sys/class/drm/card[0-9]"
                '[0-9]; do [ "$(cat "$d/device/vendor" 2>/dev/null)" = 0x1002 ] || continue; '
                'echo "${d##*/} $(cat "$d/device/device") '
                '$(cat "$d/device/mem_info_vram_total" 2>/dev/null || echo -)"; done',
                "echo '### system_profiler'; command -v system_profiler >/dev/null 2>&1 && "
                "system_profiler SPDisplaysDataType -json 2>/dev/null",
                "true",
            )
        )

    def process(self, output: list[str]) -> MachineReport:
        return parse_machine(output)
