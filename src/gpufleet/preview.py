"""Plan deploys against recorded facts: what a run would do on a host of a given kind,
contacting no host.

A pyinfra dry run asks the real host for its facts. ``gpufleet preview`` answers the same
questions from a *fact profile*: the facts a freshly installed host of one kind reports
(Debian 12 amd64/arm64, Proxmox VE 8, Ubuntu 24.04, Raspberry Pi OS, Jetson Linux, macOS). The
profiles for Debian were recorded from real lab hosts (``gpufleet preview --record``); Proxmox
VE, Ubuntu, Raspberry Pi OS, Jetson Linux and a fresh GPU node are those recordings with the
facts that differ replaced from real outputs, and macOS is written by hand; each profile's
``notes`` say so and name their sources. Every operation of every deploy is planned
by the same code as in a dry run; only the fact values come from the profile, and an
operation's ``_if`` is read against the changes planned before it.

.. code:: shell

    gpufleet preview inventory/homelab.py deploys/router.py --limit pi5l

A fact the profile does not answer is an error naming the fact and its arguments, never a
silent guess.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpufleet.nvidia import PLANNED_RELEASES

if TYPE_CHECKING:
    from gpufleet.catalogue import Catalogue
    from gpufleet.models import HostSpec

PROFILES = Path(__file__).parent / "profiles"
OS_PROFILES = {
    ("debian", "x86_64"): "debian12-amd64",
    ("debian", "aarch64"): "debian12-arm64",
    ("proxmox", "x86_64"): "proxmox8-amd64",
    ("ubuntu", "x86_64"): "ubuntu2404-amd64",
    ("raspios", "aarch64"): "raspios12-arm64",
    ("jetson-l4t", "aarch64"): "jetson-l4t36",
    ("macos", "aarch64"): "macos15-arm64",
}
"""Which profile stands for a host of each (``os``, ``arch``) of the inventory."""
RELEASE_PROFILES = {("debian", "13", "x86_64"): "debian13-amd64"}
"""Profiles of releases other than the one each ``os`` is planned for (its ``release``)."""


class MissingFact(LookupError):
    """The profile has no value for a fact a deploy asked for."""


class HostsUnreachable(ConnectionError):
    """A dry run against real hosts could not connect to some of them."""


def fact_key(cls: type, kwargs: dict[str, Any]) -> tuple[str, str]:
    """The profile's key for one fact call: ``("pyinfra.facts.files.File", '{"path": ...}')``."""
    arguments = {k: v for k, v in kwargs.items() if k not in ("self", "state", "host")}
    return f"{cls.__module__}.{cls.__name__}", json.dumps(arguments, sort_keys=True, default=str)


@dataclass
class FactProfile:
    """Fact values by fact and arguments, with a per-fact fallback under the ``*`` key (what
    the fact reports for anything not recorded, e.g. ``null`` for files a fresh host lacks)."""

    name: str
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    gpu_overlay: str | None = "nvidia-fresh"
    """The profile put over this one for a host that declares NVIDIA cards (a fresh GPU
    node's kernels and Secure Boot); None where this profile already describes them."""

    @classmethod
    def load(cls, name: str) -> FactProfile:
        data = json.loads((PROFILES / f"{name}.json").read_text())
        base = cls.load(data["base"]).facts if "base" in data else {}
        return cls(name, _overlaid(base, data["facts"]), data.get("gpu_overlay", "nvidia-fresh"))

    def answer(self, fact: str, arguments: str) -> Any:
        values = self.facts.get(fact, {})
        for key in (arguments, "*"):
            if key in values:
                return _processed(fact, values[key])
        raise MissingFact(
            f"profile {self.name!r} has no value for fact {fact}({arguments}); record it "
            f"from a real host with 'gpufleet preview --record' or add it to "
            f"{PROFILES / self.name}.json"
        )


