"""Safe reboots on the homelab's GPU nodes, planned from fact profiles (no host contacted):
the NVIDIA module is checked for every kernel the host can boot before a reboot is asked
for or made, and ``reboot: true`` reboots one host at a time. The check's own shell runs
here against a /lib/modules tree of files."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from gpufleet.operations.nvidia import module_built
from gpufleet.preview import PlannedOperation
from tests.unit.test_preview import HOMELAB, ROOT, planned

GPU_NODES = ("akshat-pc", "old-office-pc")
CHECK = "NVIDIA driver | NVIDIA module built for every kernel the host can boot"


def names(operations: list[PlannedOperation]) -> list[str]:
    return [operation.name for operation in operations]


def kernels_fact(installed: list[str], with_module: list[str]):
    report = {
        "running": installed[0],
        "installed": installed,
        "with_headers": installed,
        "with_nvidia_module": with_module,
    }
    return lambda _arguments: report


@pytest.fixture(scope="module")
def gpu_nodes() -> dict[str, list[PlannedOperation]]:
    return planned(HOMELAB, ["deploys/gpu_node.py"], list(GPU_NODES))


@pytest.mark.parametrize("node", GPU_NODES)
def test_the_module_is_checked_after_the_driver_and_before_the_reboot_is_reported(gpu_nodes, node):
    operations = gpu_nodes[node]
    order = names(operations)
    install = next(i for i, n in enumerate(order) if n.startswith("NVIDIA driver | Install"))
    check = order.index(CHECK)
    report = order.index("NVIDIA driver | Report the reboot the driver needs")
    assert install < check < report
    (command,) = operations[check].commands
    # A fresh node: the driver is installed in this run, so its one kernel is checked after.
    assert "for k in 6.1.0-28-amd64; do" in command
    assert "[ -e /lib/modules/6.1.0-28-amd64/build/Makefile ]" in command  # running's headers


def test_a_kernel_installed_after_the_driver_is_checked_too():
    """A Debian point release put 6.1.0-31 in /boot beside the running 6.1.0-28: both are
    kernels the next boot may pick, and both are checked."""
    plans = planned(
        HOMELAB,
        ["deploys/gpu_node.py"],
        ["old-office-pc"],
        **{
            "gpufleet.facts.system.Kernels": kernels_fact(
                ["6.1.0-28-amd64", "6.1.0-31-amd64"], ["6.1.0-28-amd64"]
            )
        },
    )
    (check,) = [o for o in plans["old-office-pc"] if o.name == CHECK]
    assert "for k in 6.1.0-28-amd64 6.1.0-31-amd64; do" in check.commands[0]


def test_reboot_true_reboots_one_gpu_node_at_a_time_after_the_module_check(tmp_path):
    inventory = tmp_path / "inventory/homelab.py"
    inventory.parent.mkdir()
    text = ROOT.joinpath(HOMELAB).read_text()
    for version in ('"version": "575.64.05"', '"version": "535.261.03"'):
        assert text.count(version) == 1
        text = text.replace(version, version + ', "reboot": True')
    inventory.write_text(text)
    shutil.copytree(ROOT / "group_data", tmp_path / "group_data")
    plans = planned(str(inventory), ["deploys/gpu_node.py"], list(GPU_NODES))
    for node in GPU_NODES:
        order = names(plans[node])
        reboot = order.index("NVIDIA driver | Reboot into the new NVIDIA driver")
        assert order.index(CHECK) < reboot
        assert plans[node][reboot].serial  # host by host: never both GPU nodes down at once
        assert not plans[node][order.index(CHECK)].serial
        assert "NVIDIA driver | Report the reboot the driver needs" not in order
        # Within the reboot, in order: Ollama's port drained, the requests on it waited
        # for, the reboot and the reconnect, then Ollama answering again before the next.
        steps = plans[node][reboot].commands
        drained = next(i for i, c in enumerate(steps) if "| nft -f -" in c)
        waited = next(i for i, c in enumerate(steps) if "sport = :11434" in c)
        rebooted = steps.index("( sleep 1 && reboot ) </dev/null >/dev/null 2>&1 &")
        reconnected = steps.index("at run time: wait_and_reconnect()")
        answers = next(i for i, c in enumerate(steps) if "http://127.0.0.1:11434/api/version" in c)
        assert drained < waited < rebooted < reconnected < answers
        assert "tcp dport { 11434 } ct state new reject with tcp reset" in steps[drained]


def test_preview_says_which_operation_runs_one_host_at_a_time(tmp_path, capsys):
    from gpufleet.cli import main

    inventory = tmp_path / "inventory/homelab.py"
    inventory.parent.mkdir()
    text = ROOT.joinpath(HOMELAB).read_text()
    inventory.write_text(
        text.replace('"version": "535.261.03"', '"version": "535.261.03", "reboot": True')
    )
    shutil.copytree(ROOT / "group_data", tmp_path / "group_data")
    code = main(["preview", str(inventory), "deploys/gpu_node.py", "--limit", "old-office-pc"])
    shown = capsys.readouterr().out
    assert code == 0
    assert "* NVIDIA driver | Reboot into the new NVIDIA driver (one host at a time)" in shown
    main(["preview", str(inventory), "deploys/gpu_node.py", "--limit", "old-office-pc", "--json"])
    (host,) = json.loads(capsys.readouterr().out)["hosts"]
    serial = [o["name"] for o in host["operations"] if o["serial"]]
    assert serial == ["NVIDIA driver | Reboot into the new NVIDIA driver"]


def _check_script(kernels: list[str], running: str | None, modules: Path) -> str:
    generator = module_built._inner  # the operation's own function, facts given below
    from unittest import mock

    report = {
        "running": running or "",
        "installed": kernels,
        "with_headers": [],
        "with_nvidia_module": [],
    }
    with mock.patch("gpufleet.operations.nvidia.host") as host:
        host.get_fact.return_value = report
        (command,) = list(generator(kernels=kernels, running=running, driver_changes=True))
    return command.replace("/lib/modules", str(modules))


def test_the_check_fails_naming_each_kernel_without_the_module(tmp_path):
    modules = tmp_path / "modules"
    (modules / "6.1.0-28-amd64" / "updates" / "dkms").mkdir(parents=True)
    (modules / "6.1.0-28-amd64" / "updates" / "dkms" / "nvidia.ko.xz").write_bytes(b"")
    (modules / "6.1.0-28-amd64" / "build").mkdir()
    (modules / "6.1.0-28-amd64" / "build" / "Makefile").write_text("")
    (modules / "6.1.0-31-amd64").mkdir()
    tools = tmp_path / "bin"  # find and grep, no dkms: building is tried and fails quietly
    tools.mkdir()
    for tool in ("find", "grep"):
        (tools / tool).symlink_to(shutil.which(tool) or tool)
    env = {"PATH": str(tools)}
    ok = _check_script(["6.1.0-28-amd64"], "6.1.0-28-amd64", modules)
    assert subprocess.run(["/bin/sh", "-c", ok], env=env).returncode == 0
    lacking = _check_script(["6.1.0-28-amd64", "6.1.0-31-amd64"], "6.1.0-28-amd64", modules)
    result = subprocess.run(["/bin/sh", "-c", lacking], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("no NVIDIA module for kernel(s) 6.1.0-31-amd64: do not boot")


def test_the_check_fails_without_the_running_kernels_headers(tmp_path):
    modules = tmp_path / "modules"
    (modules / "6.1.0-28-amd64" / "updates").mkdir(parents=True)
    (modules / "6.1.0-28-amd64" / "updates" / "nvidia.ko").write_bytes(b"")
    script = _check_script(["6.1.0-28-amd64"], "6.1.0-28-amd64", modules)
    result = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True)
    assert result.returncode == 1
    assert "no headers for the running kernel 6.1.0-28-amd64" in result.stderr
