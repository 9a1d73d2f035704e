"""After a hardware swap: what the host really has, how that differs from the inventory, and
which placements move. Pure logic; ``deploys/rebuild.py`` feeds it the host's facts.

Example::

    >>> hardware_differences(declared, detected)
    ['hardware.accelerators: inventory RTX 3080 x1, host RTX 4090 x1']
"""

from __future__ import annotations

from collections import Counter

from gpufleet.catalogue import Catalogue
from gpufleet.facts.gpu import PciGpu
from gpufleet.models import Accelerator, Hardware, HostSpec
from gpufleet.planner import HostPlan

RAM_TOLERANCE = 0.12
"""MemTotal is below the installed size (firmware, kernel reservations): within 12% is equal."""


def detected_hardware(
    declared: Hardware, gpus: list[PciGpu], cores: int, ram_gb: float, catalogue: Catalogue
) -> tuple[Hardware, list[str]]:
    """The hardware the facts show, as host data, and the cards the catalogue cannot name.

    Accelerators other than discrete NVIDIA GPUs (NPUs, iGPUs, Apple) cannot be read from the
    PCI bus this way and are kept as declared."""
    names: Counter[str] = Counter()
    unknown = []
    for gpu in gpus:
        entry = catalogue.accelerator_by_pci_id(gpu["device_id"])
        if entry is None:
            unknown.append(f"{gpu['name']} [10de:{gpu['device_id']}] at {gpu['slot']}")
        else:
            names[entry.name] += 1
    others = [a for a in declared.accelerators if a.kind != "nvidia"]
    nvidia = [Accelerator(kind="nvidia", model=name, count=n) for name, n in names.items()]
    ram = (
        declared.ram_gb
        if abs(ram_gb - declared.ram_gb) <= RAM_TOLERANCE * declared.ram_gb
        else ram_gb
    )
    detected = declared.model_copy(
        update={"cores": cores or declared.cores, "ram_gb": ram, "accelerators": [*nvidia, *others]}
    )
    return detected, unknown


def _cards(hardware: Hardware) -> str:
    cards = [f"{a.model} x{a.count}" for a in hardware.accelerators if a.kind == "nvidia"]
    return ", ".join(cards) or "no NVIDIA GPU"


def hardware_differences(declared: Hardware, detected: Hardware) -> list[str]:
    """One line per field where the host differs from its inventory entry."""
    lines = []
    if _cards(declared) != _cards(detected):
        lines.append(
            f"hardware.accelerators: inventory {_cards(declared)}, host {_cards(detected)}"
        )
    if declared.ram_gb != detected.ram_gb:
        lines.append(f"hardware.ram_gb: inventory {declared.ram_gb:g}, host {detected.ram_gb:g}")
    if declared.cores != detected.cores:
        lines.append(f"hardware.cores: inventory {declared.cores}, host {detected.cores}")
    return lines


def placement_moves(before: HostPlan, after: HostPlan) -> list[str]:
    """Placements whose place or speed bound changes with the detected hardware."""
    moves = []
    for old, new in zip(before.placements, after.placements, strict=True):
        old_place = f"{old.where} ({old.gpu_layers}/{old.layers} layers on GPU)"
        new_place = f"{new.where} ({new.gpu_layers}/{new.layers} layers on GPU)"
        if old_place != new_place or old.bound_tok_s != new.bound_tok_s:
            moves.append(
                f"{old.model} ({old.engine}): {old_place} -> {new_place}, "
                f"bound {old.bound_tok_s} -> {new.bound_tok_s} tok/s"
            )
    return moves


def replanned(spec: HostSpec, detected: Hardware) -> HostSpec:
    """The host's spec with the hardware it really has."""
    return spec.model_copy(update={"hardware": detected})
