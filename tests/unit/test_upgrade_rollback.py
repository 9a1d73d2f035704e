"""Upgrades that roll back: the warm-up's own shell (``inference.warmed_up`` with the units
of a llama.cpp build) run against a folder tree standing in for the host, with its paths
rewritten into it, and ``systemctl``, ``journalctl`` and the warm-up tool standing in for
the real ones: a build on trial is kept when the model answers, put back when it does not,
and a host with no trial only warms up. The lab test (tests/host/test_upgrade_rollback.py)
does the same with real llama.cpp builds."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gpufleet.operations import inference

NEW, OLD = "a" * 64, "b" * 64


def command(services: list[str]) -> str:
    return next(
        iter(
            inference.warmed_up._inner(  # type: ignore[attr-defined]
                base_url="http://127.0.0.1:8080",
                health_path="/health",
                model="XS-LOC-FRE-gemma3-270m",
                services=services,
            )
        )
    )


class Host:
    """A folder tree with the paths the shell touches, and a log of what it ran."""

    def __init__(self, root: Path, answers: bool, trial: bool):
        self.root = root
        (root / "usr/local/bin").mkdir(parents=True)
        (root / "var/lib/gpufleet").mkdir(parents=True)
        tools = root / "tools"
        tools.mkdir()
        self.log = root / "ran"
        self.log.write_text("")
        for name, path in inference.BINARIES.items():
            self.path(path).write_text(f"{name} {NEW}\n")
        self.path(inference.STAMP_FILE).write_text(NEW + "\n")
        if trial:
            previous = self.path(inference.PREVIOUS_BUILD)
            previous.mkdir(parents=True)
            for name in inference.BINARIES:
                (previous / name).write_text(f"{name} {OLD}\n")
            self.path(inference.PREVIOUS_STAMP).write_text(OLD + "\n")
        # The warm-up answers while the binaries are those it is told to answer on.
        warmup = self.path(inference.WARMUP_SCRIPT)
        warmup.parent.mkdir(parents=True, exist_ok=True)
        answering = NEW if answers else OLD
        server = self.path(inference.BINARIES["llama-server"])
        warmup.write_text(
            f"import sys\nopen({str(self.log)!r}, 'a').write('warm-up\\n')\n"
            f"sys.exit(0 if {answering!r} in open({str(server)!r}).read() else 1)\n"
        )
        for tool in ("systemctl", "journalctl"):
            script = tools / tool
            script.write_text(f'#!/bin/sh\necho "{tool} $*" >> {self.log}\n')
            script.chmod(0o755)
        self.environment = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}

    def path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def run(self, shell: str) -> subprocess.CompletedProcess:
        for prefix in ("/usr/local/", "/var/lib/gpufleet"):
            shell = shell.replace(prefix, f"{self.root}{prefix}")
        return subprocess.run(
            ["sh", "-c", shell],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=self.environment,
        )

    def binaries(self) -> set[str]:
        return {self.path(path).read_text().split()[1] for path in inference.BINARIES.values()}

    def stamp(self) -> str:
        return self.path(inference.STAMP_FILE).read_text().strip()

    def ran(self) -> list[str]:
        return self.log.read_text().splitlines()


SERVICES = ["llama-server", "ggml-rpc-server"]


def test_a_new_build_that_answers_is_kept_and_the_previous_one_removed(tmp_path):
    host = Host(tmp_path, answers=True, trial=True)
    result = host.run(command(SERVICES))
    assert result.returncode == 0, result.stderr
    assert host.binaries() == {NEW} and host.stamp() == NEW
    assert not host.path(inference.PREVIOUS_BUILD).exists()
    assert host.ran() == ["warm-up"]


def test_a_new_build_that_does_not_answer_is_replaced_by_the_previous_one(tmp_path):
    host = Host(tmp_path, answers=False, trial=True)
    result = host.run(command(SERVICES))
    assert result.returncode == 1
    assert host.binaries() == {OLD} and host.stamp() == OLD
    assert not host.path(inference.PREVIOUS_BUILD).exists()
    assert host.ran() == [
        "warm-up",  # the new build: no answer
        "journalctl -u llama-server -u ggml-rpc-server -n 40 --no-pager -o cat",
        "systemctl restart llama-server ggml-rpc-server",
        "warm-up",  # the previous build, back: it answers
    ]
    said = result.stderr
    assert f"llama.cpp build {NEW[:12]} did not warm up; build {OLD[:12]} is put back" in said
    assert "The previous build answers again." in said


@pytest.mark.parametrize("answers", [True, False])
def test_without_a_trial_the_warm_up_only_warms_up(tmp_path, answers):
    host = Host(tmp_path, answers=answers, trial=False)
    result = host.run(command(["llama-server"]))
    assert result.returncode == (0 if answers else 1)
    assert host.binaries() == {NEW} and host.stamp() == NEW  # nothing to put back
    assert host.ran() == ["warm-up"]


def test_the_warm_up_of_a_build_watches_its_server_unit():
    assert "--unit llama-server" in command(SERVICES)
