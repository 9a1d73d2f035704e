"""Every gpufleet operation against data files, one case a file, as pyinfra tests its own.

``tests/operations/<module>.<operation>/<case>.yaml`` (or ``.json``) holds one case of
``gpufleet.operations.<module>.<operation>``:

``args``
    the operation's keyword arguments. ``{"$returns": value}`` is a function returning the
    value, ``{"$raises": {"name": "SecretError", "message": ...}}`` one raising;
    ``$WantedFile``, ``$HostSpec``, ``$SecretUse``, ``$FleetCA`` (a folder) and ``$set``
    build those objects from what they hold.
``facts``
    values by fact (``files.File``: the fact module's last name and the class) and arguments
    (``path=/etc/x``; non-strings as JSON, several sorted and joined by ``, ``); a fact
    without arguments maps straight to its value. ``{"$output": [lines]}`` is a command's
    output, read by the fact's own ``process``. A fact the case lacks fails the test.
``vault``, ``vault_at_run``
    the Vault server's answers by ``"METHOD path"`` (``"*"``: any other request) while the
    operation is planned, and what differs while it runs; ``{"$error": message}`` fails the
    request, ``{"$sequence": [...]}`` answers in turn (the last one again after that). The
    deploy AppRole's login (``POST auth/approle/login``) is answered but not listed in
    ``does``: it changes nothing.
``at_run``
    the host while a function command runs: ``shell`` and ``upload`` results in call order
    (true once the list is used up), ``stderr`` of a failing shell command, ``stdout`` of
    each succeeding one in turn (lists of lines), ``download``: the content of each file a
    function downloads from the host, in turn.
``local_files``
    files on the control machine before (in ``$tmp``: a fresh folder, wherever it is named)

What the operation must do, compared as a whole:

``commands``
    what it yields: command strings; ``["upload", content, dest]``; a function command as
    ``{"function": name, "does": [...], "returns": ...}``, run against the case's host and
    Vault, ``does`` listing its ``["run", command]``, ``["upload", content, dest]``,
    ``["log", message]`` and ``["vault", method, path, body]`` (writes) in order
``noop_description``
    what it told the operator it left alone (a list when several)
``warnings``
    what it logged as warnings
``local_files_after``
    every file in ``$tmp`` after the run (unless given: ``local_files``, unchanged)
``exception``
    ``{"name": class name, "message": part of the message}``, raised while planning
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import pkgutil
from collections.abc import Callable, Iterator
from importlib import import_module
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from pyinfra.api import Config, FunctionCommand, StringCommand
from pyinfra.api.command import FileUploadCommand
from pyinfra.connectors.util import CommandOutput, OutputLine
from pyinfra.context import ctx_host, ctx_state

import gpufleet.operations
import gpufleet.vault
from gpufleet.facts import gpu as gpu_facts
from gpufleet.models import HostSpec
from gpufleet.operations.config import WantedFile
from gpufleet.pki import FleetCA
from gpufleet.secrets import SecretError, SecretUse
from gpufleet.vault import VaultClient, VaultError

CASES = Path(__file__).parent.parent / "operations"
RAISABLE = {"SecretError": SecretError, "VaultError": VaultError}


def _raiser(spec: dict[str, str]) -> Callable[[], Any]:
    def raises() -> Any:
        raise RAISABLE[spec["name"]](spec["message"])

    return raises


MAKERS: dict[str, Callable[[Any], Any]] = {
    "$returns": lambda value: lambda: value,
    "$raises": _raiser,
    "$WantedFile": lambda fields: WantedFile(**fields),
    "$HostSpec": HostSpec.model_validate,
    "$SecretUse": lambda fields: SecretUse(**fields),
    "$FleetCA": lambda folder: FleetCA(Path(folder)),
    "$set": set,
}


def build(value: Any) -> Any:
    """A case's value with its ``$`` objects made."""
    if isinstance(value, list):
        return [build(item) for item in value]
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in MAKERS:
            ((tag, inner),) = value.items()
            return MAKERS[tag](build(inner))
        return {key: build(item) for key, item in value.items()}
    return value


def substituted(value: Any, tmp: str) -> Any:
    if isinstance(value, str):
        return value.replace("$tmp", tmp)
    if isinstance(value, list):
        return [substituted(item, tmp) for item in value]
    if isinstance(value, dict):
        return {substituted(k, tmp): substituted(v, tmp) for k, v in value.items()}
    return value


