"""The cuts of pyinfra's per-host costs give what pyinfra's own code gives."""

from __future__ import annotations

import hashlib
import importlib
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pyinfra
import pytest
from pyinfra.api.util import get_operation_order_from_stack

from gpufleet import pyinfra_costs


def _both(state):
    """Both orders, asked from the same line (one frame, one line number)."""
    return get_operation_order_from_stack(state), pyinfra_costs.operation_order(state)


def _nested(state, depth):
    if depth:
        return _nested(state, depth - 1)
    return _both(state)


@pytest.mark.parametrize("cli", [True, False])
@pytest.mark.parametrize("deploy", [__file__, "deploys/elsewhere.py", None])
def test_the_operation_order_is_pyinfras(monkeypatch, cli, deploy):
    monkeypatch.setattr(pyinfra, "is_cli", cli)
    state = SimpleNamespace(current_deploy_filename=deploy, current_op_file_number=3)
    theirs, ours = _nested(state, 3)
    assert ours == theirs
    if deploy == __file__:  # this file's frames are in it, from the test on
        assert len(ours) >= 5 + cli


def test_install_puts_the_order_in_place_once():
    pyinfra_costs.install()
    pyinfra_costs.install()
    operation = importlib.import_module("pyinfra.api.operation")
    assert operation.get_operation_order_from_stack is pyinfra_costs.operation_order


def test_the_cuts_apply_only_to_the_pyinfra_release_they_were_tested_with():
    from importlib.metadata import version

    assert pyinfra_costs.applies(version("pyinfra")), "pyinfra upgraded: test the cuts again"
    assert not pyinfra_costs.applies("3.11.0")
    assert not pyinfra_costs.applies("4.0.0")


