"""pyinfra's per-host costs, cut without changing what it does.

A converged run is mostly overhead: every operation asks its facts and yields no command.
What pyinfra spends per host and operation there is what makes a fleet slower than one host:

* **Operation order.** pyinfra orders operations by the line numbers of the deploy code that
  called them, read with ``inspect.stack()``, which loads each frame's source lines (and looks
  its module up in every loaded module) for every operation on every host: the largest piece
  of a converged run's control-machine CPU after SSH itself. :func:`operation_order` reads the
  same file names and line numbers from the frames alone.
* **Facts asked again.** pyinfra 3 keeps no fact: each operation runs its facts' commands
  again, so ``apt.packages`` lists every installed package once per call and each file's
  folder is looked at by every file in it. :func:`cache_facts` keeps each fact's answer for as
  long as nothing could have changed it: until any command that is not a fact's runs on any
  host, a Python callback runs, or the run changes stage (a dry run's plan is asked afresh
  when the changes start).
* **Facts asked one after the other.** An operation asks its facts in a known sequence:
  ``files.put`` a file's ``File``, its folder's ``Directory`` and its ``Sha1File``;
  ``systemd.service`` a unit's ``SystemdStatus`` and ``SystemdEnabled``. Where the first is
  not kept, :meth:`FactCache.get` runs its command and the others' (:data:`FOLLOWERS`) as one
  command and keeps each answer as its own command would have given it.
* **Facts asked one command each.** A converged host's run is a few dozen facts and no change.
  :class:`FactRecord` keeps, on the control machine, which facts (class and arguments, never
  an answer) a command line asked of each host; the next run of that command line asks them
  all in one command when it first asks that host a fact, in each stage, and keeps the
  answers like any other (dropped as soon as anything changes). A fact the record did not
  have is asked alone, as before.

* **Global arguments' types.** pyinfra reads the types of its global arguments (``_sudo``,
  ``_if``, ...) from their annotations for every operation and fact on every host, each time
  evaluating every annotation again; :func:`global_argument_types` reads them once.

Each change is installed once per process by :func:`install` (``check_inventory`` and
gpufleet's pyinfra entry point call it) and keeps pyinfra's results identical.
"""

from __future__ import annotations

import atexit
import copy
import functools
import hashlib
import importlib
import json
import os
import posixpath
import re
import shlex
import stat
import sys
import uuid
from inspect import getcallargs
from pathlib import Path
from types import FrameType
from typing import Any

_INSTALLED = "_gpufleet_costs_cut"


def operation_order(state: Any) -> list[int]:
    """pyinfra's ``get_operation_order_from_stack`` without ``inspect.stack()``: the line
    numbers of the calling frames from the deploy file on, pyinfra's own frames left out (in
    CLI mode after the number of the deploy file being run). ``getframeinfo`` gives a frame's
    ``f_code.co_filename`` and ``f_lineno``; those are read directly."""
    import pyinfra
    from pyinfra.api.util import PYINFRA_INSTALL_DIR

    frames = []
    # From the caller (pyinfra's), as stack()[1:] would give.
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()

    start = 0
    if state.current_deploy_filename:
        # From the first frame of the deploy file; where none is, pyinfra's loop stops at
        # its own frame, which it leaves out: no frame.
        deploy = state.current_deploy_filename
        start = next(
            (i for i, each in enumerate(frames) if each.f_code.co_filename == deploy),
            len(frames),
        )

    numbers = [state.current_op_file_number] if pyinfra.is_cli else []
    numbers += [
        each.f_lineno
        for each in frames[start:]
        if not each.f_code.co_filename.startswith(PYINFRA_INSTALL_DIR)
    ]
    return numbers


Spec = tuple[str, str, dict[str, Any], tuple[tuple[str, Any], ...]]
"""A fact as a record keeps it: module, class, its arguments and how it is run."""

SECRET_ARGUMENTS = ("_sudo_password", "_su_password", "_env", "_stdin")
"""How a fact may be run with something not to be written down: such a fact is not recorded."""

