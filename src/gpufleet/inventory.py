"""Inventory + group_data -> validated :class:`~gpufleet.models.HostSpec` per host.

Validation runs once, before any host is contacted:

* ``gpufleet validate inventory/homelab.py`` loads the inventory exactly as pyinfra's CLI does
  and checks it without opening a connection;
* ``pyinfra inventory/x.py deploys/y.py`` runs the same check from the repository's
  ``config.py`` (pyinfra loads it before connecting), through :class:`Preflight`.

Deploys then read ``host_spec()`` and never raw ``host.data``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.inventory import Inventory
from pyinfra.api.state import BaseStateCallback, State
from pyinfra.context import ctx_state

from gpufleet.catalogue import load_catalogue
from gpufleet.checks import Problem, check_host, suggest
from gpufleet.models import HostSpec

PYINFRA_KEY_PREFIXES = ("ssh_", "_", "winrm_", "docker_", "chroot_", "local_")
"""host.data keys that belong to pyinfra's connectors and global arguments."""

SECRET_FIELDS = ("secrets",)


class InventoryError(PyinfraError):
    """An inventory that cannot be deployed; the message lists every problem."""

    def __init__(self, source: str, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{source}: {count}, no host was contacted:\n{lines}")


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
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    return field or "host data"


def _problems_from(name: str, error: ValidationError) -> list[Problem]:
    problems = []
    for detail in error.errors():
        field = _field(detail["loc"])
        message = detail["msg"].removeprefix("Value error, ")
        if detail["type"] == "extra_forbidden":
            key = str(detail["loc"][-1])
            siblings = _sibling_fields(detail["loc"])
            message = f"unknown key{suggest(key, siblings)}; remove it or fix its spelling"
        elif detail["type"] == "missing":
            message = "required and missing; add it to the host's data or its group_data"
        elif not field.startswith(SECRET_FIELDS) and isinstance(
            detail.get("input"), str | int | float
        ):
            message += f" (got {detail['input']!r})"
        problems.append(Problem(name, field, message))
    return problems


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
    if problems:
        raise InventoryError(source, problems)
    return specs


def validate_file(path: str | Path) -> dict[str, HostSpec]:
    """Load and validate an inventory file; contacts no host."""
    return validate(load_inventory(path), str(path))


def running_inventory_source() -> str:
    """The inventory argument of the running ``pyinfra`` command ("inventory" outside one)."""
    import click

    context = click.get_current_context(silent=True)
    inventory = context.params.get("inventory") if context else None
    return str(inventory) if inventory else "inventory"


class Preflight(BaseStateCallback):
    """Stops a pyinfra run before any connection when the inventory is invalid.

    pyinfra calls ``host_before_connect`` for each host before opening its connection; the
    first call validates the whole inventory, and every call raises while it is invalid, so no
    host is contacted. Installed by the repository's ``config.py``::

        state.add_callback_handler(Preflight())
    """

    def __init__(self) -> None:
        self.error: InventoryError | None = None
        self.checked = False

    def host_before_connect(self, state: State, host: Any) -> None:  # type: ignore[override]
        if not self.checked:
            self.checked = True
            try:
                _validated.update(validate(state.inventory, running_inventory_source()))
            except InventoryError as error:
                self.error = error
        if self.error is not None:
            raise self.error


_validated: dict[str, HostSpec] = {}


def host_spec() -> HostSpec:
    """The validated spec of the host a deploy is running for.

    Validates the whole inventory on first use when no :class:`Preflight` did (a deploy run
    through pyinfra's API, or from a folder without ``config.py``).
    """
    from pyinfra import host, state

    if host.name not in _validated:
        _validated.update(validate(state.inventory, running_inventory_source()))
    return _validated[host.name]
