"""Edits of files other programs own: Docker's daemon.json and Proxmox container configs.

gpufleet changes only the keys and lines it is responsible for and keeps every other one as
the user wrote it. Pure functions; the operations read the file, call these, and write the
result only when it differs. Example::

    >>> merge_daemon_json('{"log-driver": "local"}', {"runtimes": {"nvidia": {...}}})
    {'log-driver': 'local', 'runtimes': {'nvidia': {...}}}
"""

from __future__ import annotations

import json
import re
from typing import Any

NVIDIA_RUNTIME = {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}
"""Docker's ``runtimes`` entry for the NVIDIA Container Runtime, as ``nvidia-ctk runtime
configure --runtime=docker`` writes it."""


class ConfigError(ValueError):
    pass


def deep_merge(base: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``ours`` laid over it; nested objects merge, everything else replaces."""
    merged = dict(base)
    for key, value in ours.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def merge_daemon_json(current: str | None, ours: dict[str, Any]) -> dict[str, Any]:
    """The daemon.json Docker should have: the current file's keys plus ours.

    Raises :class:`ConfigError` when the current file is not a JSON object: Docker would not
    start with it either, and overwriting it would lose what the user meant.
    """
    if current is None or not current.strip():
        return deep_merge({}, ours)
    try:
        existing = json.loads(current)
    except json.JSONDecodeError as error:
        raise ConfigError(f"not valid JSON ({error}); fix or remove it") from None
    if not isinstance(existing, dict):
        raise ConfigError("must hold a JSON object; fix or remove it")
    return deep_merge(existing, ours)


def render_daemon_json(settings: dict[str, Any]) -> str:
    return json.dumps(settings, indent=4) + "\n"


# --- Proxmox LXC -------------------------------------------------------------------------

_LXC_KEY = re.compile(r"^(?P<key>lxc\.[A-Za-z0-9_.\-]+)\s*(?::|=)\s*(?P<value>.*?)\s*$")
_CHAR_ALLOW = re.compile(r"^c\s+(?P<major>\d+):(?P<minor>\*|\d+)\s+\S+")
_PASSED_NODE = re.compile(r"^dev/nvidia(\d+|ctl|-uvm|-uvm-tools|-modeset)$")
"""Device nodes gpufleet passes; others (``nvidia-caps/*`` for MIG) stay the user's."""
_PVE_DEV = re.compile(r"^dev\d+\s*:\s*(?P<value>\S.*?)\s*$")
DYNAMIC_MAJORS = (range(234, 255), range(384, 512))
"""Character majors the kernel hands out at module load (Documentation/admin-guide/devices)."""


def passthrough_lines(gpus: list[int], majors: dict[str, int], every_gpu: bool) -> list[str]:
    """Config lines giving a container the GPUs ``gpus`` with the host's device majors.

    ``majors`` comes from the host's /proc/devices: nvidia-uvm's major is handed out at
    module load and differs between hosts and driver versions.
    """
    frontend = majors.get("nvidia-frontend") or majors.get("nvidia") or 195
    uvm = majors.get("nvidia-uvm")
    if uvm is None:
        raise ConfigError(
            "the host has no nvidia-uvm major in /proc/devices (module not loaded); load it "
            "with 'nvidia-modprobe -c0 -u' or reboot after the driver install"
        )
    allow = "lxc.cgroup2.devices.allow: c {}:{} rwm"
    lines = []
    if every_gpu:
        lines.append(allow.format(frontend, "*"))
    else:
        lines += [allow.format(frontend, index) for index in gpus]
        lines += [allow.format(frontend, 255), allow.format(frontend, 254)]  # ctl, modeset
    lines.append(allow.format(uvm, "*"))
    nodes = [f"nvidia{index}" for index in gpus]
    nodes += ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"]
    lines += [f"lxc.mount.entry: /dev/{n} dev/{n} none bind,optional,create=file" for n in nodes]
    return lines


def _is_managed(line: str, nvidia_majors: set[int]) -> bool:
    match = _LXC_KEY.match(line)
    if not match:
        return False
    key, value = match["key"], match["value"]
    if key == "lxc.mount.entry":
        parts = value.split()
        return len(parts) > 1 and bool(_PASSED_NODE.match(parts[1]))
    if key in ("lxc.cgroup2.devices.allow", "lxc.cgroup.devices.allow"):
        allow = _CHAR_ALLOW.match(value)
        return allow is not None and int(allow["major"]) in nvidia_majors
    return False


def pve_dev_paths(lines: list[str]) -> set[str]:
    """The host devices Proxmox's own ``devN:`` entries pass (PVE 8.1+):
    ``dev0: /dev/nvidia0`` or ``dev1: path=/dev/nvidiactl,gid=44,mode=0666``. Proxmox creates
    each node in the container and allows it in the device cgroup itself."""
    paths = set()
    for line in lines:
        match = _PVE_DEV.match(line)
        if not match:
            continue
        for position, option in enumerate(match["value"].split(",")):
            if option.startswith("path="):
                paths.add(option.removeprefix("path="))
            elif position == 0 and "=" not in option:
                paths.add(option)
    return paths


def _not_passed_by_pve(lines: list[str], passed: set[str], majors: dict[str, int]) -> list[str]:
    """``lines`` less what ``devN:`` entries already do: the mounts of nodes they pass, and
    a major's cgroup rules once none of that major's nodes is left to mount."""
    mounts = [line for line in lines if line.startswith("lxc.mount.entry:")]
    left = [line.split()[1] for line in mounts if line.split()[1] not in passed]
    uvm_left = any(node.startswith("/dev/nvidia-uvm") for node in left)
    frontend_left = any(not node.startswith("/dev/nvidia-uvm") for node in left)
    uvm = majors.get("nvidia-uvm")
    kept = []
    for line in lines:
        if line.startswith("lxc.mount.entry:"):
            if line.split()[1] in left:
                kept.append(line)
            continue
        allow = _CHAR_ALLOW.match(line.partition(":")[2].strip())
        is_uvm = allow is not None and int(allow["major"]) == uvm
        if uvm_left if is_uvm else frontend_left:
            kept.append(line)
    return kept


def merge_lxc_conf(text: str, lines: list[str], majors: dict[str, int]) -> tuple[str, list[str]]:
    """A Proxmox container config with ``lines`` as its NVIDIA passthrough.

    Only the current config (before the first ``[snapshot]`` section) is edited. Lines that
    pass the GPUs (mounts onto ``dev/nvidia<N>``, ``nvidiactl``, ``nvidia-uvm*``,
    ``nvidia-modeset``; cgroup rules for the frontend and nvidia-uvm majors in ``majors``) are
    replaced by ``lines`` where the first of them stood, or appended; every other line stays
    as it is, comments and order included. Returns the text and notes for the operator
    (cgroup rules for dynamic majors no NVIDIA device holds now: a stale uvm major?).
    Devices Proxmox's own ``devN:`` entries pass are not passed a second time.
    """
    managed = {majors.get("nvidia-frontend") or majors.get("nvidia") or 195}
    managed |= {majors["nvidia-uvm"]} if "nvidia-uvm" in majors else set()
    all_lines = text.splitlines()
    split = next((i for i, line in enumerate(all_lines) if line.startswith("[")), len(all_lines))
    current, snapshots = all_lines[:split], all_lines[split:]
    passed = pve_dev_paths(current)
    if passed:
        lines = _not_passed_by_pve(lines, passed, majors)
    kept: list[str] = []
    insert_at: int | None = None
    for line in current:
        if _is_managed(line, managed):
            insert_at = len(kept) if insert_at is None else insert_at
        else:
            kept.append(line)
    if insert_at is None:
        insert_at = len(kept)
        while insert_at and not kept[insert_at - 1].strip():
            insert_at -= 1  # before the blank line that separates a snapshot section
    merged = kept[:insert_at] + lines + kept[insert_at:] + snapshots
    notes = []
    for line in kept:
        match = _LXC_KEY.match(line)
        allow = _CHAR_ALLOW.match(match["value"]) if match and "devices.allow" in line else None
        major = int(allow["major"]) if allow else 0
        if major not in majors.values() and any(major in span for span in DYNAMIC_MAJORS):
            notes.append(
                f"kept {line!r}: major {major} is a dynamic major that no NVIDIA "
                "device holds now; if it is an old nvidia-uvm major, remove the line"
            )
    return "\n".join(merged) + "\n", notes