PREFETCHED_MODULES = ("pyinfra.facts.", "gpufleet.facts.")
"""Where a recorded fact's class may come from: a record names classes, it imports no other
module."""

MOST_RECORDED = 2000
"""Facts recorded per host and command line at most: a record stays a hint, not a log."""


class FactRecord:
    """Which facts each command line asked of each host on its last run, on the control
    machine (``<cache>/facts``, 0700; one 0600 JSON file per host), so the next run asks them
    together. It holds fact classes and arguments (paths, package and unit names), never an
    answer or a secret, and it is only a hint: a fact it names that no operation asks is
    asked for nothing, one it lacks is asked alone. ``GPUFLEET_FACT_RECORD=off`` turns it off.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.loaded: dict[str, dict[str, list[Any]]] = {}
        self.asked: dict[tuple[str, str], dict[str, Spec]] = {}

    @classmethod
    def from_environment(cls) -> FactRecord:
        if os.environ.get("GPUFLEET_FACT_RECORD", "").lower() in ("off", "0", "no", "false"):
            return cls(None)
        from gpufleet.paths import cache_dir

        return cls(cache_dir() / "facts")

    @staticmethod
    def run_key(argv: list[str]) -> str:
        """The command line a record belongs to: the files it names (the inventory and the
        deploys), by their full path. Options and their values are left out: a dry run and
        the run it precedes share a record, as do runs limited to different hosts (each host
        has its own), and no password given on the command line goes into the key."""
        files = [os.path.abspath(word) for word in argv[1:] if os.path.isfile(word)]
        return hashlib.sha256("\0".join(files).encode()).hexdigest()[:16]

    def _file(self, host_name: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / (hashlib.sha256(host_name.encode()).hexdigest()[:24] + ".json")

    def _trusted(self, path: Path) -> bool:
        """Only a record this user wrote and nobody else can change is read."""
        try:
            folder, mine = os.stat(path.parent), os.stat(path)
        except OSError:
            return False
        uid = os.getuid()
        return all(
            each.st_uid == uid and not each.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            for each in (folder, mine)
        )

    def _read(self, host_name: str) -> dict[str, list[Any]]:
        if host_name not in self.loaded:
            path = self._file(host_name)
            data: Any = {}
            if path is not None and self._trusted(path):
                try:
                    data = json.loads(path.read_text())
                except (OSError, ValueError):
                    data = {}
            self.loaded[host_name] = data if isinstance(data, dict) else {}
        return self.loaded[host_name]

    def recorded(self, host_name: str, run: str) -> list[Spec]:
        specs = []
        entries = self._read(host_name).get(run, [])
        for entry in entries[:MOST_RECORDED] if isinstance(entries, list) else []:
            try:
                module, qualname, given, how = entry
                if not (isinstance(given, dict) and isinstance(how, list)):
                    continue
                specs.append(
                    (str(module), str(qualname), given, tuple((str(k), v) for k, v in how))
                )
            except (TypeError, ValueError):
                continue
        return specs

    def note(self, host_name: str, run: str, key: str, spec: Spec) -> None:
        if self.folder is None:
            return
        asked = self.asked.setdefault((host_name, run), {})
        if key not in asked and len(asked) < MOST_RECORDED and recordable(spec):
            asked[key] = spec

    def save(self) -> None:
        """Write what this process asked, each host's entry for its command line replaced."""
        if self.folder is None or not self.asked:
            return
        asked, self.asked = self.asked, {}
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.folder, 0o700)
        except OSError:
            return
        by_host: dict[str, dict[str, list[Any]]] = {}
        for (host_name, run), specs in asked.items():
            by_host.setdefault(host_name, {})[run] = [
                [module, qualname, given, [list(each) for each in how]]
                for module, qualname, given, how in specs.values()
            ]
        for host_name, runs in by_host.items():
            path = self._file(host_name)
            assert path is not None
            self.loaded.pop(host_name, None)
            data = {**self._read(host_name), **runs}
            temporary = path.with_name(f".{path.name}.{os.getpid()}")
            try:
                descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(descriptor, "w") as out:
                    json.dump(data, out)
                os.replace(temporary, path)
            except OSError:
                temporary.unlink(missing_ok=True)
            self.loaded[host_name] = data


