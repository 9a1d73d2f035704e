"""Inventory + group_data -> validated :class:`~gpufleet.models.HostSpec` per host.

Validation runs once, before any host is contacted:

* ``gpufleet validate inventory/homelab.py`` loads the inventory exactly as pyinfra's CLI does
  and checks it without opening a connection;
* ``pyinfra inventory/x.py deploys/y.py`` runs the same check while it loads the inventory
  (its last line is ``check_inventory(__file__)``), before it connects to any host.

Deploys then read ``host_spec()`` and never raw ``host.data``.
"""

from __future__ import annotations

import functools
import os
import re
import traceback
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.inventory import Inventory
from pyinfra.api.state import State
from pyinfra.context import ctx_state

from gpufleet.catalogue import (
    Catalogue,
    CatalogueError,
    catalogue_for,
    fleet_catalogue,
    suggest,
    use_inventory,
)
from gpufleet.checks import Problem, check_fleet, check_host
from gpufleet.connection import use_tcp_nodelay
from gpufleet.connector_data import SSH_KEYS, SshData, ssh_data
from gpufleet.exposure import decide_addresses, decide_fleet
from gpufleet.fields import CONTROL_CHARACTER, PATTERN_HINTS, SECRET_REFERENCE_PATTERN
from gpufleet.models import HOST_GROUPS, MOVED_KEYS, HostSpec
from gpufleet.pyinfra_costs import install as cut_pyinfra_costs

PYINFRA_KEY_PREFIXES = ("ssh_", "_", "winrm_", "docker_", "chroot_", "local_")
"""host.data keys that belong to pyinfra's connectors and global arguments."""

SECRET_FIELDS = (
    "secrets",
    "alertmanager.webhooks",
    "gateway.clients",
    "ssh_password",
    "ssh_key_password",
)
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


def group_data_folders(
    inventory_path: str | Path, cwd: str | None = None, extra: tuple[str, ...] = ()
) -> list[Path]:
    """The group_data pyinfra 3 reads for ``pyinfra INVENTORY ...`` run from ``cwd``, in its
    order (a later one's keys win): ``group_data/`` of the folder it runs from, that of the
    inventory's own folder when that is another folder, then each ``--group-data`` path.
    Only those that exist (pyinfra skips the others). ``cwd`` defaults to this process's
    folder, as pyinfra's does."""
    here = cwd if cwd is not None else os.getcwd()
    # pyinfra_cli.inventory.make_inventory_from_files, compared as strings as it does.
    folders = [Path(here) / "group_data"]
    inventory_folder = str(Path(inventory_path).parent.resolve())
    if inventory_folder != here:
        folders.append(Path(inventory_folder) / "group_data")
    folders += [Path(path) for path in extra]
    return [folder for folder in folders if folder.exists()]


def pyinfra_group_data_option() -> tuple[str, ...]:
    """``--group-data`` as given to the pyinfra command this process runs (within its click
    command), so a check made while it loads the inventory reads the same group_data."""
    import click

    context = click.get_current_context(silent=True)
    callback = getattr(context.command, "callback", None) if context else None
    if context is None or not getattr(callback, "__module__", "").startswith("pyinfra_cli"):
        return ()
    return tuple(context.params.get("group_data") or ())


def load_inventory(path: str | Path, group_data: tuple[str, ...] = ()) -> Inventory:
    """Build the Inventory exactly as ``pyinfra PATH ...`` run from this folder (with
    ``--group-data`` for each of ``group_data``) would, without connecting."""
    from pyinfra_cli.inventory import make_inventory

    inventory_path = Path(path)
    if not inventory_path.is_file():
        raise InventoryError(str(path), [Problem("-", "inventory", "no such inventory file")])
    with ctx_state.use(State()):
        try:
            return make_inventory(
                str(inventory_path),
                cwd=os.getcwd(),
                group_data_directories=list(group_data) or None,
            )
        except SyntaxError as error:
            raise InventoryError(str(path), [_syntax_problem(error)]) from None
        except PyinfraError:
            raise
        except Exception as error:  # pyinfra's UnexpectedExternalError: the file raised
            raise InventoryError(str(path), [_raised_problem(error)]) from None


def _syntax_problem(error: SyntaxError) -> Problem:
    where = f"{error.filename}:{error.lineno}" if error.lineno else str(error.filename)
    return Problem("-", where, f"Python syntax error ({error.msg}); fix that line")


