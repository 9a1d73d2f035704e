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

Each change is installed once per process by :func:`install` (``check_inventory`` and
gpufleet's pyinfra entry point call it) and keeps pyinfra's results identical.
"""

from __future__ import annotations

import copy
import functools
import importlib
import posixpath
import re
import shlex
import sys
import uuid
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


class FactCache:
    """Facts' answers per host, dropped whenever something may have changed a host.

    A fact is kept only when its command succeeded and nothing else ran on any host while it
    was asked (hosts run in parallel; one host's change may show on another, a Proxmox host's
    on its containers). A kept answer is handed out as a copy: an operation may change what
    it was given.
    """

    def __init__(self) -> None:
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
        key = self.key(state, host, cls, *rest[:2])
        if key is None or self.callbacks:
            return get_fact(state, host, cls, *rest)
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

    def ask_together(
        self, state: Any, host: Any, cls: Any, args: Any, kwargs: Any
    ) -> dict[str, tuple[str, Any]]:
        """The fact and those that follow it (:data:`FOLLOWERS`), asked with one command: each
        fact's own command in a subshell, its exit status after it. Only those whose command
        succeeded are returned, by key, processed as pyinfra processes a fact's output."""
        from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
        from pyinfra.api.command import StringCommand

        facts: Any = importlib.import_module("pyinfra.api.facts")
        fact_kwargs, global_kwargs = facts._handle_fact_kwargs(state, host, cls, args, kwargs)
        fact_kwargs.pop("self", None)
        wanted = [(cls, fact_kwargs, ""), *follower_facts(cls, fact_kwargs)]
        if len(wanted) == 1 or any(not _plain(fact) for fact, _, _ in wanted):
            return {}
        keys = [self.key(state, host, fact, None, dict(given)) for fact, given, _ in wanted]
        if None in keys:
            return {}
        parts: list[Any] = []
        commands = []
        instances = []  # one per fact: a command may keep its arguments for processing
        for fact, given, guard in wanted:
            instance = fact()
            instances.append(instance)
            command = facts._make_command(instance.command, dict(given))
            requires = facts._make_command(instance.requires_command, dict(given))
            if requires:  # as pyinfra's _get_fact wraps it
                command = StringCommand(
                    "if", "command", "-v", requires, ">/dev/null", "2>&1;", "then", "(",
                    command, ");", "else", "echo", f"'{facts._MISSING_COMMAND_MARKER}';", "fi",
                )  # fmt: skip
            commands.append(requires)
            parts += ["(", guard, command, ");", "_s=$?;", "echo;", "echo", END, "$_s;"]
        executor = {k: v for k, v in global_kwargs.items() if k in CONNECTOR_ARGUMENT_KEYS}
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
        segments = iter(zip(instances, keys, commands, strict=True))
        for line in output.stdout_lines:
            end = _END_LINE.fullmatch(line)
            if end is None:
                lines.append(line)
                continue
            instance, key, requires = next(segments)
            if lines and lines[-1] == "":  # the blank line echoed before the end line
                lines.pop()
            if end[1] == "0" and key is not None:
                if lines == [facts._MISSING_COMMAND_MARKER]:
                    found[key] = ("missing", str(requires))
                elif (answer := _processed(instance, lines)) is not None:
                    found[key] = answer
            lines = []
        return found

    def keeps(self, generation: int, state: Any, host: Any) -> bool:
        return generation == self.generation and host not in state.failed_hosts

    @staticmethod
    def key(state: Any, host: Any, cls: Any, args: Any, kwargs: Any) -> str | None:
        """The fact, its arguments and how it is run (``_sudo``, ``_env``, ...), as pyinfra
        reads them; None where an argument has no stable text (an object's address)."""
        from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS

        facts: Any = importlib.import_module("pyinfra.api.facts")

        fact_kwargs, global_kwargs = facts._handle_fact_kwargs(state, host, cls, args, kwargs)
        fact_kwargs.pop("self", None)  # the fact object pyinfra binds its command to
        how = sorted((k, v) for k, v in global_kwargs.items() if k in CONNECTOR_ARGUMENT_KEYS)
        key = repr((cls.__module__, cls.__qualname__, sorted(fact_kwargs.items()), how))
        return None if " at 0x" in key else key

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
        q = shlex.quote(path)
        large = (
            f'if [ -f {q} ] && [ "$(stat -c %s {q} 2>/dev/null || echo 0)" -ge {LARGEST_SUM} ];'
            " then exit 97; fi;"
        )
        followers: list[tuple[Any, dict[str, Any], str]] = [(Sha1File, {"path": path}, large)]
        if posixpath.dirname(path):
            followers.append((Directory, {"path": posixpath.dirname(path)}, ""))
        return followers
    if cls is SystemdStatus:
        return [(SystemdEnabled, dict(given), "")]
    return []


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
    cache_facts()
    setattr(operation, _INSTALLED, True)