def recordable(spec: Spec) -> bool:
    """A fact a record may keep: from pyinfra's or gpufleet's facts, run with nothing secret,
    and arguments that read back from JSON as they are."""
    module, _, given, how = spec
    if not module.startswith(PREFETCHED_MODULES):
        return False
    if any(value for name, value in how if name in SECRET_ARGUMENTS):
        return False
    return _reads_back(given) and all(_reads_back(value) for _, value in how)


def _reads_back(value: Any) -> bool:
    """Whether JSON gives ``value`` back as it is: no tuple, set or object, text keys."""
    if value is None or isinstance(value, str | bool | int | float):
        return True
    if isinstance(value, list):
        return all(_reads_back(each) for each in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _reads_back(v) for k, v in value.items())
    return False


def fact_class(module: str, qualname: str) -> Any:
    """A recorded fact's class, where it is a plain fact (:func:`_plain`) from a module a
    record may name and has not opted out (``prefetch = False``: a probe too costly to run
    for nothing)."""
    from pyinfra.api.facts import FactBase, ShortFactBase

    if not module.startswith(PREFETCHED_MODULES) or "." in qualname:
        return None
    try:
        cls = getattr(importlib.import_module(module), qualname, None)
    except ImportError:
        return None
    if not (isinstance(cls, type) and issubclass(cls, FactBase)) or issubclass(cls, ShortFactBase):
        return None
    if not getattr(cls, "prefetch", True) or not _plain(cls):
        return None
    return cls


def global_argument_types(read: Any) -> Any:
    """pyinfra's ``all_global_arguments`` read once: the types of a ``TypedDict`` do not
    change while pyinfra runs. Each caller gets its own list, as before."""
    types = read()

    @functools.wraps(read)
    def kept() -> list[tuple[str, type]]:
        return list(types)

    return kept