def _raised_problem(error: Exception) -> Problem:
    """File and line of the inventory or group_data file that raised while it loaded."""
    filename = str(getattr(error, "filename", "") or "inventory")
    cause = getattr(error, "exception", error)
    frames = traceback.extract_tb(getattr(cause, "_traceback", None) or cause.__traceback__)
    lines = [f.lineno for f in frames if f.filename == filename]
    where = f"{filename}:{lines[-1]}" if lines else filename
    what = f"{type(cause).__name__}: {cause}"
    if CONTROL_CHARACTER.search(what) or len(what) > 200:
        what = type(cause).__name__  # the message may carry a value from the file
    return Problem("-", where, f"the file raised {what} while it loaded; fix that line")


def _raw_groups(path: Path) -> dict[str, Any]:
    """The inventory file's groups as written, before pyinfra merges them."""
    from pyinfra_cli.inventory import _get_groups_from_filename

    with ctx_state.use(State()):
        return _get_groups_from_filename(str(path))


def _entries(group: Any) -> list[tuple[str, Any]]:
    hosts = group[0] if isinstance(group, tuple) else group
    return [(h[0], h[1]) if isinstance(h, tuple) else (h, None) for h in hosts]


def duplicate_definitions(groups: dict[str, Any]) -> list[Problem]:
    """A host given data in two places that differ: pyinfra merges the two silently, key by
    key, in the order of the file. Listing a host by name alone in a second group (a plain
    ``proxmox_hosts = ["pve-1"]``) is how a host joins more groups, and fine."""
    first: dict[str, tuple[str, Any]] = {}
    problems = []
    for group, value in groups.items():
        for name, data in _entries(value):
            if data is None:
                continue
            if name not in first:
                first[name] = (group, data)
            elif first[name][1] is not data and first[name][1] != data:
                where = first[name][0]
                fix = (
                    f"listed twice in {group} with different data (pyinfra would merge the "
                    "two silently); keep one entry"
                    if where == group
                    else f"listed with different data in {where} and {group} (pyinfra would "
                    f"merge the two silently); give its data once, in {where}, and list it by "
                    f"name alone in {group}: {group} = [..., {name!r}]"
                )
                problems.append(Problem(name, "groups", fix))
    return problems


def unknown_group_data(
    inventory: Inventory, path: Path, group_data: tuple[str, ...] = ()
) -> list[Problem]:
    """group_data files named after no group: pyinfra loads them and applies them to nobody."""
    used = {group for host in inventory for group in host.groups}
    known = {*HOST_GROUPS, "all", path.stem, *used}
    problems = []
    for folder in group_data_folders(path, extra=group_data):
        files = [folder] if folder.is_file() else sorted(folder.glob("*.py"))
        for file in files:
            if file.stem not in known:
                problems.append(
                    Problem(
                        "-",
                        f"{folder.name}/{file.name}",
                        f"no group {file.stem!r} in this inventory"
                        f"{suggest(file.stem, sorted(known - {path.stem}))}; name the file "
                        f"after a group of the inventory, or remove it ({file})",
                    )
                )
    return problems


def replaced_dicts(inventory: Inventory) -> list[Problem]:
    """A dict in a host's data (or a group's) that would drop keys of the same dict in a group
    below it. pyinfra does not merge dicts: a host's ``litellm: {'version': ...}`` replaces
    group_data's ``litellm: {'redis': ...}`` whole, so Redis would silently go."""
    problems = []
    for host in inventory:
        name = host.name
        layers: list[tuple[str, dict[str, Any]]] = [("the host's", inventory.get_host_data(name))]
        layers += [(f"group {g}'s", inventory.get_group_data(g)) for g in reversed(host.groups)]
        layers.append(("group all's", inventory.get_data()))
        seen: set[str] = set()
        for i, (where, data) in enumerate(layers):
            for key, value in data.items():
                if key in seen or not isinstance(value, dict):
                    continue
                seen.add(key)
                for below, lower in layers[i + 1 :]:
                    under = lower.get(key)
                    dropped = sorted(set(under) - set(value)) if isinstance(under, dict) else []
                    if dropped:
                        keys = ", ".join(repr(k) for k in dropped)
                        problems.append(
                            Problem(
                                name,
                                key,
                                f"{where} {key} replaces {below} {key} whole (pyinfra does "
                                f"not merge dicts), dropping {keys}; repeat {keys} in {where} "
                                f"{key}, or set {key} in one place only",
                            )
                        )
                        break
    return problems


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


def connector_problems(name: str, data: dict[str, Any]) -> list[Problem]:
    """Problems with pyinfra's own ``ssh_*`` keys of one host."""
    problems = []
    given = ssh_data(data)
    for key in given:
        if key not in SSH_KEYS:
            problems.append(
                Problem(
                    name,
                    key,
                    f"not a key of pyinfra's SSH connector{suggest(key, SSH_KEYS)}; pyinfra "
                    "would ignore it; fix its spelling or remove it",
                )
            )
    try:
        SshData.model_validate({k: v for k, v in given.items() if k in SSH_KEYS})
    except ValidationError as error:
        problems += _problems_from(name, error)
    return problems