@pytest.fixture
def local_host(monkeypatch):
    """A connected ``@local`` host of a fresh pyinfra state, facts kept, and the shell
    commands its connector runs."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.connectors.local import LocalConnector

    pyinfra_costs.install()
    ran: list[str] = []
    run = LocalConnector.run_shell_command

    def counted(self, command, *args, **kwargs):
        ran.append(str(command))
        return run(self, command, *args, **kwargs)

    monkeypatch.setattr(LocalConnector, "run_shell_command", counted)
    state = State(Inventory((["@local"], {})), Config())
    connect_all(state)
    return state.inventory.get_host("@local"), ran


def test_a_fact_asked_twice_runs_once_until_a_command_runs(local_host, tmp_path):
    from pyinfra.facts.files import File

    host, ran = local_host
    target = tmp_path / "made"
    assert host.get_fact(File, path=str(target)) is None
    assert host.get_fact(File, path=str(target)) is None
    assert len(ran) == 1
    host.get_fact(File, path=str(tmp_path))  # another argument: another command
    assert len(ran) == 2

    status, _ = host.run_shell_command(f"touch {target}")  # not a fact: anything may change
    assert status
    assert host.get_fact(File, path=str(target))["mode"]
    assert len(ran) == 4


def test_a_kept_fact_is_handed_out_as_a_copy(local_host, tmp_path):
    from pyinfra.facts.files import Directory

    host, ran = local_host
    first = host.get_fact(Directory, path=str(tmp_path))
    first["mode"] = "changed by an operation"
    assert host.get_fact(Directory, path=str(tmp_path))["mode"] != "changed by an operation"
    assert len(ran) == 1


def test_a_failed_fact_is_asked_again(local_host):
    from pyinfra.facts.server import Command

    host, ran = local_host
    host.get_fact(Command, command="exit 3", _ignore_errors=True)
    host.get_fact(Command, command="exit 3", _ignore_errors=True)
    assert len(ran) == 2


def test_a_python_callback_and_a_new_stage_drop_kept_facts(local_host, tmp_path):
    from pyinfra.api.command import FunctionCommand
    from pyinfra.api.state import StateStage
    from pyinfra.facts.files import File

    host, ran = local_host
    target = tmp_path / "made"
    host.get_fact(File, path=str(target))
    FunctionCommand(target.touch, (), {}).execute(host.state, host, {})
    assert host.get_fact(File, path=str(target))["mode"]
    assert len(ran) == 2
    host.state.set_stage(StateStage.Prepare)
    host.get_fact(File, path=str(target))
    assert len(ran) == 3


def _asked_alone(host, fact, **given):
    """The fact as pyinfra itself asks it: its own command, nothing kept."""
    facts = importlib.import_module("pyinfra.api.facts")
    return facts._get_fact.__wrapped__(host.state, host, fact, None, given)


def test_a_files_checksum_and_folder_come_with_it_in_one_command(local_host, tmp_path):
    from pyinfra.facts.files import Directory, File, Sha1File

    host, ran = local_host
    (tmp_path / "it's a file").write_text("some text\n")
    (tmp_path / "no newline").write_text("x")
    (tmp_path / "folder").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "no newline")
    paths = [tmp_path / name for name in ("it's a file", "no newline", "folder", "link")]
    paths += [tmp_path / "missing", tmp_path / "missing/below", Path("/etc/passwd")]
    for path in paths[:4]:  # accessed after modified: a checksum's read leaves atime alone
        os.utime(path, (time.time(), time.time() - 100))
    for path in map(str, paths):
        before = len(ran)
        kept = [
            host.get_fact(File, path=path),
            host.get_fact(Sha1File, path=path),
            host.get_fact(Directory, path=os.path.dirname(path)),
        ]
        assert len(ran) == before + 1, path
        alone = [
            _asked_alone(host, File, path=path),
            _asked_alone(host, Sha1File, path=path),
            _asked_alone(host, Directory, path=os.path.dirname(path)),
        ]
        assert kept == alone, path
    assert host.get_fact(Sha1File, path=str(paths[0])) == hashlib.sha1(b"some text\n").hexdigest()


def test_a_large_files_checksum_is_asked_only_when_an_operation_asks(local_host, tmp_path):
    from pyinfra.facts.files import File, Sha1File

    host, ran = local_host
    large = tmp_path / "model.gguf"
    large.write_bytes(b"\0" * (pyinfra_costs.LARGEST_SUM + 1))
    assert host.get_fact(File, path=str(large))["size"] == pyinfra_costs.LARGEST_SUM + 1
    assert len(ran) == 1
    assert host.get_fact(Sha1File, path=str(large)) == _asked_alone(host, Sha1File, path=str(large))
    assert len(ran) == 3  # asked alone by the operation, then by the test


def test_a_units_enabled_state_comes_with_its_status(local_host):
    """Whatever this machine answers (no systemd, no systemctl): what pyinfra alone would."""
    from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

    host, _ = local_host
    kept = [
        host.get_fact(SystemdStatus, services=["ssh.service"], _ignore_errors=True),
        host.get_fact(SystemdEnabled, services=["ssh.service"], _ignore_errors=True),
    ]
    alone = [
        _asked_alone(host, SystemdStatus, services=["ssh.service"], _ignore_errors=True),
        _asked_alone(host, SystemdEnabled, services=["ssh.service"], _ignore_errors=True),
    ]
    assert kept == alone
    assert pyinfra_costs.follower_facts(SystemdStatus, {"services": ["a"]}) == [
        (SystemdEnabled, {"services": ["a"]}, "")
    ]


def test_a_packaged_deploy_imports_with_bytecode_caching_on(monkeypatch):
    """pyinfra's CLI turns caching off for the process; gpufleet's modules imported by a
    packaged deploy are still cached (a source checkout compiles them once, not every run)."""
    import builtins
    import sys

    from gpufleet import deploys

    key = str(deploys.path("common"))
    probe = "import builtins, sys\nbuiltins._caching_seen = not sys.dont_write_bytecode\n"
    monkeypatch.setitem(deploys._compiled, key, compile(probe, key, "exec"))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    deploys.run("common")
    assert builtins._caching_seen is True
    assert sys.dont_write_bytecode is True  # as pyinfra left it
    del builtins._caching_seen


def _next_run(monkeypatch, folder):
    """A new run of the same command line: the record read back from ``folder``, nothing
    kept or asked together yet."""
    monkeypatch.setattr(pyinfra_costs.FACTS, "record", pyinfra_costs.FactRecord(folder))
    monkeypatch.setattr(pyinfra_costs.FACTS, "run", "a command line")
    monkeypatch.setattr(pyinfra_costs.FACTS, "prefetched", set())
    pyinfra_costs.FACTS.changed()


def _without_atime(stat):
    """A file's stat without its access time: the first run's ``cat`` of the file moves it
    (relatime updates an access time not later than the change) when the read falls in the
    next second; a host's reads are no change of it."""
    return {k: v for k, v in stat.items() if k != "atime"} if stat else stat


