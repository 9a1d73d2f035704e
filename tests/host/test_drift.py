"""gpufleet drift on the converged lab: a config edited by hand on a host shows up, named,
in the report and in Prometheus, where the GpufleetDrift alert fires; put back, the host
shows no drift."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from .conftest import LAB_INVENTORY, ROOT, SPECS, ssh, timed

GPUFLEET = str(Path(sys.executable).parent / "gpufleet")
PROMETHEUS = "http://10.200.0.12:9090/api/v1"
EDITED_HOST = "lab-gpu-1"
EDITED_FILE = "/etc/apt/apt.conf.d/90gpufleet-lock-wait"
EDIT_OPERATION = "Baseline | apt waits up to 600 s for dpkg's lock"
TEXTFILE = "/var/lib/prometheus/node-exporter/gpufleet-drift.prom"
DRIFT_TIMEOUT_S = 600
"""A dry run of deploys/common.py on one lab host: about 20 s here; a cold 2-core machine
with the rest of the lab running takes several times that."""
ALERT_TIMEOUT_S = 180
"""node exporter scraped and the rule evaluated every 15 s on the lab: two rounds, three
times over for a loaded machine."""


def drift(*args: str) -> subprocess.CompletedProcess[str]:
    with timed(f"gpufleet drift {' '.join(args)}", DRIFT_TIMEOUT_S):
        return subprocess.run(
            [GPUFLEET, "drift", str(LAB_INVENTORY.relative_to(ROOT)), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=DRIFT_TIMEOUT_S,
            env={**os.environ, "PYINFRA_PROGRESS": "off"},
        )


def firing(alert: str) -> list[dict]:
    reply = requests.get(f"{PROMETHEUS}/alerts", timeout=10).json()
    return [
        a
        for a in reply["data"]["alerts"]
        if a["labels"]["alertname"] == alert and a["state"] == "firing"
    ]


@pytest.fixture
def edited_by_hand(lab_session):
    address = str(SPECS[EDITED_HOST].lan_address)
    original = ssh(address, f"cat {EDITED_FILE}")
    ssh(address, f"echo 'APT::Acquire::Retries \"9\"; // edited by hand' >> {EDITED_FILE}")
    yield address
    ssh(address, f"cat > {EDITED_FILE}", stdin=original)


def test_a_hand_edited_config_is_drift_named_in_the_report_and_alerted(edited_by_hand, tmp_path):
    # What the drift timer runs (gpufleet drift INVENTORY --push), with the report kept too.
    prom = tmp_path / "gpufleet-drift.prom"
    monitoring = str(SPECS["lab-infra-1"].lan_address)
    try:
        result = drift(
            "deploys/common.py", "--limit", EDITED_HOST, "--json", "--textfile", str(prom), "--push"
        )
        # With --push the exit code says the result reached the monitoring host; the
        # report and Prometheus say the host drifted.
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(result.stdout)
        (host,) = report["hosts"]
        assert report["drifted"] and host["host"] == EDITED_HOST and host["unchecked"] is None
        assert [op["name"] for op in host["changing"]] == [EDIT_OPERATION]
        assert host["planned"] > 10  # the whole baseline was planned, and only this would change
        assert f'gpufleet_drift_changes{{checked_host="{EDITED_HOST}"}} 1' in prom.read_text()
        # The file on the host is still the hand-edited one: drift changes nothing.
        assert "edited by hand" in ssh(edited_by_hand, f"cat {EDITED_FILE}")

        # The push put the same metrics where lab-infra-1's node exporter reads them, whole
        # (no half-uploaded file left beside them); Prometheus scrapes them, and
        # GpufleetDrift fires for the edited host.
        assert ssh(monitoring, f"cat {TEXTFILE}") == prom.read_text()
        names = ssh(monitoring, f"ls -A {Path(TEXTFILE).parent}").split()
        assert [name for name in names if "gpufleet-drift" in name] == [Path(TEXTFILE).name]
        deadline = time.monotonic() + ALERT_TIMEOUT_S
        with timed("GpufleetDrift fires", ALERT_TIMEOUT_S):
            while not (alerts := firing("GpufleetDrift")) and time.monotonic() < deadline:
                time.sleep(3)
        assert [a["labels"]["checked_host"] for a in alerts] == [EDITED_HOST]
        assert alerts[0]["labels"]["host"] == "lab-infra-1"  # where the check's file is served
    finally:
        ssh(monitoring, f"rm -f {TEXTFILE}")


def test_a_converged_host_shows_no_drift(lab_session):
    result = drift("deploys/common.py", "--limit", EDITED_HOST)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert result.stdout.startswith(f"{EDITED_HOST}: ") and result.stdout.rstrip().endswith(
        "no drift"
    )