def spec_for(name: str, groups: list[str], data: dict[str, Any]) -> HostSpec:
    """Validate one host's data; raises pydantic's ValidationError."""
    return HostSpec.model_validate({**gpufleet_data(data), "name": name, "groups": groups})


def validate(
    inventory: Inventory,
    source: str,
    problems: list[Problem] | None = None,
    stage: str = BEFORE_CONNECT,
    catalogue: Catalogue | None = None,
) -> dict[str, HostSpec]:
    """Specs for every host, or one InventoryError listing every problem found (with
    ``problems`` found before, in the file itself), checked against ``catalogue`` (the
    inventory's own, :func:`inventory_catalogue`)."""
    if catalogue is None:
        catalogue = _catalogue_or_raise(fleet_catalogue, source, stage)
    inventory_group = Path(source).stem
    specs: dict[str, HostSpec] = {}
    problems = list(problems or [])
    if not len(inventory):
        problems.append(
            Problem(
                "-",
                "inventory",
                "no hosts; add one with 'gpufleet discover ADDRESS' (it writes hosts.yaml "
                "beside the inventory), or list them in groups of the inventory, e.g. "
                "gpu_nodes = [('desk', {...})]",
            )
        )
    problems += replaced_dicts(inventory)
    addresses = {}
    for host in inventory:
        groups = [g for g in host.groups if g != inventory_group]
        data = host.data.dict()
        addresses[host.name] = str(data.get("ssh_hostname") or host.name)
        problems += connector_problems(host.name, data)
        try:
            spec = spec_for(host.name, groups, data)
        except ValidationError as error:
            problems += _problems_from(host.name, error)
            continue
        problems += check_host(spec, catalogue)
        specs[host.name] = spec
    if not problems:
        problems += check_fleet(specs, addresses)
    if problems:
        raise InventoryError(source, problems, stage)
    _passed.append(({host.name: _as_given(host) for host in inventory}, specs))
    del _passed[:-4]  # a run has one inventory; a long process (a test session) many
    return decide_fleet(specs)


_passed: list[tuple[dict[str, tuple[tuple[str, ...], dict[str, Any]]], dict[str, HostSpec]]] = []
"""Inventories that passed in this process: each host's groups and data as they were, and its
spec before its addresses were decided. pyinfra builds the inventory a second time after the
inventory file's own check; where every host of it is as it was, it is not checked again."""