def fact_arguments(kwargs: dict[str, Any]) -> str:
    """``path=/etc/x, seconds=60``; global arguments (``_env``, ``_sudo``) are not the fact's."""
    return ", ".join(
        f"{key}={value if isinstance(value, str) else json.dumps(value)}"
        for key, value in sorted(kwargs.items())
        if not key.startswith("_")
    )


class FakeHost:
    """The host an operation sees: facts from the case; what it does is recorded."""

    name = "testhost"
    print_prefix = ""
    current_op_global_arguments = None

    def __init__(self, facts: dict[str, Any], at_run: dict[str, Any]) -> None:
        self.facts = facts
        self.noops: list[str] = []
        self.does: list[list[Any]] = []
        self.shell_results = list(at_run.get("shell", []))
        self.upload_results = list(at_run.get("upload", []))
        self.stderr = at_run.get("stderr", [])
        self.stdout = list(at_run.get("stdout", []))
        self.downloads = list(at_run.get("download", []))

    def get_fact(self, cls: type, *args: Any, **kwargs: Any) -> Any:
        assert not args, "facts are asked with keyword arguments"
        fact = f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
        if fact not in self.facts:
            raise KeyError(f"the case has no fact {fact}")
        value = self.facts[fact]
        key = fact_arguments(kwargs)
        if key:
            if key not in value:
                raise KeyError(f"the case has no fact {fact} for {key}")
            value = value[key]
        if isinstance(value, dict) and set(value) == {"$output"}:
            return cls().process(value["$output"])
        return build(value)

    def noop(self, description: str) -> None:
        self.noops.append(description)

    def get_temp_filename(self, *args: Any, **kwargs: Any) -> str:
        return "_tempfile_"

    def log(self, message: str, *args: Any, **kwargs: Any) -> None:
        self.does.append(["log", message])

    def log_styled(self, message: str, *args: Any, **kwargs: Any) -> None:
        self.does.append(["log", message])

    def run_shell_command(self, command: Any, **kwargs: Any) -> tuple[bool, CommandOutput]:
        self.does.append(["run", str(command)])
        ok = self.shell_results.pop(0) if self.shell_results else True
        if ok:
            printed = self.stdout.pop(0) if self.stdout else []
            lines = [OutputLine("stdout", line) for line in printed]
        else:
            lines = [OutputLine("stderr", line) for line in self.stderr]
        return ok, CommandOutput(lines)

    def put_file(self, src: Any, dest: str, **kwargs: Any) -> bool:
        # A path on the control machine is shown as its content, as an in-memory file is.
        content = src.getvalue() if hasattr(src, "getvalue") else Path(src).read_text()
        self.does.append(["upload", content, dest])
        return self.upload_results.pop(0) if self.upload_results else True

    def get_file(self, src: str, dest: str, **kwargs: Any) -> bool:
        self.does.append(["download", src, dest])
        if not self.downloads:
            return False
        Path(dest).write_text(self.downloads.pop(0))
        return True


class FakeVault:
    """Vault's answers from the case; every write is recorded on the host."""

    def __init__(self, host: FakeHost, planned: dict[str, Any], at_run: dict[str, Any]):
        self.host, self.answers, self.at_run = host, planned, {**planned, **at_run}
        self.running = False
        self.asked: dict[str, int] = {}

    def request(self, method: str, path: str, body: Any = None, timeout: Any = None) -> Any:
        request = f"{method} {path}"
        answers = self.at_run if self.running else self.answers
        if method != "GET" and request != "POST auth/approle/login":  # a login changes nothing
            self.host.does.append(["vault", method, path, body])
        if request in answers:
            answer = answers[request]
        elif "*" in answers:
            answer = answers["*"]
        elif method == "GET":
            raise KeyError(f"the case has no Vault answer to {request}")
        else:
            answer = None
        if isinstance(answer, dict) and set(answer) == {"$sequence"}:
            turn = self.asked[request] = self.asked.get(request, -1) + 1
            answer = answer["$sequence"][min(turn, len(answer["$sequence"]) - 1)]
        if isinstance(answer, dict) and set(answer) == {"$error"}:
            raise VaultError(answer["$error"])
        return copy.deepcopy(answer)


