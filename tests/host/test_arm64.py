"""The Pi fleet's baseline on arm64: a Debian 12 arm64 lab host (under QEMU's user-mode
emulation) gets deploys/common.py. The dry run changes nothing, the first run installs arm64
packages, the second changes nothing, and gpufleet verify passes its baseline checks."""

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gpufleet import lab

from .conftest import ROOT, SNAPSHOT, pyinfra, ssh, timed

PI_INVENTORY = ROOT / "inventory/lab_pi.py"
PI = "10.200.0.21"
GPUFLEET = str(Path(sys.executable).parent / "gpufleet")


@pytest.fixture(scope="module")
def pi_runs(lab_session):
    # The arm64 base root is built once (minutes on a cold machine: its package scripts run
    # emulated) and has no time-out; the 240 s is lab up's wait for SSH once the host boots.
    lab.ensure_emulation("aarch64")
    lab.base_root("aarch64")
    with timed("lab up of the arm64 host", 240):
        lab.up(PI_INVENTORY, timeout=240)
    before = ssh(PI, SNAPSHOT)
    dry = pyinfra("deploys/common.py", "--dry", inventory=PI_INVENTORY)
    unchanged = ssh(PI, SNAPSHOT) == before
    first = pyinfra("deploys/common.py", "-y", inventory=PI_INVENTORY)
    second = pyinfra("deploys/common.py", "-y", inventory=PI_INVENTORY)
    return dry, unchanged, first, second


def test_the_host_really_runs_arm64(pi_runs):
    assert ssh(PI, "uname -m").strip() == "aarch64"
    assert ssh(PI, "dpkg --print-architecture").strip() == "arm64"


def test_dry_run_plans_the_baseline_and_changes_nothing(pi_runs):
    dry, unchanged, _, _ = pi_runs
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert any(op["name"] == "Baseline | Install baseline packages" for op in dry.report["plan"])
    assert unchanged


def test_first_run_installs_the_arm64_packages(pi_runs):
    _, _, first, _ = pi_runs
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.report["results"]["totals"]["error"] == 0
    architecture = ssh(PI, "dpkg-query -W -f '${Architecture}' prometheus-node-exporter")
    assert architecture == "arm64"
    binary = ssh(PI, "head -c 20 /usr/bin/prometheus-node-exporter | od -An -tx1 | tr -d ' \\n'")
    assert binary[36:40] == "b700"  # ELF e_machine 0xb7: AArch64


def test_second_run_reports_zero_changes(pi_runs):
    _, _, _, second = pi_runs
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.changed == []
    assert second.report["results"]["totals"]["error"] == 0


def test_verify_passes_every_baseline_check(pi_runs, tmp_path):
    junit = tmp_path / "verify.xml"
    with timed("gpufleet verify of the arm64 host", 300):
        result = subprocess.run(
            [GPUFLEET, "verify", str(PI_INVENTORY), "--junit-xml", str(junit)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
            check=False,
        )
    assert result.returncode == 0, result.stdout[-2000:]
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    assert len(cases) == 7
    assert all(c.find("failure") is None and c.find("error") is None for c in cases)
    assert "lab-pi-1: 7 passed, 0 failed, 7 checks" in result.stdout