class FactCache:
    """Facts' answers per host, dropped whenever something may have changed a host.

    A fact is kept only when its command succeeded and nothing else ran on any host while it
    was asked (hosts run in parallel; one host's change may show on another, a Proxmox host's
    on its containers). A kept answer is handed out as a copy: an operation may change what
    it was given.
    """

    def __init__(self, record: FactRecord | None = None) -> None:
        self.record = record or FactRecord(None)
        self.run = ""
        """The command line's record key; empty: nothing recorded or asked together."""
        self.prefetched: set[tuple[int, int]] = set()
        """Hosts (and stage) whose recorded facts were asked."""
        self.answers: dict[int, dict[str, Any]] = {}
        self.generation = 0
        self.asking: dict[int, bool] = {}
        """Hosts whose fact command runs now, and whether it succeeded."""
        self.callbacks = 0
        """Python callbacks running now: they may change a host any way, facts are not kept."""

    def changed(self) -> None:
        self.generation += 1
        self.answers.clear()

    def get(self, get_fact: Any, state: Any, host: Any, cls: Any, *rest: Any) -> Any:
        """``get_fact(state, host, cls, args, kwargs, ...)``, kept or asked."""
        described = self.describe(state, host, cls, *rest[:2])
        key = None if described is None else self.key_of(cls, *described)
        if key is None or described is None or self.callbacks:
            return get_fact(state, host, cls, *rest)
        if self.run:
            self.note(state, host, cls, *described)
            self.prefetch(state, host)
        answers = self.answers.get(id(host), {})
        if key in answers:
            kind, value = answers[key]
            if kind == "missing":  # the command a fact needs is not on the host
                from pyinfra.api.exceptions import MissingCommandError

                raise MissingCommandError(value)
            return copy.deepcopy(value)
        generation = self.generation
        together = self.ask_together(state, host, cls, *rest[:2])
        if key in together and self.keeps(generation, state, host):
            for each, answer in together.items():
                self.answers.setdefault(id(host), {})[each] = answer
            return self.get(get_fact, state, host, cls, *rest)  # handed out as kept
        self.asking[id(host)] = False
        try:
            value = get_fact(state, host, cls, *rest)
        except Exception as error:
            from pyinfra.api.exceptions import MissingCommandError

            if isinstance(error, MissingCommandError) and self.keeps(generation, state, host):
                self.answers.setdefault(id(host), {})[key] = ("missing", error.command)
            raise
        finally:
            succeeded = self.asking.pop(id(host), False)
        if succeeded and self.keeps(generation, state, host):
            self.answers.setdefault(id(host), {})[key] = ("answer", copy.deepcopy(value))
        return value

    def part(self, host: Any) -> str:
        """The record's key for the facts being asked now: those a deploy's own code asks
        (while pyinfra prepares) apart from those its operations ask (while it prepares a plan
        and again as it executes; with ``-y`` only as it executes)."""
        return f"{self.run}:{'operations' if getattr(host, 'in_op', False) else 'deploy'}"

    def parts(self, state: Any) -> list[str]:
        """The record's keys whose facts this stage will ask."""
        from pyinfra.api.state import StateStage

        deploy, operations = f"{self.run}:deploy", f"{self.run}:operations"
        if state.current_stage == StateStage.Execute:
            return [operations]
        # While preparing, a -y run asks only its deploys' own facts; its operations ask
        # theirs as they execute, moments later (:func:`kept_into_execution`): both are asked
        # now, in the one command.
        return [deploy, operations]

    def note(
        self, state: Any, host: Any, cls: Any, given: dict[str, Any], how: tuple[Any, ...]
    ) -> None:
        """Record the fact, and those that come with it (:func:`follower_facts`): an operation
        that found no file at the first run asks its checksum at the next."""
        run = self.part(host)
        for fact, arguments in [(cls, given), *((f, g) for f, g, _ in follower_facts(cls, given))]:
            key = self.key_of(fact, arguments, how)
            if key is not None:
                spec = (fact.__module__, fact.__qualname__, arguments, how)
                self.record.note(host.name, run, key, spec)

    def prefetch(self, state: Any, host: Any) -> None:
        """Once per host and stage: the facts the record has for this command line, stage and
        host, those not kept already, asked in one command per way of running them."""
        marker = (id(host), int(state.current_stage or 0))
        if marker in self.prefetched:
            return
        self.prefetched.add(marker)
        kept = self.answers.get(id(host), {})
        groups: dict[str, tuple[dict[str, Any], list[tuple[Any, dict[str, Any], str]]]] = {}
        recorded = [
            each for part in self.parts(state) for each in self.record.recorded(host.name, part)
        ]
        for module, qualname, given, how in recorded:
            cls = fact_class(module, qualname)
            key = None if cls is None else self.key_of(cls, given, how)
            if key is None or key in kept:
                continue
            executor = dict(how)
            group = groups.setdefault(repr(sorted(executor.items())), (executor, []))
            group[1].append((cls, given, guard(cls, given)))
        generation = self.generation
        for executor, wanted in groups.values():
            found = self.ask_many(state, host, wanted, executor)
            if not self.keeps(generation, state, host):
                return
            self.answers.setdefault(id(host), {}).update(found)

    def ask_together(
        self, state: Any, host: Any, cls: Any, args: Any, kwargs: Any
    ) -> dict[str, tuple[str, Any]]:
        """The fact and those that follow it (:data:`FOLLOWERS`), asked with one command."""
        from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS

        facts: Any = importlib.import_module("pyinfra.api.facts")
        fact_kwargs, global_kwargs = facts._handle_fact_kwargs(state, host, cls, args, kwargs)
        fact_kwargs.pop("self", None)
        wanted = [(cls, fact_kwargs, ""), *follower_facts(cls, fact_kwargs)]
        if len(wanted) == 1 or any(not _plain(fact) for fact, _, _ in wanted):
            return {}
        executor = {k: v for k, v in global_kwargs.items() if k in CONNECTOR_ARGUMENT_KEYS}
        return self.ask_many(state, host, wanted, executor)

    def ask_many(
        self,
        state: Any,
        host: Any,
        wanted: list[tuple[Any, dict[str, Any], str]],
        executor: dict[str, Any],
    ) -> dict[str, tuple[str, Any]]:
        """Facts asked with one command run as ``executor`` says: each fact's own command in
        a subshell after its guard, its exit status after it (units' states from one
        ``systemctl show``: :func:`units_together`). Only those whose command succeeded are
        returned, by key, processed as pyinfra processes a fact's output."""
        from pyinfra.api.command import StringCommand

        facts: Any = importlib.import_module("pyinfra.api.facts")
        how = tuple(sorted(executor.items()))
        keys = [self.key_of(fact, dict(given), how) for fact, given, _ in wanted]
        if None in keys or not wanted:
            return {}
        segments: list[tuple[Any, str, Any]] = []
        """Each part of the command: what it runs, the guard before it, and what makes the
        answers from its output lines."""
        together, alone = units_together(wanted, keys)
        for command, answers in together:
            segments.append((command, "", answers))
        for (fact, given, skip), key in alone:
            instance = fact()  # one per fact: a command may keep its arguments for processing
            command = facts._make_command(instance.command, dict(given))
            requires = facts._make_command(instance.requires_command, dict(given))
            if requires:  # as pyinfra's _get_fact wraps it
                command = _if_command(requires, command)
            segments.append((command, skip, _answer_of(instance, key, requires)))
        parts: list[Any] = []
        for command, skip, _ in segments:
            parts += ["(", skip, command, ");", "_s=$?;", "echo;", "echo", END, "$_s;"]
        if not host.connected:
            return {}
        self.asking[id(host)] = False
        try:
            status, output = host.run_shell_command(
                StringCommand(*parts),
                print_output=state.print_fact_output,
                print_input=state.print_fact_input,
                **executor,
            )
        except Exception:  # timeouts, a lost connection: each fact is asked alone
            return {}
        finally:
            self.asking.pop(id(host), None)
        if not status:
            return {}
        found: dict[str, tuple[str, Any]] = {}
        lines: list[str] = []
        handlers = iter(segments)
        for line in output.stdout_lines:
            end = _END_LINE.fullmatch(line)
            if end is None:
                lines.append(line)
                continue
            _, _, answers = next(handlers)
            if lines and lines[-1] == "":  # the blank line echoed before the end line
                lines.pop()
            if end[1] == "0":
                found.update(answers(lines))
            lines = []
        return found

    def keeps(self, generation: int, state: Any, host: Any) -> bool:
        return generation == self.generation and host not in state.failed_hosts

    @staticmethod
    def describe(
        state: Any, host: Any, cls: Any, args: Any, kwargs: Any
    ) -> tuple[dict[str, Any], tuple[tuple[str, Any], ...]] | None:
        """The fact's arguments and how it is run (``_sudo``, ``_env``, ...), as pyinfra
        reads them."""
        from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS

        facts: Any = importlib.import_module("pyinfra.api.facts")

        in_operation = host.current_op_global_arguments
        if in_operation and not any(name.startswith("_") for name in kwargs or {}):
            # Asked by an operation, run as it runs: pyinfra would resolve the operation's
            # global arguments again (each looked up through every layer of host and group
            # data) to the same values.
            global_kwargs = in_operation
            fact_kwargs = dict(kwargs or {})
            if args or fact_kwargs:
                fact_kwargs = getcallargs(cls().command, *(args or []), **fact_kwargs)
        else:
            fact_kwargs, global_kwargs = facts._handle_fact_kwargs(state, host, cls, args, kwargs)
        fact_kwargs.pop("self", None)  # the fact object pyinfra binds its command to
        how = tuple(
            sorted((k, v) for k, v in global_kwargs.items() if k in CONNECTOR_ARGUMENT_KEYS)
        )
        return fact_kwargs, how

    @staticmethod
    def key_of(cls: Any, given: dict[str, Any], how: tuple[tuple[str, Any], ...]) -> str | None:
        """The fact, its arguments and how it is run as one text; None where an argument has
        no stable text (an object's address)."""
        key = repr((cls.__module__, cls.__qualname__, sorted(given.items()), list(how)))
        return None if " at 0x" in key else key

    def key(self, state: Any, host: Any, cls: Any, args: Any, kwargs: Any) -> str | None:
        described = self.describe(state, host, cls, args, kwargs)
        return None if described is None else self.key_of(cls, *described)

    def command(self, host: Any, run: Any) -> Any:
        """Run a command on ``host``: a fact's own, or one that may change it."""
        if id(host) in self.asking:
            result = run()
            self.asking[id(host)] = bool(result[0] if isinstance(result, tuple) else result)
            return result
        self.changed()
        try:
            return run()
        finally:
            self.changed()

    def callback(self, run: Any) -> Any:
        self.changed()
        self.callbacks += 1
        try:
            return run()
        finally:
            self.callbacks -= 1
            self.changed()