def _ask_converged_facts(host, tmp_path):
    from pyinfra.facts.files import Directory, File
    from pyinfra.facts.server import Command, Hostname

    return [
        _without_atime(host.get_fact(File, path=str(tmp_path / "config"))),
        _without_atime(host.get_fact(Directory, path=str(tmp_path))),
        host.get_fact(Hostname),
        host.get_fact(Command, command="cat " + str(tmp_path / "config")),
        host.get_fact(File, path=str(tmp_path / "missing")),
    ]


def test_a_repeated_command_line_asks_a_hosts_recorded_facts_in_one_command(
    local_host, tmp_path, monkeypatch
):
    host, ran = local_host
    folder = tmp_path / "record"  # beside the folder asked about: its writes change no answer
    work = tmp_path / "work"
    work.mkdir()
    (work / "config").write_text("port 9100\n")
    _next_run(monkeypatch, folder)
    first = _ask_converged_facts(host, work)
    first_commands = len(ran)
    assert first_commands >= 4  # nothing recorded yet: each fact (a file with its folder) alone
    pyinfra_costs.FACTS.record.save()

    written = next(folder.iterdir())
    assert (folder.stat().st_mode & 0o777, written.stat().st_mode & 0o777) == (0o700, 0o600)
    assert "port 9100" not in written.read_text()  # facts and arguments, never an answer

    _next_run(monkeypatch, folder)
    before = len(ran)
    again = _ask_converged_facts(host, work)
    assert len(ran) == before + 1
    assert again == first
    assert again[3] == "port 9100"


def test_a_change_in_the_run_drops_what_was_asked_ahead(local_host, tmp_path, monkeypatch):
    from pyinfra.facts.files import File

    host, ran = local_host
    folder = tmp_path / "record"
    _next_run(monkeypatch, folder)
    target = tmp_path / "made"
    host.get_fact(File, path=str(tmp_path / "other"))
    host.get_fact(File, path=str(target))
    pyinfra_costs.FACTS.record.save()

    _next_run(monkeypatch, folder)
    assert host.get_fact(File, path=str(tmp_path / "other")) is None  # both asked here
    status, _ = host.run_shell_command(f"touch {target}")
    assert status
    before = len(ran)
    assert host.get_fact(File, path=str(target))["size"] == 0  # asked again, as it is now
    assert len(ran) == before + 1


def test_a_record_keeps_no_secret_and_names_only_fact_modules(local_host, tmp_path, monkeypatch):
    from pyinfra.facts.server import Command

    from gpufleet.facts.bandwidth import MemoryBandwidth

    host, _ = local_host
    folder = tmp_path / "record"
    _next_run(monkeypatch, folder)
    host.get_fact(Command, command="true", _env={"TOKEN": "s3cr3t-value"})
    host.get_fact(Command, command="echo plain")
    pyinfra_costs.FACTS.record.save()
    text = next(folder.iterdir()).read_text()
    assert "echo plain" in text
    assert "s3cr3t-value" not in text and "TOKEN" not in text

    assert pyinfra_costs.fact_class("pyinfra.facts.server", "Hostname") is not None
    assert pyinfra_costs.fact_class("os", "system") is None
    assert pyinfra_costs.fact_class("pyinfra.facts.server", "os.system") is None
    assert pyinfra_costs.fact_class(MemoryBandwidth.__module__, "MemoryBandwidth") is None
    assert not pyinfra_costs.recordable(
        ("pyinfra.facts.server", "Command", {"command": "id"}, (("_sudo_password", "pw"),))
    )
    assert not pyinfra_costs.recordable(  # a tuple reads back from JSON as a list
        ("pyinfra.facts.server", "Command", {"command": ("id",)}, ())
    )