def _processed(fact: str, value: Any) -> Any:
    """``{"$output": [lines]}`` is a real command output, turned into the fact's value by
    the fact's own parser; anything else is the value itself."""
    if not (isinstance(value, dict) and "$output" in value):
        return value
    from importlib import import_module

    module, _, name = fact.rpartition(".")
    return getattr(import_module(module), name)().process(value["$output"])


@contextmanager
def _patched(owner: Any, attribute: str, replacement: Any) -> Iterator[None]:
    """``owner.attribute`` is ``replacement`` within this block, and what it was after."""
    real = getattr(owner, attribute)
    setattr(owner, attribute, replacement)
    try:
        yield
    finally:
        setattr(owner, attribute, real)


FactHandler = Callable[[Callable[[], Any], str, type, str, str], Any]
"""``handler(ask_the_host, host_name, fact_class, fact_name, arguments_json)`` -> the value."""


@contextmanager
def _facts_through(handler: FactHandler) -> Iterator[None]:
    """Within this block every fact pyinfra gets goes through ``handler``, with the fact's
    name and arguments as :func:`fact_key` makes them and a function that asks the host."""
    from pyinfra.api import facts as pyinfra_facts

    real = pyinfra_facts._get_fact

    def intercepted(state, host, cls, args=None, kwargs=None, *rest, **more):
        fact_kwargs, _ = pyinfra_facts._handle_fact_kwargs(state, host, cls, args, kwargs)

        def ask_the_host() -> Any:
            return real(state, host, cls, args, kwargs, *rest, **more)

        return handler(ask_the_host, host.name, cls, *fact_key(cls, fact_kwargs))

    with _patched(pyinfra_facts, "_get_fact", intercepted):
        yield


def facts_from(answer: Callable[[str, str, str], Any]) -> AbstractContextManager[None]:
    """Within this block pyinfra takes every fact from ``answer(host_name, fact_name,
    arguments_json)`` (names as :func:`fact_key` makes them) and connects to nothing."""
    return _facts_through(lambda _ask, host, _cls, fact, arguments: answer(host, fact, arguments))


@dataclass
class PlannedOperation:
    name: str
    changes: bool
    """The operation would change something, in a run where every earlier step succeeds as
    planned (its ``_if`` evaluated against those planned changes)."""
    commands: list[str]
    uploads: dict[str, str] = field(default_factory=dict)
    """Files the operation would write, by destination (rendered templates; config files
    that hold secrets are written by a function at run time and never show here)."""
    serial: bool = False
    """The operation runs host by host (``_serial``): each host finishes it, a reboot
    included, before the next one starts it."""


