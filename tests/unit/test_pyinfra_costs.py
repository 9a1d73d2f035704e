"""The cuts of pyinfra's per-host costs give what pyinfra's own code gives."""

from __future__ import annotations

import importlib
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