def test_a_record_others_can_write_is_not_read(local_host, tmp_path, monkeypatch):
    from pyinfra.facts.server import Hostname

    host, _ = local_host
    folder = tmp_path / "record"
    _next_run(monkeypatch, folder)
    host.get_fact(Hostname)
    pyinfra_costs.FACTS.record.save()
    written = next(folder.iterdir())
    written.chmod(0o666)
    _next_run(monkeypatch, folder)
    assert pyinfra_costs.FACTS.record.recorded(host.name, pyinfra_costs.FACTS.part(host)) == []
    written.chmod(0o600)
    _next_run(monkeypatch, folder)
    assert len(pyinfra_costs.FACTS.record.recorded(host.name, pyinfra_costs.FACTS.part(host))) == 1


def test_a_record_belongs_to_its_command_lines_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deploys").mkdir()
    for name in ("inventory.py", "deploys/common.py", "deploys/gpu_node.py"):
        (tmp_path / name).write_text("")
    key = pyinfra_costs.FactRecord.run_key
    converge = key(["pyinfra", "-y", "inventory.py", "deploys/common.py"])
    assert key(["pyinfra", "--dry", "inventory.py", "deploys/common.py"]) == converge
    assert key(["pyinfra", str(tmp_path / "inventory.py"), "deploys/common.py"]) == converge
    assert key(["pyinfra", "inventory.py", "deploys/common.py", "--limit", "gpu-1"]) == converge
    with_password = ["pyinfra", "inventory.py", "deploys/common.py", "--password", "hunter2"]
    assert key(with_password) == converge
    assert key(["pyinfra", "inventory.py", "deploys/gpu_node.py"]) != converge


def test_the_record_is_off_when_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUFLEET_CACHE_DIR", str(tmp_path))
    assert pyinfra_costs.FactRecord.from_environment().folder == tmp_path / "facts"
    monkeypatch.setenv("GPUFLEET_FACT_RECORD", "off")
    assert pyinfra_costs.FactRecord.from_environment().folder is None


def test_a_files_checksum_is_recorded_with_it_though_the_first_run_found_no_file(
    local_host, tmp_path, monkeypatch
):
    from pyinfra.facts.files import File, Sha1File

    host, ran = local_host
    folder = tmp_path / "record"
    target = tmp_path / "uploaded"
    _next_run(monkeypatch, folder)
    assert host.get_fact(File, path=str(target)) is None  # the upload's first run
    pyinfra_costs.FACTS.record.save()
    target.write_text("uploaded\n")

    _next_run(monkeypatch, folder)
    before = len(ran)
    assert host.get_fact(File, path=str(target))["size"] == 9
    assert host.get_fact(Sha1File, path=str(target)) == hashlib.sha1(b"uploaded\n").hexdigest()
    assert len(ran) == before + 1


@pytest.mark.parametrize(
    ("stage", "plans", "asked"),
    [
        ("Prepare", True, ["deploy", "operations"]),  # a dry run, or a run that shows its plan
        ("Prepare", False, ["deploy", "operations"]),  # -y: kept until they execute
        ("Execute", True, ["operations"]),
    ],
)
def test_each_stage_asks_ahead_what_it_asked_last_time(monkeypatch, stage, plans, asked):
    from pyinfra.api.state import StateStage

    monkeypatch.setattr(pyinfra_costs.FACTS, "run", "line")
    state = SimpleNamespace(current_stage=StateStage[stage], should_check_for_changes=lambda: plans)
    assert pyinfra_costs.FACTS.parts(state) == [f"line:{each}" for each in asked]
    assert pyinfra_costs.FACTS.part(SimpleNamespace(in_op=True)) == "line:operations"
    assert pyinfra_costs.FACTS.part(SimpleNamespace(in_op=False)) == "line:deploy"


def test_global_argument_types_are_read_once_and_are_pyinfras():
    from typing import get_type_hints

    from pyinfra.api.arguments import AllArguments

    pyinfra_costs.install()
    arguments = importlib.import_module("pyinfra.api.arguments")
    first = arguments.all_global_arguments()
    assert first == list(get_type_hints(AllArguments).items())
    first.clear()  # a caller's list is its own
    assert arguments.all_global_arguments() == list(get_type_hints(AllArguments).items())


def test_facts_are_kept_into_execution_only_where_no_plan_waits_for_a_yes():
    from pyinfra.api.state import StateStage

    def state(stage, plans):
        return SimpleNamespace(current_stage=stage, should_check_for_changes=lambda: plans)

    kept = pyinfra_costs.kept_into_execution
    assert kept(state(StateStage.Prepare, False), StateStage.Execute)  # -y
    assert not kept(state(StateStage.Prepare, True), StateStage.Execute)  # a plan, a yes
    assert not kept(state(StateStage.Execute, False), StateStage.Disconnect)
    assert not kept(state(StateStage.Connect, False), StateStage.Prepare)


