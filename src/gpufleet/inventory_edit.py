"""Edits to an inventory file, written as a patch its owner reads and applies.

The placement solver proposes new ``models`` lists; this module finds each host's entry in the
inventory's Python source (``("name", {...})``, the form pyinfra's inventories take) and
rewrites that entry's ``"models"`` value, or adds one, leaving every other byte of the file as
it was. The result is a unified diff (``git apply`` or ``patch -p1`` applies it); nothing is
written to the inventory itself. A host whose data is not a dict literal (built by a loop or a
function) cannot be edited in place: it is returned, for the owner to change by hand.
"""

from __future__ import annotations

import ast
import difflib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gpufleet.models import ModelPlacement


@dataclass
class InventoryPatch:
    diff: str
    """The unified diff, ``a/PATH`` and ``b/PATH`` relative to the folder it was made in."""
    by_hand: dict[str, str]
    """Host -> the ``"models"`` entry to write, for hosts the patch could not edit."""


def placement_fields(placement: ModelPlacement) -> dict[str, object]:
    """The fields a placement sets, model and alias first, as an inventory writes them."""
    fields = placement.model_dump(mode="json", exclude_defaults=True)
    fields.setdefault("model", placement.model)
    order = ["model", "alias", *[name for name in fields if name not in ("model", "alias")]]
    return {name: fields[name] for name in order if name in fields}


def placement_literal(placement: ModelPlacement) -> str:
    """One placement as a Python dict literal of the fields it sets."""
    fields = placement_fields(placement)
    return "{" + ", ".join(f"{json.dumps(k)}: {_literal(v)}" for k, v in fields.items()) + "}"


def _literal(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a Python string literal too
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(item) for item in value) + "]"
    raise TypeError(f"no literal for {type(value).__name__}")


def models_literal(placements: Iterable[ModelPlacement], indent: int) -> str:
    """A ``models`` list, one placement a line, its lines indented under a key at ``indent``."""
    items = [placement_literal(p) for p in placements]
    if not items:
        return "[]"
    inner = " " * (indent + 4)
    return "[\n" + "".join(f"{inner}{item},\n" for item in items) + " " * indent + "]"


def models_patch(path: str | Path, models: dict[str, tuple[ModelPlacement, ...]]) -> InventoryPatch:
    """A patch to the inventory at ``path`` that gives each host in ``models`` that list."""
    path = Path(path)
    source = path.read_bytes()
    tree = ast.parse(source, filename=str(path))
    entries = _host_entries(tree)
    edits: list[tuple[int, int, bytes]] = []
    by_hand: dict[str, str] = {}
    starts = _line_starts(source)
    for host, placements in models.items():
        data = entries.get(host)
        if data is None:
            by_hand[host] = f'"models": {models_literal(placements, 0)}'
            continue
        keys = [k.value if isinstance(k, ast.Constant) else None for k in data.keys]
        if "models" in keys:
            value = data.values[keys.index("models")]
            indent = _indent_of(source, starts, value)  # the line its key starts too
            text = models_literal(placements, indent)
            edits.append(
                (_offset(starts, value, end=False), _offset(starts, value, end=True), text.encode())
            )
        elif data.values:
            last = data.values[-1]
            key = data.keys[-1]
            indent = _indent_of(source, starts, key if key is not None else last)
            at = _offset(starts, last, end=True)
            text = f',\n{" " * indent}"models": {models_literal(placements, indent)}'
            edits.append((at, at, text.encode()))
        else:
            at = _offset(starts, data, end=True) - 1  # inside the braces of {}
            text = f'"models": {models_literal(placements, 0)}'
            edits.append((at, at, text.encode()))
    patched = source
    for start, end, inserted in sorted(edits, reverse=True):
        patched = patched[:start] + inserted + patched[end:]
    ast.parse(patched, filename=str(path))  # a patch that breaks the file is a bug here
    diff = _unified(path, source.decode(), patched.decode())
    diff += _hosts_file_diff(path, models, by_hand)
    return InventoryPatch(diff, by_hand)


def _unified(path: Path, before: str, after: str) -> str:
    shown = _shown(path)
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"a/{shown}",
        tofile=f"b/{shown}",
    )
    return "".join(lines)


def _hosts_file_diff(
    inventory: Path, models: dict[str, tuple[ModelPlacement, ...]], by_hand: dict[str, str]
) -> str:
    """The hosts of ``by_hand`` that live in the hosts.yaml beside the inventory (``gpufleet
    init``'s fleets keep their hosts there): their ``models`` set in that file, as a diff.
    The file is written as ``gpufleet discover`` writes it (its header, then the hosts)."""
    from gpufleet.hosts_file import hosts_path, read_hosts, yaml_text

    path = hosts_path(inventory)
    hosts = read_hosts(path)
    mine = [name for name in by_hand if name in hosts]
    if not mine:
        return ""
    for name in mine:
        hosts[name]["models"] = [placement_fields(p) for p in models[name]]
        del by_hand[name]
    return _unified(path, path.read_text(encoding="utf-8"), yaml_text(hosts))


def _host_entries(tree: ast.AST) -> dict[str, ast.Dict]:
    """Each host's data dict, where the file writes ``("name", {...})``; the first wins."""
    entries: dict[str, ast.Dict] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Tuple)
            and len(node.elts) == 2
            and isinstance(node.elts[0], ast.Constant)
            and isinstance(node.elts[0].value, str)
            and isinstance(node.elts[1], ast.Dict)
        ):
            entries.setdefault(node.elts[0].value, node.elts[1])
    return entries


def _line_starts(source: bytes) -> list[int]:
    starts, at = [0], 0
    for line in source.splitlines(keepends=True):
        at += len(line)
        starts.append(at)
    return starts


def _offset(starts: list[int], node: ast.AST, end: bool) -> int:
    """Byte offset of a node's start or end (ast's columns count UTF-8 bytes)."""
    if end:
        return starts[node.end_lineno - 1] + node.end_col_offset  # type: ignore[attr-defined]
    return starts[node.lineno - 1] + node.col_offset  # type: ignore[attr-defined]


def _indent_of(source: bytes, starts: list[int], node: ast.AST) -> int:
    """The indentation of the line a node starts on."""
    line = source[starts[node.lineno - 1] : starts[node.lineno]]  # type: ignore[attr-defined]
    return len(line) - len(line.lstrip(b" "))


def _shown(path: Path) -> str:
    """The path as the patch names it: relative to this folder where the file is inside it
    (``patch -p1`` from here applies it), else absolute (``patch FILE`` applies it)."""
    resolved = path.resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)