END = f"__gpufleet_fact_end_{uuid.uuid4().hex}__"
"""The line after each fact's output in a command that asks several: no output holds it."""
_END_LINE = re.compile(re.escape(END) + r" (\d+)")

LARGEST_SUM = 1 << 20
"""A file's checksum is asked along with it only below this size: a model file's would take
the host minutes."""


def follower_facts(cls: Any, given: dict[str, Any]) -> list[tuple[Any, dict[str, Any], str]]:
    """The facts pyinfra's operations ask right after ``cls`` with ``given``, each with a
    shell guard that skips it (exit 97, not kept) where asking it could cost much."""
    from pyinfra.facts.files import Directory, File, Sha1File
    from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

    if cls is File and set(given) == {"path"} and isinstance(given["path"], str):
        path = given["path"]
        followers: list[tuple[Any, dict[str, Any], str]] = [
            (Sha1File, {"path": path}, guard(Sha1File, {"path": path}))
        ]
        if posixpath.dirname(path):
            followers.append((Directory, {"path": posixpath.dirname(path)}, ""))
        return followers
    if cls is SystemdStatus:
        return [(SystemdEnabled, dict(given), "")]
    return []


def guard(cls: Any, given: dict[str, Any]) -> str:
    """The shell guard a fact asked along with others runs behind: a checksum only of a file
    below :data:`LARGEST_SUM` (exit 97 otherwise, not kept; an operation that needs it asks
    it alone)."""
    from pyinfra.facts import files

    path = given.get("path")
    if not issubclass(cls, files.HashFileFactBase) or not isinstance(path, str):
        return ""
    q = shlex.quote(path)
    return (
        f'if [ -f {q} ] && [ "$(stat -c %s {q} 2>/dev/null || echo 0)" -ge {LARGEST_SUM} ];'
        " then exit 97; fi;"
    )