def plan(
    inventory: str,
    deploys: list[str],
    answer: Callable[[str, str, str], Any] | None,
    limit: list[str] | None = None,
) -> dict[str, list[PlannedOperation]]:
    """Plan ``deploys`` on the inventory's hosts ``limit`` selects (host names, group names,
    globs, as pyinfra's ``--limit``; all when empty; :func:`gpufleet.selection.select_hosts`).
    With ``answer``, facts come from it and no host is contacted; without, the hosts are
    connected to and asked, as ``pyinfra --dry`` does. Returns each host's operations in
    order, with the commands a run would send."""
    import pyinfra
    from pyinfra.api import Config, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.state import StateStage
    from pyinfra.connectors.util import CommandOutput
    from pyinfra.context import ctx_config, ctx_host, ctx_inventory, ctx_state
    from pyinfra_cli.exceptions import UnexpectedExternalError
    from pyinfra_cli.inventory import make_inventory
    from pyinfra_cli.util import load_deploy_file

    from gpufleet.inventory import forget_fleet
    from gpufleet.selection import select_hosts

    forget_fleet()  # the fleet of a previous plan in this process is not this inventory's
    state = State(check_for_changes=True)
    ctx_state.set(state)
    # group_data/ as pyinfra run from this folder finds it, as validation reads it.
    hosts_of = make_inventory(inventory, cwd=os.getcwd())
    ctx_inventory.set(hosts_of)
    config = Config()
    ctx_config.set(config)
    # --limit as pyinfra and every gpufleet subcommand read it (groups, globs, a union).
    chosen = set(select_hosts({h.name: h for h in hosts_of}, limit, source=inventory).names)
    hosts = [h for h in hosts_of if h.name in chosen]
    state.init(hosts_of, config, initial_limit=hosts)
    if answer is None:
        with suppress(PyinfraError):  # none left to plan: each one is named below
            connect_all(state)
        unreachable = sorted(host.name for host in hosts if not host.connected)
        if unreachable:
            raise HostsUnreachable(f"no SSH connection to {', '.join(unreachable)}")
        replaying: AbstractContextManager[None] = nullcontext()
    else:
        for host in hosts:
            state.activate_host(host)
            host.connected = True  # facts come from ``answer``: nothing is contacted
        replaying = facts_from(answer)

    planned: dict[str, list[PlannedOperation]] = {}
    guard = _no_secret_store() if answer is not None else nullcontext()
    # As the pyinfra command line plans: an operation is known by its call site, the same on
    # every host (by its index on the host otherwise, which pairs different operations of
    # hosts that take different branches, and refuses their different ``_serial``).
    state.set_stage(StateStage.Prepare)
    with replaying, guard, _names_per_host() as names, _patched(pyinfra, "is_cli", True):
        for number, deploy in enumerate(deploys):
            state.current_op_file_number = number
            config.lock_current_state()
            try:
                load_deploy_file(state, deploy)
            except UnexpectedExternalError as error:
                raise error.exception from None  # the deploy's own error, e.g. MissingFact
            config.reset_locked_state()
        order = state.get_op_order()
        for host in hosts:
            operations = []
            with ctx_state.use(state), ctx_host.use(host):
                for op_hash in order:
                    op_data = state.ops[host].get(op_hash)
                    if op_data is None:
                        continue
                    generated = []
                    if _conditions_hold(op_data.global_arguments.get("_if")):
                        generated = list(op_data.command_generator())
                    # Completed as a run would complete it, so that later operations'
                    # ``_if`` (did_change of this one) read as they would in that run.
                    op_data.operation_meta.set_complete(True, generated, CommandOutput([]))
                    operations.append(
                        PlannedOperation(
                            name=", ".join(sorted(names[host.name, op_hash])),
                            changes=bool(generated),
                            commands=[_shown(command) for command in generated],
                            uploads=dict(_uploaded(c) for c in generated if _uploads(c)),
                            serial=bool(state.op_meta[op_hash].global_arguments.get("_serial")),
                        )
                    )
            planned[host.name] = operations
    return planned


def plan_each(
    inventory: str,
    deploys: list[str],
    answer: Callable[[str, str, str], Any] | None,
    limit: list[str] | None = None,
) -> tuple[dict[str, list[PlannedOperation]], dict[str, str]]:
    """:func:`plan` for every selected host, where a deploy that stops on one host (a model
    file not on it, a driver it cannot take) does not hide what the others would do: the
    hosts are then planned one by one. Returns the operations of the hosts that plan, and
    for each host that stops, why (the deploy's own message), as a real run would stop."""
    from gpufleet.inventory import validate_file
    from gpufleet.selection import select_hosts

    try:
        return plan(inventory, deploys, answer, limit), {}
    except Exception as error:
        if isinstance(error, MissingFact):
            raise  # a profile without the fact: the preview itself is wrong, not a host
        whole_fleet_error = error
    names = select_hosts(validate_file(inventory), limit, source=inventory).names
    planned: dict[str, list[PlannedOperation]] = {}
    stopped: dict[str, str] = {}
    for name in names:
        try:
            planned.update(plan(inventory, deploys, answer, [name]))
        except MissingFact:
            raise
        except Exception as error:
            stopped[name] = f"{type(error).__name__}: {error}"
    if not stopped:  # each host plans alone: the failure belonged to the fleet as a whole
        raise whole_fleet_error
    return planned, stopped


