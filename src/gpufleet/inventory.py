"""Inventory + group_data -> validated :class:`~gpufleet.models.HostSpec` per host.

Validation runs once, before any host is contacted:

* ``gpufleet validate inventory/homelab.py`` loads the inventory exactly as pyinfra's CLI does
  and checks it without opening a connection;
* ``pyinfra inventory/x.py deploys/y.py`` runs the same check while it loads the inventory
  (its last line is ``check_inventory(__file__)``), before it connects to any host.

Deploys then read ``host_spec()`` and never raw ``host.data``.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.inventory import Inventory
from pyinfra.api.state import State
from pyinfra.context import ctx_state

from gpufleet.catalogue import load_catalogue, suggest
from gpufleet.checks import Problem, check_fleet, check_host
from gpufleet.connection import use_tcp_nodelay
from gpufleet.exposure import decide_addresses, decide_fleet
from gpufleet.fields import CONTROL_CHARACTER, PATTERN_HINTS, SECRET_REFERENCE_PATTERN
from gpufleet.models import HOST_GROUPS, MOVED_KEYS, HostSpec

PYINFRA_KEY_PREFIXES = ("ssh_", "_", "winrm_", "docker_", "chroot_", "local_")
"""host.data keys that belong to pyinfra's connectors and global arguments."""

SECRET_FIELDS = ("secrets", "alertmanager.webhooks", "gateway.clients")
"""Fields whose rejected value is never echoed: a key, a URL that carries a token."""


BEFORE_CONNECT = "no host was contacted"
BEFORE_CHANGES = "stopped before any change"


class InventoryError(PyinfraError):
    """An inventory that cannot be deployed; the message lists every problem."""

    def __init__(self, source: str, problems: list[Problem], stage: str = BEFORE_CONNECT):
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{source}: {count}, {stage}:\n{lines}")


def project_root(inventory_path: Path) -> Path:
    """The folder holding ``group_data/`` for an inventory (its nearest ancestor with one)."""
    for folder in inventory_path.resolve().parents:
        if (folder / "group_data").is_dir():
            return folder
    return Path.cwd()


def load_inventory(path: str | Path) -> Inventory:
    """Build the Inventory exactly as ``pyinfra PATH ...`` would, without connecting."""
    from pyinfra_cli.inventory import make_inventory

    inventory_path = Path(path)
    if not inventory_path.is_file():
        raise InventoryError(str(path), [Problem("-", "inventory", "no such inventory file")])
    with ctx_state.use(State()):
        return make_inventory(str(inventory_path), cwd=str(project_root(inventory_path)))


def gpufleet_data(data: dict[str, Any]) -> dict[str, Any]:
    """The part of ``host.data`` that is gpufleet's contract (connector keys left out)."""
    return {k: v for k, v in data.items() if not k.startswith(PYINFRA_KEY_PREFIXES)}


def _field(loc: tuple[int | str, ...]) -> str:
    field = ""
    for part in loc:
        if part == "[key]":  # pydantic's mark: the dict key before it is what is refused
            field += " (the key)"
        elif isinstance(part, str) and not re.match(r"^[A-Za-z0-9_.-]+$", part):
            part = f"[{part!r}]"  # a dict key as given, escaped: it may be what is refused
            field += part
        else:
            field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else part)
    return field or "host data"


def _problems_from(name: str, error: ValidationError) -> list[Problem]:
    problems = []
    for detail in error.errors():
        field = _field(detail["loc"])
        message = detail["msg"].removeprefix("Value error, ")
        if detail["type"] == "extra_forbidden" and str(detail["loc"][-1]) in MOVED_KEYS:
            new = MOVED_KEYS[str(detail["loc"][-1])]
            section, _, key = new.partition(".")
            message = f"this key has moved to {new}; write {section}: {{'{key}': ...}} instead"
        elif detail["type"] == "extra_forbidden":
            key = str(detail["loc"][-1])
            siblings = _sibling_fields(detail["loc"])
            if len(detail["loc"]) == 1:  # a misspelt old flat key: name where it lives now
                siblings += list(MOVED_KEYS)
            hint = suggest(key, siblings)
            for flat, nested in MOVED_KEYS.items():
                hint = hint.replace(f"{flat!r}", f"{nested!r}")
            message = f"unknown key{hint}; remove it or fix its spelling"
        elif (detail.get("ctx") or {}).get("pattern") in PATTERN_HINTS:
            message = PATTERN_HINTS[detail["ctx"]["pattern"]]
            if _may_echo(field, detail):
                message += f" (got {detail['input']!r})"
        elif detail["type"] == "missing":
            message = "required and missing; add it to the host's data or its group_data"
        elif _may_echo(field, detail):
            message += f" (got {detail['input']!r})"
        problems.append(Problem(name, field, message))
    return problems