def _if_command(requires: Any, command: Any) -> Any:
    """A fact's command where the program it needs is there, pyinfra's marker where not (as
    pyinfra's ``_get_fact`` wraps it)."""
    from pyinfra.api.command import StringCommand

    facts: Any = importlib.import_module("pyinfra.api.facts")
    return StringCommand(
        "if", "command", "-v", requires, ">/dev/null", "2>&1;", "then", "(",
        command, ");", "else", "echo", f"'{facts._MISSING_COMMAND_MARKER}';", "fi",
    )  # fmt: skip


def _answer_of(fact: Any, key: str, requires: Any) -> Any:
    """What makes one fact's answer from its command's output lines."""
    facts: Any = importlib.import_module("pyinfra.api.facts")

    def answers(lines: list[str]) -> dict[str, tuple[str, Any]]:
        if lines == [facts._MISSING_COMMAND_MARKER]:
            return {key: ("missing", str(requires))}
        answer = _processed(fact, lines)
        return {} if answer is None else {key: answer}

    return answers


UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\@-]+")
"""A unit named outright (no pattern): ``systemctl show`` prints one block for it."""


def units_together(
    wanted: list[tuple[Any, dict[str, Any], str]], keys: list[Any]
) -> tuple[list[tuple[Any, Any]], list[tuple[tuple[Any, dict[str, Any], str], Any]]]:
    """Units' states (``SystemdStatus``) and whether they start at boot (``SystemdEnabled``),
    asked of the system manager with one ``systemctl show`` of every unit named and both
    properties, instead of a program run per fact: each fact's answer is made from the blocks
    of its own units, as its own command would have printed them, the other property left
    out. The rest are returned to be asked alone."""
    from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus, _make_systemctl_cmd

    groups: dict[tuple[Any, Any], list[tuple[Any, list[str], Any]]] = {}
    alone = []
    for (fact, given, skip), key in zip(wanted, keys, strict=True):
        services = given.get("services")
        units = [services] if isinstance(services, str) else services
        if (
            fact in (SystemdStatus, SystemdEnabled)
            and not skip
            and not given.get("user_mode")
            and isinstance(units, list)
            and units
            and all(isinstance(u, str) and UNIT_NAME.fullmatch(u) for u in units)
        ):
            manager = (given.get("machine"), given.get("user_name"))
            groups.setdefault(manager, []).append((fact(), units, key))
        else:
            alone.append(((fact, given, skip), key))
    together = []
    for (machine, user_name), asked in groups.items():
        if len(asked) == 1:  # nothing to share: asked as it is
            fact, units, key = asked[0]
            given = {"services": units, "machine": machine, "user_name": user_name}
            alone.append(((type(fact), {k: v for k, v in given.items() if v}, ""), key))
            continue
        named = list(dict.fromkeys(unit for _, units, _ in asked for unit in units))
        from pyinfra.api.command import QuoteString, StringCommand

        show = StringCommand(
            _make_systemctl_cmd(machine=machine, user_name=user_name),
            "show", "--all", "--property", "Id", "--property", SystemdStatus.state_key,
            "--property", SystemdEnabled.state_key, *(QuoteString(u) for u in named),
        )  # fmt: skip
        together.append((_if_command("systemctl", show), _unit_answers(asked, named)))
    return together, alone