def _as_given(host: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return tuple(host.groups), host.data.dict()


def _passed_before(inventory: Inventory) -> bool:
    """Whether an inventory with exactly these hosts, groups and data passed already (no
    ``--data`` override, no other file)."""
    names = {host.name for host in inventory}
    return any(
        set(given) == names and all(given[host.name] == _as_given(host) for host in inventory)
        for given, _ in _passed
    )


def _passed_spec(host: Any) -> HostSpec | None:
    """The spec of ``host`` from an inventory that passed with the host as it is now."""
    groups = [g for g in host.groups if g in (*HOST_GROUPS, "all")]  # as a deploy reads them
    for given, specs in _passed:
        spec = specs.get(host.name)
        if spec and given[host.name] == _as_given(host) and list(spec.groups) == groups:
            return spec
    return None


def inventory_catalogue(path: str | Path) -> Catalogue:
    """The catalogue an inventory file is checked and planned with: the built-in one and the
    ``catalogue.yaml`` beside the file; raises InventoryError for a catalogue.yaml that
    cannot be read (its file and line, or entry and field)."""
    return _catalogue_or_raise(lambda: catalogue_for(path), str(path), BEFORE_CONNECT)


def _catalogue_or_raise(load: Callable[[], Catalogue], source: str, stage: str) -> Catalogue:
    try:
        return load()
    except CatalogueError as error:
        problems = [Problem("-", where, what) for where, what in error.problems]
        raise InventoryError(source, problems, stage) from None


def validate_file(path: str | Path, group_data: tuple[str, ...] = ()) -> dict[str, HostSpec]:
    """Load and validate an inventory file as ``pyinfra PATH ...`` run from this folder loads
    it (with ``--group-data`` for each of ``group_data``); contacts no host."""
    token = _checking.set(True)  # the inventory's own check_inventory() call is this one
    try:
        catalogue = inventory_catalogue(path)
        inventory = load_inventory(path, group_data)
        use_inventory(path)
        problems = duplicate_definitions(_raw_groups(Path(path)))
        problems += unknown_group_data(inventory, Path(path), group_data)
        return validate(inventory, str(path), problems, catalogue=catalogue)
    finally:
        _checking.reset(token)


_checking: ContextVar[bool] = ContextVar("gpufleet_inventory_checking", default=False)


def check_inventory(path: str) -> None:
    """Validate the inventory file that calls this, with its group_data, as pyinfra loads it.

    The last line of every gpufleet inventory, so that ``pyinfra INVENTORY ...`` stops with one
    message before it connects to any host::

        check_inventory(__file__)
    """
    use_inventory(path)  # its catalogue.yaml is the one the deploys plan with
    if not _checking.get():
        validate_file(path, pyinfra_group_data_option())
    use_tcp_nodelay()
    cut_pyinfra_costs()
    check_before_connecting()


_GUARDED = "_gpufleet_checks_first"


def check_before_connecting() -> None:
    """Make pyinfra validate a whole inventory before it connects to the first of its hosts
    (once per inventory): the guard for an inventory without ``check_inventory(__file__)``.

    pyinfra's CLI enters its connect stage in the main greenlet, where a refusal ends the run
    with pyinfra's one-line error; ``Host.connect`` is guarded too, for code that connects
    hosts through pyinfra's API. Installed by ``check_inventory`` and, through the
    ``pyinfra.connectors`` entry point pyinfra loads while it builds any inventory, by
    ``gpufleet.pyinfra_plugin``.
    """
    from pyinfra.api.host import Host
    from pyinfra.api.state import State, StateStage

    if getattr(Host, _GUARDED, False):
        return
    set_stage = State.set_stage
    connect = Host.connect

    @functools.wraps(set_stage)
    def set_stage_after_checks(self: Any, stage: Any) -> Any:
        if stage == StateStage.Connect and self.inventory is not None:
            _check_once(self.inventory)
        return set_stage(self, stage)

    @functools.wraps(connect)
    def connect_after_checks(self: Any, *args: Any, **kwargs: Any) -> Any:
        _check_once(self.inventory)
        return connect(self, *args, **kwargs)

    State.set_stage = set_stage_after_checks  # type: ignore[method-assign]
    Host.connect = connect_after_checks  # type: ignore[method-assign]
    setattr(Host, _GUARDED, True)


_checked_inventories: weakref.WeakSet[Inventory] = weakref.WeakSet()


def _check_once(inventory: Inventory, stage: str = BEFORE_CONNECT) -> None:
    if inventory in _checked_inventories:
        return
    if _passed_before(inventory):  # the inventory file's own check_inventory() passed it
        _checked_inventories.add(inventory)
        return
    # An inventory with no gpufleet host data (a one-off @local run) is not gpufleet's.
    if any(gpufleet_data(host.data.dict()) for host in inventory):
        validate(inventory, _inventory_file_group(inventory), stage=stage)
    _checked_inventories.add(inventory)


def _inventory_file_group(inventory: Inventory) -> str:
    """The group pyinfra names after the inventory file (every host is in it): the group
    holding every host that is none of gpufleet's groups."""
    everyone = set(inventory)
    for name, members in inventory.groups.items():
        if name not in (*HOST_GROUPS, "all") and set(members) == everyone:
            return f"{name}.py"
    return "inventory"


_validated: dict[str, HostSpec] = {}


def host_spec() -> HostSpec:
    """The validated spec of the host a deploy is running for.

    The inventory was checked as it loaded (``check_inventory``); this checks the host again
    as the deploy sees it (``--data`` overrides, inventories without the check) and stops the
    deploy before it plans any change.
    """
    from pyinfra import host

    # The whole inventory, once: where pyinfra connected without gpufleet's guard (an
    # inventory without the check line, gpufleet's entry point not installed), the deploy
    # still stops before its first operation.
    _check_once(host.inventory, BEFORE_CHANGES)
    if host.name not in _validated and (passed := _passed_spec(host)) is not None:
        _validated[host.name] = decide_addresses(passed, _undecided_fleet())
    if host.name not in _validated:
        groups = [g for g in host.groups if g in (*HOST_GROUPS, "all")]
        data = host.data.dict()
        problems = connector_problems(host.name, data)
        try:
            spec = spec_for(host.name, groups, data)
        except ValidationError as error:
            problems += _problems_from(host.name, error)
            raise InventoryError("host data", problems, BEFORE_CHANGES) from None
        problems += check_host(
            spec, _catalogue_or_raise(fleet_catalogue, "host data", BEFORE_CHANGES)
        )
        if problems:
            raise InventoryError("host data", problems, BEFORE_CHANGES)
        _validated[host.name] = decide_addresses(spec, _undecided_fleet())
    return _validated[host.name]


def spec_of(name: str) -> HostSpec:
    """The validated spec of another host of the inventory a deploy runs against."""
    from pyinfra import host

    other = host.inventory.get_host(name)
    passed = _passed_spec(other)
    if passed is not None:
        return passed
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