class Clock:
    """``time`` for the Vault operations: sleeping moves the clock on at once."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def shown(command: Any, state: Any, host: FakeHost) -> Any:
    """A command in a case's words; a function command is run to show what it does."""
    if isinstance(command, str):
        return command.strip()
    if isinstance(command, StringCommand):
        raw, masked = command.get_raw_value(), command.get_masked_value()
        return raw if raw == masked else [raw, masked]
    if isinstance(command, FileUploadCommand):
        return ["upload", command.src.getvalue(), command.dest]
    if isinstance(command, FunctionCommand):
        host.does = []
        returned = command.function(state, host, *command.args, **command.kwargs)
        return {"function": command.function.__name__, "does": host.does, "returns": returned}
    raise TypeError(f"{command!r} is not a command a case can show")


def load(path: Path) -> dict[str, Any]:
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def case_files() -> Iterator[Any]:
    for folder in sorted(p for p in CASES.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            if path.suffix in (".json", ".yaml", ".yml"):
                yield pytest.param(path, id=f"{folder.name}/{path.stem}")


def operations() -> set[str]:
    """``module.operation`` for every ``@operation`` of ``gpufleet.operations``."""
    found = set()
    for module_info in pkgutil.iter_modules(gpufleet.operations.__path__):
        module = import_module(f"gpufleet.operations.{module_info.name}")
        for name, value in inspect.getmembers(module, callable):
            if hasattr(value, "_inner") and value.__module__ == module.__name__:
                found.add(f"{module_info.name}.{name}")
    return found


WITHOUT_CASES = {
    "drain.rebooted": "it runs pyinfra's own server.reboot, whose function commands sleep and "
    "reconnect to a real host; tests/unit/test_reboot_safety.py plans it on the homelab",
}
"""Operations a data file cannot run, and where they are tested instead."""


def test_every_operation_has_cases_and_every_case_an_operation():
    folders = {p.name for p in CASES.iterdir() if p.is_dir() and any(p.iterdir())}
    assert folders == operations() - set(WITHOUT_CASES)


@pytest.mark.parametrize("path", list(case_files()))
def test_operation(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = substituted(load(path), str(tmp_path))
    module, name = path.parent.name.split(".")
    operation = getattr(import_module(f"gpufleet.operations.{module}"), name)

    for local, content in case.get("local_files", {}).items():
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        Path(local).write_text(content)
    host = FakeHost(case.get("facts", {}), case.get("at_run", {}))
    state = SimpleNamespace(cwd=str(tmp_path), config=Config())
    vault = FakeVault(host, case.get("vault", {}), case.get("vault_at_run", {}))
    monkeypatch.setattr(
        VaultClient,
        "send",
        lambda _client, method, path, body=None, timeout=None, token=None, raw=None: vault.request(
            method, path, body, timeout
        ),
    )
    monkeypatch.setattr(gpufleet.vault, "_LOGINS", {})
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    vault_operations = import_module("gpufleet.operations.vault")
    monkeypatch.setattr(vault_operations, "time", Clock())
    monkeypatch.setattr(
        vault_operations, "secrets", SimpleNamespace(token_hex="<token_hex({})>".format)
    )
    monkeypatch.setattr(gpu_facts, "_reports", {})
    warnings = Warnings()
    logging.getLogger("pyinfra").addHandler(warnings)

    try:
        with ctx_state.use(state), ctx_host.use(host):
            try:
                generated = list(operation._inner(**build(case.get("args", {}))))
            except Exception as error:
                if "exception" not in case:
                    raise
                assert type(error).__name__ == case["exception"]["name"]
                assert case["exception"]["message"] in str(error)
                return
            assert "exception" not in case, f"no {case['exception']['name']} was raised"
            assert host.does == [], "planning must change nothing"
            vault.running = True
            commands = [shown(command, state, host) for command in generated]
    finally:
        logging.getLogger("pyinfra").removeHandler(warnings)

    noops = host.noops[0] if len(host.noops) == 1 else (host.noops or None)
    assert {
        "commands": commands,
        "noop_description": noops,
        "warnings": warnings.messages,
    } == {
        "commands": case.get("commands", []),
        "noop_description": case.get("noop_description"),
        "warnings": case.get("warnings", []),
    }
    left = {str(p): p.read_text() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert left == case.get("local_files_after", case.get("local_files", {}))