def _unit_answers(asked: list[tuple[Any, list[str], Any]], named: list[str]) -> Any:
    facts: Any = importlib.import_module("pyinfra.api.facts")

    def answers(lines: list[str]) -> dict[str, tuple[str, Any]]:
        if lines == [facts._MISSING_COMMAND_MARKER]:
            return {key: ("missing", "systemctl") for _, _, key in asked}
        blocks: list[list[str]] = [[]]
        for line in lines:
            if line.strip():
                blocks[-1].append(line)
            elif blocks[-1]:
                blocks.append([])
        blocks = [block for block in blocks if block]
        if len(blocks) != len(named):  # not one block a unit: each fact is asked alone
            return {}
        by_unit = dict(zip(named, blocks, strict=True))
        found = {}
        for fact, units, key in asked:
            own = [f"{fact.state_key}=", "Id="]
            output: list[str] = []
            for unit in units:
                output += [line for line in by_unit[unit] if line.startswith(tuple(own))]
                output.append("")
            if (answer := _processed(fact, output[:-1])) is not None:
                found[key] = answer
        return found

    return answers


def _processed(fact: Any, lines: list[str]) -> tuple[str, Any] | None:
    """A fact's answer from its command's output lines, as pyinfra's ``_get_fact`` makes it
    (None where processing fails: asked alone, pyinfra reports it)."""
    try:
        return ("answer", fact.process(lines) if lines else fact.default())
    except Exception:
        return None