def _may_echo(field: str, detail: Any) -> bool:
    """Whether a refused value may be shown: never where a secret reference belongs (a
    literal key put in its place is the secret), never with a control character in it."""
    value = detail.get("input")
    if not isinstance(value, str | int | float) or field.startswith(SECRET_FIELDS):
        return False
    if (detail.get("ctx") or {}).get("pattern") == SECRET_REFERENCE_PATTERN:
        return False
    return not (isinstance(value, str) and CONTROL_CHARACTER.search(value))


def _sibling_fields(loc: tuple[int | str, ...]) -> list[str]:
    """Field names valid next to the unknown key at ``loc``."""
    model: Any = HostSpec
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        inner = getattr(annotation, "__args__", (annotation,))[0]
        model = inner if hasattr(inner, "model_fields") else annotation
    return list(getattr(model, "model_fields", {}))


def spec_for(name: str, groups: list[str], data: dict[str, Any]) -> HostSpec:
    """Validate one host's data; raises pydantic's ValidationError."""
    return HostSpec.model_validate({**gpufleet_data(data), "name": name, "groups": groups})


def validate(inventory: Inventory, source: str) -> dict[str, HostSpec]:
    """Specs for every host, or one InventoryError listing every problem found."""
    catalogue = load_catalogue()
    inventory_group = Path(source).stem
    specs: dict[str, HostSpec] = {}
    problems: list[Problem] = []
    for host in inventory:
        groups = [g for g in host.groups if g != inventory_group]
        try:
            spec = spec_for(host.name, groups, host.data.dict())
        except ValidationError as error:
            problems += _problems_from(host.name, error)
            continue
        problems += check_host(spec, catalogue)
        specs[host.name] = spec
    if not problems:
        problems += check_fleet(specs)
    if problems:
        raise InventoryError(source, problems)
    return decide_fleet(specs)


def validate_file(path: str | Path) -> dict[str, HostSpec]:
    """Load and validate an inventory file; contacts no host."""
    token = _checking.set(True)  # the inventory's own check_inventory() call is this one
    try:
        return validate(load_inventory(path), str(path))
    finally:
        _checking.reset(token)


_checking: ContextVar[bool] = ContextVar("gpufleet_inventory_checking", default=False)


def check_inventory(path: str) -> None:
    """Validate the inventory file that calls this, with its group_data, as pyinfra loads it.

    The last line of every gpufleet inventory, so that ``pyinfra INVENTORY ...`` stops with one
    message before it connects to any host::

        check_inventory(__file__)
    """
    if not _checking.get():
        validate_file(path)
    use_tcp_nodelay()


_validated: dict[str, HostSpec] = {}


def host_spec() -> HostSpec:
    """The validated spec of the host a deploy is running for.

    The inventory was checked as it loaded (``check_inventory``); this checks the host again
    as the deploy sees it (``--data`` overrides, inventories without the check) and stops the
    deploy before it plans any change.
    """
    from pyinfra import host

    if host.name not in _validated:
        groups = [g for g in host.groups if g in (*HOST_GROUPS, "all")]
        try:
            spec = spec_for(host.name, groups, host.data.dict())
        except ValidationError as error:
            problems = _problems_from(host.name, error)
            raise InventoryError("host data", problems, BEFORE_CHANGES) from None
        problems = check_host(spec, load_catalogue())
        if problems:
            raise InventoryError("host data", problems, BEFORE_CHANGES)
        _validated[host.name] = decide_addresses(spec, _undecided_fleet())
    return _validated[host.name]


def spec_of(name: str) -> HostSpec:
    """The validated spec of another host of the inventory a deploy runs against."""
    from pyinfra import host

    other = host.inventory.get_host(name)
    groups = [g for g in other.groups if g in (*HOST_GROUPS, "all")]
    return spec_for(other.name, groups, other.data.dict())


def use_spec(spec: HostSpec) -> None:
    """Make ``host_spec()`` return ``spec`` for the rest of this run (a rebuild deploys the
    host with the hardware its facts show, not the inventory's)."""
    _validated[spec.name] = spec


_fleet: dict[str, HostSpec] = {}


def fleet_specs() -> dict[str, HostSpec]:
    """Every host of the inventory a deploy runs against, validated once per run: what the
    router, gateway, Vault and monitoring deploys derive routes, secrets and targets from."""

    if not _fleet:
        _fleet.update(decide_fleet(_undecided_fleet()))
    return _fleet


_undecided: dict[str, HostSpec] = {}


def _undecided_fleet() -> dict[str, HostSpec]:
    """Every host as the inventory gives it, before the addresses it leaves out are decided
    (the decision reads who uses which host)."""
    from pyinfra import host

    if not _undecided:
        _undecided.update({other.name: spec_of(other.name) for other in host.inventory})
    return _undecided


def forget_fleet() -> None:
    """Drop the hosts validated for a run (a later run in the same process plans another)."""
    for cache in (_validated, _fleet, _undecided):
        cache.clear()
