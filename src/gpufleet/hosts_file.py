"""``hosts.yaml``: a fleet's hosts as data, beside the inventory that reads them.

``gpufleet init`` writes an inventory whose groups come from this file, and ``gpufleet
discover`` adds and updates hosts in it, so a host joins the fleet without an edit to Python::

    hosts:
      desk:
        groups: [gpu_nodes]
        ssh_hostname: 192.168.1.20
        ssh_user: root
        hardware: {cpu: AMD Ryzen 9 7950X, cores: 16, ram_gb: 64,
                   accelerators: [{kind: nvidia, model: RTX 4090}]}

Every key but ``groups`` is the host's data, as the inventory reference describes it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from gpufleet.checks import Problem
from gpufleet.fields import NAME_PATTERN

HOSTS_FILE = "hosts.yaml"
HEADER = """\
# This fleet's hosts, read by inventory.py beside this file. `gpufleet discover ADDRESS`
# adds a host here (or updates one already here); edit freely. Each host lists its groups
# (gpu_nodes, cpu_nodes, proxmox_hosts, edge, router, gateway, monitoring, vault) and its
# data: every key `gpufleet reference` describes (models, hardware, secrets ...).
"""


def hosts_path(inventory_file: str | Path) -> Path:
    """The hosts.yaml beside an inventory file."""
    return Path(inventory_file).resolve().parent / HOSTS_FILE


def read_hosts(path: Path) -> dict[str, dict[str, Any]]:
    """Hosts by name from a hosts.yaml (none when the file does not exist yet); an
    :class:`~gpufleet.inventory.InventoryError` naming the file and host when it is not
    the shape above."""
    from gpufleet.inventory import InventoryError

    if not path.exists():
        return {}
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = Problem("-", where, "not valid YAML; fix that line")
        raise InventoryError(str(path), [problem]) from None
    hosts = content.get("hosts") if isinstance(content, dict) else None
    if hosts is None:
        hosts = {}
    if not isinstance(content, dict) or not isinstance(hosts, dict):
        fix = "the file must be a mapping with one key, hosts: {NAME: {groups: [...], ...}}"
        raise InventoryError(str(path), [Problem("-", str(path), fix)])
    problems = []
    for name, entry in hosts.items():
        if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
            problems.append(Problem(str(name), "name", "a host name is letters, digits, '-'"))
        elif not isinstance(entry, dict):
            problems.append(Problem(name, "hosts.yaml", "a host is a mapping of its data"))
        elif not _group_list(entry.get("groups")):
            problems.append(
                Problem(
                    name,
                    "groups",
                    "list the host's groups, e.g. groups: [gpu_nodes] (or cpu_nodes)",
                )
            )
    if problems:
        raise InventoryError(str(path), problems)
    return hosts


def _group_list(groups: Any) -> bool:
    return (
        isinstance(groups, list)
        and bool(groups)
        and all(isinstance(group, str) and group.isidentifier() for group in groups)
    )


def inventory_groups(inventory_file: str | Path) -> dict[str, list[Any]]:
    """pyinfra's inventory groups from the hosts.yaml beside ``inventory_file``: a host's data
    in its first group, its name alone in the others (how a host joins more groups without
    pyinfra merging two copies of its data)."""
    groups: dict[str, list[Any]] = {}
    for name, entry in read_hosts(hosts_path(inventory_file)).items():
        data = {key: value for key, value in entry.items() if key != "groups"}
        first, *others = entry["groups"]
        groups.setdefault(first, []).append((name, data))
        for group in others:
            groups.setdefault(group, []).append(name)
    return groups


def yaml_text(hosts: dict[str, dict[str, Any]]) -> str:
    """hosts.yaml's text for ``hosts``: the header, then the hosts in their order."""
    return HEADER + yaml.safe_dump(
        {"hosts": hosts}, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def write_hosts(path: Path, hosts: dict[str, dict[str, Any]]) -> None:
    """Write hosts.yaml (through a file renamed over it: a reader never sees half of it)."""
    text = yaml_text(hosts)
    staged = path.with_name(f".{path.name}.new")
    staged.write_text(text, encoding="utf-8")
    staged.replace(path)


UNSEEN_KINDS = ("amd_npu", "intel_npu")
"""Accelerators discovery cannot read from a host: kept as the host's data declares them."""


def merge_host(
    hosts: dict[str, dict[str, Any]],
    name: str,
    entry: dict[str, Any],
    suggested: list[str],
    chosen: list[str],
) -> tuple[str, str]:
    """Put a discovered host into ``hosts``. A new host gets the ``chosen`` groups, else the
    ``suggested`` ones. A host already there (by name, or by the address it is reached at)
    is updated, keeping its name, its groups (plus any ``chosen``), the hardware keys
    discovery does not read, the accelerators it cannot see (NPUs) and everything else
    (models, secrets ...). Returns (its name, "added" or "updated")."""
    address = entry.get("ssh_hostname")
    existing = name if name in hosts else None
    if existing is None:
        existing = next(
            (n for n, e in hosts.items() if address and e.get("ssh_hostname") == address), None
        )
    if existing is None:
        hosts[name] = {"groups": list(chosen or suggested), **entry}
        return name, "added"
    current = hosts[existing]
    groups = list(dict.fromkeys([*current.get("groups", []), *chosen]))
    declared = current.get("hardware", {})
    kept = [a for a in declared.get("accelerators", []) if a.get("kind") in UNSEEN_KINDS]
    hardware = {**declared, **entry.get("hardware", {})}
    hardware["accelerators"] = [*hardware.get("accelerators", []), *kept]
    current.update({**entry, "hardware": hardware})
    current["groups"] = groups
    hosts[existing] = {"groups": groups, **{k: v for k, v in current.items() if k != "groups"}}
    return existing, "updated"