def _plain(fact: Any) -> bool:
    """A fact asked with its command alone: no other shell, no preconditions."""
    from pyinfra.api.facts import FactBase

    return fact.shell_executable is None and (
        fact.check_preconditions is FactBase.check_preconditions
    )


FACTS = FactCache()


def kept_into_execution(state: Any, stage: Any) -> bool:
    """Whether facts asked while preparing still hold as the run executes: where it shows
    no plan first (``-y``), nothing happens between the two, no wait for a yes; where it
    shows one, the hosts may change while it waits, and everything is asked afresh."""
    from pyinfra.api.state import StateStage

    return (
        stage == StateStage.Execute
        and state.current_stage == StateStage.Prepare
        and not state.should_check_for_changes()
    )


def cache_facts(cache: FactCache = FACTS) -> None:
    """Route pyinfra's fact gathering, its commands, file transfers, Python callbacks and
    stage changes through ``cache``."""
    facts: Any = importlib.import_module("pyinfra.api.facts")
    from pyinfra.api.command import FunctionCommand
    from pyinfra.api.host import Host
    from pyinfra.api.state import State

    get_fact = facts._get_fact

    @functools.wraps(get_fact)
    def cached_get_fact(
        state: Any,
        host: Any,
        cls: Any,
        args: Any = None,
        kwargs: Any = None,
        ensure_hosts: Any = None,
        apply_failed_hosts: bool = True,
    ) -> Any:
        return cache.get(get_fact, state, host, cls, args, kwargs, ensure_hosts, apply_failed_hosts)

    facts._get_fact = cached_get_fact

    for name in ("run_shell_command", "put_file", "rsync"):
        method = getattr(Host, name)

        @functools.wraps(method)
        def on_host(self: Any, *args: Any, _method: Any = method, **kwargs: Any) -> Any:
            return cache.command(self, lambda: _method(self, *args, **kwargs))

        setattr(Host, name, on_host)

    execute = FunctionCommand.execute

    @functools.wraps(execute)
    def execute_callback(self: Any, *args: Any, **kwargs: Any) -> Any:
        return cache.callback(lambda: execute(self, *args, **kwargs))

    FunctionCommand.execute = execute_callback  # type: ignore[method-assign]

    set_stage = State.set_stage

    @functools.wraps(set_stage)
    def set_stage_afresh(self: Any, stage: Any) -> Any:
        if not kept_into_execution(self, stage):
            cache.changed()
        return set_stage(self, stage)

    State.set_stage = set_stage_afresh  # type: ignore[method-assign]


TESTED_RELEASES = ("3.10",)
"""pyinfra releases (major.minor) whose internals these cuts were written against and tested
with: they replace private functions, which a later release may change. Under any other,
pyinfra runs as it is, slower and unchanged."""


def applies(version: str) -> bool:
    """Whether the cuts fit this pyinfra version.

    >>> applies("3.10.0"), applies("3.10.2"), applies("3.11.0"), applies("4.0")
    (True, True, False, False)
    """
    return ".".join(version.split(".")[:2]) in TESTED_RELEASES


def install() -> None:
    """Put the cuts in place in pyinfra (once per process), where its release is one they
    were tested with."""
    from importlib.metadata import version

    # The module: pyinfra.api's own name ``operation`` is the decorator.
    operation: Any = importlib.import_module("pyinfra.api.operation")

    if getattr(operation, _INSTALLED, False) or not applies(version("pyinfra")):
        return
    operation.get_operation_order_from_stack = operation_order
    arguments: Any = importlib.import_module("pyinfra.api.arguments")
    facts: Any = importlib.import_module("pyinfra.api.facts")
    arguments.all_global_arguments = facts.all_global_arguments = global_argument_types(
        arguments.all_global_arguments
    )
    cache_facts()
    setattr(operation, _INSTALLED, True)
    import pyinfra

    if pyinfra.is_cli:  # a command line a later run repeats; not code driving pyinfra's API
        FACTS.record = FactRecord.from_environment()
        FACTS.run = FactRecord.run_key(sys.argv)
        atexit.register(FACTS.record.save)
