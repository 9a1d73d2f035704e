"""Which hosts a ``--limit`` names, exactly as pyinfra's own ``--limit`` decides.

pyinfra takes ``--limit`` many times; each pattern is a group name if the inventory has such a
group, otherwise an fnmatch glob over host names (``gpu-*``); the hosts are the union of every
pattern's matches, and a pattern that matches nothing is warned about. gpufleet's subcommands use
this one function so that ``gpufleet preview INV --limit X`` and ``pyinfra INV deploy.py --limit X``
always mean the same hosts. Where nothing at all is left, gpufleet stops with an error instead of
quietly doing nothing (pyinfra would connect to no host and report success).

    >>> specs = {"gpu-1": ("gpu_nodes",), "gpu-2": ("gpu_nodes",), "pi5": ("router",)}
    >>> select_hosts(specs, ["router", "gpu-2"]).names
    ['gpu-2', 'pi5']
    >>> select_hosts(specs, ["gpu-*"]).names
    ['gpu-1', 'gpu-2']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Any


class NoHostsSelected(ValueError):
    """Every pattern given matched no host: the command has nothing to do."""


@dataclass(frozen=True)
class Selection:
    names: list[str]
    """The chosen hosts, in the inventory's order."""
    unmatched: list[str] = field(default_factory=list)
    """Patterns that matched no host or group (pyinfra warns about each)."""

    def warnings(self, option: str = "--limit") -> list[str]:
        return [f"No host matches found for {option} pattern: {p}" for p in self.unmatched]


def _groups_of(value: Any) -> tuple[str, ...]:
    """A host's groups, from a HostSpec (``.groups``) or a plain tuple of group names."""
    groups = getattr(value, "groups", value)
    return tuple(groups or ())


def pattern_matches(pattern: str, hosts: Mapping[str, Any]) -> list[str]:
    """The hosts one pattern names: the group of that name if there is one, otherwise the host
    names the glob matches (pyinfra's ``_get_inventory_pattern_matches``)."""
    in_group = [name for name, value in hosts.items() if pattern in _groups_of(value)]
    if in_group:
        return in_group
    return [name for name in hosts if fnmatch(name, pattern)]


def select_hosts(
    hosts: Mapping[str, Any],
    limit: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    *,
    source: str = "the inventory",
) -> Selection:
    """The hosts of ``hosts`` (name -> HostSpec or groups) chosen by ``limit`` minus ``exclude``.

    No ``limit`` means every host. Raises :class:`NoHostsSelected` when hosts were asked for and
    none is left, naming the patterns and where to look."""
    patterns = [p for p in (limit or ()) if p]
    unmatched: list[str] = []
    if patterns:
        chosen: set[str] = set()
        for pattern in patterns:
            found = pattern_matches(pattern, hosts)
            if not found:
                unmatched.append(pattern)
            chosen.update(found)
    else:
        chosen = set(hosts)
    for pattern in exclude or ():
        found = pattern_matches(pattern, hosts)
        if not found:
            unmatched.append(pattern)
        chosen.difference_update(found)
    names = [name for name in hosts if name in chosen]
    if not names and (patterns or exclude):
        asked = " ".join(f"--limit {p}" for p in patterns)
        asked += "".join(f" --exclude {p}" for p in exclude or ())
        groups = sorted({g for value in hosts.values() for g in _groups_of(value)})
        raise NoHostsSelected(
            f"{asked.strip()}: no host of {source} is left (hosts: {', '.join(hosts) or 'none'}; "
            f"groups: {', '.join(groups) or 'none'}); give a host name, a group name or a glob "
            "such as 'gpu-*', one --limit per pattern"
        )
    return Selection(names, unmatched)