def profiles_for(inventory: str, limit: list[str] | None = None) -> dict[str, FactProfile]:
    """Each host's profile, chosen by its ``os``, ``release`` and ``arch`` (see
    ``OS_PROFILES``, ``RELEASE_PROFILES``)."""
    from gpufleet.inventory import inventory_catalogue, validate_file
    from gpufleet.selection import select_hosts

    chosen: dict[str, FactProfile] = {}
    loaded: dict[str, FactProfile] = {}
    catalogue = inventory_catalogue(inventory)
    specs = validate_file(inventory)
    for host in select_hosts(specs, limit, source=inventory).names:
        spec = specs[host]
        planned = PLANNED_RELEASES.get(spec.os, ("", None))[1]
        name = (
            RELEASE_PROFILES.get((spec.os, spec.release, spec.arch))
            if spec.release and spec.release != planned
            else OS_PROFILES.get((spec.os, spec.arch))
        )
        if name is None:
            raise MissingFact(
                f"host {spec.name!r}: no fact profile for os={spec.os} "
                f"{f'release={spec.release} ' if spec.release else ''}arch={spec.arch}"
            )
        if name not in loaded:
            loaded[name] = FactProfile.load(name)
        chosen[spec.name] = _with_declared_hardware(loaded[name], spec, catalogue)
    return chosen


def _with_declared_hardware(
    profile: FactProfile, spec: HostSpec, catalogue: Catalogue
) -> FactProfile:
    """The profile as the host's declared hardware changes it: its NVIDIA cards on the PCI
    bus, no driver yet (a freshly installed GPU node); an AMD integrated GPU's driver loaded
    by the distribution's kernel from its initramfs, with the kernel's default GTT (half of
    RAM)."""
    if spec.hardware.amd_igpu:
        from gpufleet.operations.amdgpu import gtt_pages
        from gpufleet.planner import AMD_GTT_DEFAULT_SHARE

        default = gtt_pages(spec.hardware.ram_gb * AMD_GTT_DEFAULT_SHARE)
        gtt: dict[str, dict[str, Any]] = {
            "gpufleet.facts.system.TtmPagesLimit": {"{}": default},
            # A machine of its own boots through an initramfs, which loads the driver.
            "pyinfra.facts.server.Which": {
                '{"command": "update-initramfs"}': "/usr/sbin/update-initramfs"
            },
        }
        profile = FactProfile(
            f"{profile.name}+AMD iGPU", _overlaid(profile.facts, gtt), profile.gpu_overlay
        )
    cards = [
        accelerator
        for accelerator in spec.hardware.accelerators
        if accelerator.kind == "nvidia"
        for _ in range(accelerator.count)
    ]
    if not cards:
        return profile
    pci = [
        {
            "slot": f"0000:{n + 1:02x}:00.0",
            "class_code": "0300",
            "device_id": _pci_id(catalogue.accelerator_for(card)),
            "name": card.model,
        }
        for n, card in enumerate(cards)
    ]
    cards_on_the_bus = {
        "gpufleet.facts.gpu.NvidiaGpus": {
            "{}": {
                "pci": pci,
                "nvidia_smi": [],
                "nvidia_smi_error": None,
                "driver_version": None,
                "module_flavour": None,
            }
        }
    }
    overlay = FactProfile.load(profile.gpu_overlay).facts if profile.gpu_overlay else {}
    facts = _overlaid(_overlaid(profile.facts, overlay), cards_on_the_bus)
    return FactProfile(f"{profile.name}+{len(cards)}xNVIDIA", facts, None)