SYSTEMCTL = r"""#!/bin/sh
# systemctl show as systemd prints it: one block a unit named, the properties asked in order.
echo "$*" >> "$SYSTEMCTL_LOG"
shift  # show
properties=""
units=""
while [ $# -gt 0 ]; do
    case "$1" in
        --all) ;;
        --property) shift; properties="$properties $1" ;;
        *) units="$units $1" ;;
    esac
    shift
done
first=1
for unit in $units; do
    [ $first = 1 ] || echo
    first=0
    case "$unit" in *.*) ;; *) unit="$unit.service" ;; esac
    for property in $properties; do
        case "$property:$unit" in
            Id:*) echo "Id=$unit" ;;
            SubState:node-exporter.service) echo "SubState=running" ;;
            SubState:gpufleet-firewall.service) echo "SubState=exited" ;;
            SubState:*) echo "SubState=dead" ;;
            UnitFileState:node-exporter.service) echo "UnitFileState=enabled" ;;
            UnitFileState:gpufleet-firewall.service) echo "UnitFileState=disabled" ;;
            UnitFileState:*) echo "UnitFileState=" ;;
        esac
    done
done
"""


def test_units_states_are_asked_with_one_systemctl_as_each_would_answer(
    local_host, tmp_path, monkeypatch
):
    from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

    host, _ = local_host
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "systemctl").write_text(SYSTEMCTL)
    (tools / "systemctl").chmod(0o755)
    log = tmp_path / "systemctl.log"
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    monkeypatch.setenv("SYSTEMCTL_LOG", str(log))

    wanted = [
        (SystemdStatus, {"services": ["node-exporter"]}, ""),
        (SystemdEnabled, {"services": ["node-exporter"]}, ""),
        (SystemdStatus, {"services": ["gpufleet-firewall", "missing.service"]}, ""),
        (SystemdEnabled, {"services": "gpufleet-firewall.service"}, ""),
    ]
    how = tuple(sorted({"_sudo": False}.items()))
    found = pyinfra_costs.FACTS.ask_many(host.state, host, wanted, dict(how))
    assert len(log.read_text().splitlines()) == 1  # one systemctl for the four
    for fact, given, _ in wanted:
        kind, answer = found[pyinfra_costs.FACTS.key_of(fact, given, how)]
        assert (kind, answer) == ("answer", _asked_alone(host, fact, **given))
    assert len(log.read_text().splitlines()) == 5
    assert found[pyinfra_costs.FACTS.key_of(*wanted[2][:2], how)][1] == {
        "gpufleet-firewall.service": True,
        "missing.service": False,
    }


def test_a_fact_asked_by_an_operation_is_described_as_pyinfra_would(local_host, monkeypatch):
    """Inside an operation, the fact's arguments and how it runs are the operation's own
    resolved global arguments: what pyinfra's resolving them again gives."""
    from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments
    from pyinfra.facts.files import File
    from pyinfra.facts.server import Command, Hostname

    host, _ = local_host
    facts = importlib.import_module("pyinfra.api.facts")
    resolved, _ = pop_global_arguments(host.state, host, {"_sudo": False, "_env": {"A": "1"}})
    monkeypatch.setattr(host, "current_op_global_arguments", resolved)
    asked = [
        (File, None, {"path": "/etc/hosts"}),
        (File, ["/etc/hosts"], None),
        (Hostname, None, None),
        (Command, None, {"command": "id", "_sudo": True}),  # its own: pyinfra resolves it
    ]
    for cls, args, kwargs in asked:
        theirs, how = facts._handle_fact_kwargs(host.state, host, cls, args, kwargs)
        theirs.pop("self", None)
        ours = pyinfra_costs.FACTS.describe(host.state, host, cls, args, kwargs)
        connector = {k: v for k, v in how.items() if k in CONNECTOR_ARGUMENT_KEYS}
        assert ours is not None
        assert ours[0] == theirs
        assert ours[1] == tuple(sorted(connector.items()))
        assert dict(ours[1])["_env"] == {"A": "1"}
