"""gpufleet drift: its report, its Prometheus textfile and its exit codes. A host that does
not answer SSH (a closed port on loopback) is reported as not checked; the lab layer
(tests/host/test_drift.py) shows drift on real hosts."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet.cli import main
from gpufleet.drift import HostDrift, textfile, timer_units, write_textfile
from gpufleet.preview import PlannedOperation

EDITED = PlannedOperation(
    "Baseline | Time sync from the fleet's NTP servers",
    True,
    ["upload /etc/systemd/timesyncd.conf.d/gpufleet.conf"],
)


def test_the_textfile_counts_each_checked_hosts_changes_and_marks_the_unchecked():
    report = [
        HostDrift("lab-gpu-1", [EDITED], planned=120),
        HostDrift("lab-cpu-1", [], planned=80),
        HostDrift("pi5l", unchecked="HostsUnreachable: no SSH connection to pi5l"),
    ]
    text = textfile(report, now=1_700_000_000)
    lines = text.splitlines()
    assert 'gpufleet_drift_changes{checked_host="lab-gpu-1"} 1' in lines
    assert 'gpufleet_drift_changes{checked_host="lab-cpu-1"} 0' in lines
    assert not any(line.startswith('gpufleet_drift_changes{checked_host="pi5l"') for line in lines)
    assert 'gpufleet_drift_up{checked_host="pi5l"} 0' in lines
    assert 'gpufleet_drift_up{checked_host="lab-gpu-1"} 1' in lines
    assert "gpufleet_drift_last_run_timestamp_seconds 1700000000" in lines
    assert text.endswith("\n")


def test_the_textfile_is_what_promtool_reads(promtool, tmp_path):
    report = [HostDrift('odd"name\\', [EDITED], planned=3)]
    path = tmp_path / "drift.prom"
    write_textfile(path, textfile(report, now=1))
    result = subprocess.run(
        [promtool, "check", "metrics"], input=path.read_text(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'checked_host="odd\\"name\\\\"' in path.read_text()


def test_the_textfile_is_replaced_whole_and_readable_by_node_exporter(tmp_path):
    path = tmp_path / "textfiles" / "gpufleet-drift.prom"
    write_textfile(path, "a 1\n")
    write_textfile(path, "a 2\n")
    assert path.read_text() == "a 2\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["gpufleet-drift.prom"]  # no leftovers


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed once the socket is: connections are refused


@pytest.fixture
def unreachable_fleet(tmp_path: Path) -> Path:
    inventory = tmp_path / "fleet.py"
    inventory.write_text(
        "cpu_nodes = [\n"
        '    ("closed-box", {"ssh_hostname": "127.0.0.1", '
        f'"ssh_port": {closed_port()}, "ssh_user": "root", '
        '"hardware": {"cpu": "AMD Ryzen 5 5600G", "cores": 6, "ram_gb": 32}}),\n'
        "]\n"
    )
    return inventory


def test_a_host_without_ssh_is_not_checked_and_the_exit_code_says_so(
    unreachable_fleet, tmp_path, capsys
):
    prom = tmp_path / "drift.prom"
    code = main(["drift", str(unreachable_fleet), "--json", "--textfile", str(prom)])
    assert code == 1
    out = json.loads(capsys.readouterr().out)
    (host,) = out["hosts"]
    assert host["host"] == "closed-box" and not host["drifted"]
    assert host["unchecked"] == "HostsUnreachable: no SSH connection to closed-box"
    assert 'gpufleet_drift_up{checked_host="closed-box"} 0' in prom.read_text()


def test_the_table_names_each_change_and_the_exit_code_is_1_on_drift(monkeypatch, capsys):
    import gpufleet.drift

    report = [HostDrift("lab-cpu-1", [], planned=80), HostDrift("lab-gpu-1", [EDITED], 120)]
    monkeypatch.setattr(gpufleet.drift, "drift", lambda *args: report)
    assert main(["drift", "inventory/lab.py", "-v"]) == 1
    shown = capsys.readouterr().out.splitlines()
    assert shown == [
        "lab-cpu-1: 80 operations, no drift",
        "lab-gpu-1: 120 operations, 1 would change",
        "  * Baseline | Time sync from the fleet's NTP servers",
        "      upload /etc/systemd/timesyncd.conf.d/gpufleet.conf",
    ]
    monkeypatch.setattr(gpufleet.drift, "drift", lambda *args: report[:1])
    assert main(["drift", "inventory/lab.py"]) == 0


def test_a_wrong_inventory_fails_before_any_host_is_contacted(tmp_path, capsys):
    bad = Path(__file__).parents[1] / "fixtures/bad_inventories/bad_lan_address.py"
    assert main(["drift", str(bad)]) == 1
    assert "lan_address" in capsys.readouterr().err


def test_push_without_a_monitoring_host_fails_before_any_host_is_contacted(
    unreachable_fleet, capsys
):
    assert main(["drift", str(unreachable_fleet), "--push"]) == 1
    error = capsys.readouterr().err
    assert "has no monitoring host to push to" in error and "HostsUnreachable" not in error


def test_a_push_that_does_not_reach_the_monitoring_host_fails_the_run(tmp_path, capsys):
    # A converged fleet (no host checked has drifted) still exits 1 when the result could not
    # be put where Prometheus reads it: the timer's unit fails, and GpufleetDriftStale follows.
    inventory = tmp_path / "fleet.py"
    inventory.write_text(
        "monitoring = [\n"
        '    ("closed-monitor", {"ssh_hostname": "127.0.0.1", '
        f'"ssh_port": {closed_port()}, "ssh_user": "root", '
        '"hardware": {"cpu": "AMD Ryzen 5 5600G", "cores": 6, "ram_gb": 32}}),\n'
        "]\n"
    )
    code = main(["drift", str(inventory), "deploys/common.py", "--push"])
    assert code == 1
    assert "the result did not reach closed-monitor" in capsys.readouterr().err


def test_the_timer_runs_this_check_with_push_from_this_folder_and_systemd_accepts_it(
    tmp_path, capsys
):
    units = tmp_path / "units"
    command = ["drift", "inventory/lab.py", "deploys/common.py", "--limit", "gpu_nodes"]
    assert main([*command, "--timer", "hourly", "--units", str(units)]) == 0
    assert "systemctl --user enable --now gpufleet-drift.timer" in capsys.readouterr().out
    service = (units / "gpufleet-drift.service").read_text().splitlines()
    gpufleet = Path(sys.executable).parent / "gpufleet"
    inventory, deploy = Path("inventory/lab.py").resolve(), Path("deploys/common.py").resolve()
    assert (
        f'ExecStart="{gpufleet}" "drift" "{inventory}" "{deploy}" "--limit" "gpu_nodes" "--push"'
        in service
    )
    assert f"WorkingDirectory={Path.cwd()}" in service
    assert "OnCalendar=hourly" in (units / "gpufleet-drift.timer").read_text().splitlines()
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(map(str, units.iterdir()))],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_timer_checks_nothing_now_and_refuses_what_it_would_not_use(tmp_path, capsys):
    units = tmp_path / "units"
    assert main(["drift", "inventory/lab.py", "--timer", "daily", "--json", "--units", str(units)])
    assert "leave out --json and --textfile" in capsys.readouterr().err
    assert not units.exists()


def test_the_timers_arguments_reach_the_program_as_written():
    odd = '/srv/my fleet/50%"off"$HOME\\x'
    line = timer_units(Path("/usr/bin/gpufleet"), [odd + ".py"], Path(odd), "daily")[
        "gpufleet-drift.service"
    ]
    assert (
        'ExecStart="/usr/bin/gpufleet" "drift" "/srv/my fleet/50%%\\"off\\"$$HOME\\\\x.py"' in line
    )
    assert 'WorkingDirectory=/srv/my fleet/50%%"off"$HOME\\x\n' in line
    with pytest.raises(ValueError, match="control character"):
        timer_units(Path("/usr/bin/gpufleet"), ["/srv/a\nExecStartPre=/bin/sh"], Path("/"), "daily")
    with pytest.raises(ValueError, match="one of hourly, daily"):
        timer_units(Path("/usr/bin/gpufleet"), ["/srv/fleet.py"], Path("/"), "minutely")