def _overlaid(
    base: dict[str, dict[str, Any]], overlay: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Fact values of ``base`` with ``overlay``'s put over them, fact by fact and argument by
    argument; neither is changed."""
    merged = {fact: dict(values) for fact, values in base.items()}
    for fact, values in overlay.items():
        merged.setdefault(fact, {}).update(values)
    return merged


def record(inventory: str, deploys: list[str], limit: list[str], profile: str) -> Path:
    """Plan ``deploys`` on one real host and write every fact it was asked as a profile.
    Facts that take arguments also get a ``*`` entry: the fact's value for something absent,
    which is what a fresh host reports for paths and units no deploy has made yet."""
    recorded: dict[str, dict[str, Any]] = {}

    def recording(
        ask_the_host: Callable[[], Any], host: str, cls: type, fact: str, arguments: str
    ) -> Any:
        value = ask_the_host()
        values = recorded.setdefault(fact, {})
        values[arguments] = json.loads(json.dumps(value, default=_jsonable))
        if arguments != "{}":
            values.setdefault("*", cls().default())
        return value

    with _facts_through(recording):
        hosts = plan(inventory, deploys, None, limit)
    hosts = {name: ops for name, ops in hosts.items() if ops}
    if len(hosts) != 1:
        raise ValueError(f"record from exactly one host; --limit matched {sorted(hosts)}")
    path = PROFILES / f"{profile}.json"
    merged = json.loads(path.read_text()) if path.exists() else {"recorded_from": [], "facts": {}}
    merged["recorded_from"] = sorted({*merged["recorded_from"], *hosts})
    for fact, values in recorded.items():
        merged["facts"].setdefault(fact, {}).update(values)
    path.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    return path


def _conditions_hold(conditions: Any) -> bool:
    """An operation's ``_if``, as a run evaluates it."""
    if conditions is None:
        return True
    if isinstance(conditions, list):
        return all(condition() for condition in conditions)
    return bool(conditions())


@contextmanager
def _no_secret_store() -> Iterator[None]:
    """A preview contacts no host, the secret store included. A real run asks Vault while
    planning (a config file holding a secret is compared by content); here every such
    request fails as an unreachable Vault does, so those files plan as written by the run."""
    from gpufleet.vault import VaultClient, VaultError

    def refused(self: VaultClient, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        raise VaultError(f"{self.address}: not asked during a preview ({method} {path})")

    with _patched(VaultClient, "send", refused):  # every request, logins included
        yield


@contextmanager
def _names_per_host() -> Iterator[dict[tuple[str, str], set[str]]]:
    """pyinfra keeps one set of names per operation for all hosts; when hosts of different
    kinds take different branches, each host's own name is recorded here."""
    from importlib import import_module

    from pyinfra.context import ctx_host

    # The package exports a function of the same name as the module.
    operation: Any = import_module("pyinfra.api.operation")
    real = operation.ensure_shared_op_meta
    names: dict[tuple[str, str], set[str]] = {}

    def recording(state, op_hash, op_order, global_arguments, op_names):
        names[ctx_host.get().name, op_hash] = set(op_names)
        return real(state, op_hash, op_order, global_arguments, op_names)

    with _patched(operation, "ensure_shared_op_meta", recording):
        yield names


def _pci_id(entry: Any) -> str:
    return entry.pci_device_ids[0] if entry is not None and entry.pci_device_ids else ""


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def _shown(command: Any) -> str:
    """A command as a dry run prints it: masked where it carries a secret."""
    if _uploads(command):
        return f"upload {command.dest}"
    if hasattr(command, "function"):
        return f"at run time: {command.function.__name__}()"
    if hasattr(command, "get_masked_value"):
        return str(command.get_masked_value())
    return repr(command)


def _uploads(command: Any) -> bool:
    from pyinfra.api.command import FileUploadCommand

    return isinstance(command, FileUploadCommand)


def _uploaded(command: Any) -> tuple[str, str]:
    source = command.src
    content = source.getvalue() if hasattr(source, "getvalue") else Path(source).read_bytes()
    if isinstance(content, bytes):
        content = content.decode(errors="replace")
    return command.dest, content
