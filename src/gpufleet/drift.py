"""Drift: what the deploys would change on hosts that should be converged.

A host drifts between runs: a config edited by hand, a unit stopped, a package upgraded by
someone else. ``gpufleet drift`` plans every deploy (or those named) against the hosts'
real facts, as ``pyinfra --dry`` does, changes nothing, and reports per host each operation
that would change something. A converged host reports none (the second-run promise every
deploy keeps), so anything reported is drift, or a change to the inventory not yet
deployed.

.. code:: shell

    gpufleet drift inventory/homelab.py                 # exit 1 when anything would change
    gpufleet drift inventory/homelab.py --json          # per host, for a script
    gpufleet drift inventory/homelab.py --textfile /var/lib/node_exporter/gpufleet-drift.prom

``--textfile`` writes the result as Prometheus metrics for node_exporter's textfile
collector (``gpufleet_drift_changes``, ``gpufleet_drift_up``), which the fleet's alert
rules watch (``GpufleetDrift``, ``GpufleetDriftUnchecked``, and ``GpufleetDriftStale`` when
no check has run for two days). ``--push`` puts the same file on the inventory's monitoring
host, over the SSH connection the deploys use; ``--timer daily`` writes a systemd user timer
that runs ``gpufleet drift INVENTORY --push`` on the control machine.

The check runs where the deploys run, not on the monitoring host: planning a deploy needs
the inventory, its secrets and a root SSH key for every host, which the monitoring host
should not hold.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gpufleet.preview import PlannedOperation, plan_each

TEXTFILE_NAME = "gpufleet-drift.prom"
PUSH_DEPLOY = Path(__file__).resolve().parent / "drift_push.py"
"""The pyinfra deploy file ``--push`` runs on the monitoring hosts."""
PUSHED_TEXTFILE_ENV = "GPUFLEET_DRIFT_TEXTFILE"
"""How ``--push`` hands its deploy the local textfile to put (an environment variable: no
inventory data key, which the inventory's validation would refuse)."""
PUSH_TIMEOUT_S = 300
TIMER_NAME = "gpufleet-drift"
TIMER_SCHEDULES = ("hourly", "daily")
"""How often the timer may run: both well inside ``GpufleetDriftStale``'s two days."""


@dataclass
class HostDrift:
    """One host's drift: the operations that would change it, or why it was not checked."""

    host: str
    changing: list[PlannedOperation] = field(default_factory=list)
    planned: int = 0
    """Operations planned on the host, changing or not."""
    unchecked: str | None = None
    """Why the host could not be planned (no SSH connection, a deploy stopped on it)."""

    @property
    def drifted(self) -> bool:
        return bool(self.changing)


def drift(inventory: str, deploys: list[str], limit: list[str]) -> list[HostDrift]:
    """Plan ``deploys`` on the selected hosts with their real facts; change nothing."""
    planned, stopped = plan_each(inventory, deploys, None, limit)
    report = [
        HostDrift(host, [op for op in operations if op.changes], planned=len(operations))
        for host, operations in planned.items()
    ]
    report += [HostDrift(host, unchecked=why) for host, why in stopped.items()]
    return sorted(report, key=lambda entry: entry.host)


def _label(value: str) -> str:
    """A Prometheus label value, escaped as the exposition format says."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def textfile(report: list[HostDrift], now: float | None = None) -> str:
    """The report as node_exporter textfile-collector metrics."""
    lines = [
        "# HELP gpufleet_drift_changes Operations gpufleet's deploys would change on the host.",
        "# TYPE gpufleet_drift_changes gauge",
    ]
    lines += [
        f'gpufleet_drift_changes{{checked_host="{_label(entry.host)}"}} {len(entry.changing)}'
        for entry in report
        if entry.unchecked is None
    ]
    lines += [
        "# HELP gpufleet_drift_up 1 when the host was checked for drift, 0 when it could not be.",
        "# TYPE gpufleet_drift_up gauge",
    ]
    lines += [
        f'gpufleet_drift_up{{checked_host="{_label(entry.host)}"}} {int(entry.unchecked is None)}'
        for entry in report
    ]
    lines += [
        "# HELP gpufleet_drift_last_run_timestamp_seconds When the drift check ran.",
        "# TYPE gpufleet_drift_last_run_timestamp_seconds gauge",
        f"gpufleet_drift_last_run_timestamp_seconds {now if now is not None else time.time():.0f}",
    ]
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (node_exporter may read it any time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def push(inventory: str, hosts: list[str], text: str) -> subprocess.CompletedProcess[str]:
    """Put ``text`` on ``hosts`` (the inventory's monitoring hosts) as node exporter's drift
    textfile, with pyinfra and the inventory's own connection settings (user, key, sudo)."""
    pyinfra = str(Path(sys.executable).parent / "pyinfra")
    with tempfile.TemporaryDirectory(prefix="gpufleet-drift-") as folder:
        local = Path(folder) / TEXTFILE_NAME
        local.write_text(text)
        limits = [argument for host in hosts for argument in ("--limit", host)]
        return subprocess.run(
            [pyinfra, "-y", inventory, str(PUSH_DEPLOY), *limits],
            capture_output=True,
            text=True,
            timeout=PUSH_TIMEOUT_S,
            check=False,
            env={**os.environ, PUSHED_TEXTFILE_ENV: str(local), "PYINFRA_PROGRESS": "off"},
        )


def _unit_line_value(value: str) -> str:
    """``value`` with systemd's specifiers (``%``) escaped; a control character is refused:
    a unit file's line has no way to hold one."""
    if any(ord(character) < 32 or ord(character) == 127 for character in value):
        raise ValueError(f"{value!r} holds a control character; a unit file cannot hold it")
    return value.replace("%", "%%")


def systemd_quoted(argument: str) -> str:
    """One ExecStart argument as systemd reads it: double-quoted, with its specifiers
    (``%``) and variables (``$``) escaped, so that it reaches the program as written."""
    escaped = _unit_line_value(argument).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("$", "$$") + '"'


def timer_units(
    gpufleet: Path, arguments: list[str], folder: Path, schedule: str
) -> dict[str, str]:
    """The systemd user units that run ``gpufleet drift ARGUMENTS`` on ``schedule``
    (``hourly`` or ``daily``) from ``folder``, by file name."""
    if schedule not in TIMER_SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: one of {', '.join(TIMER_SCHEDULES)}")
    command = " ".join(
        systemd_quoted(argument) for argument in (str(gpufleet), "drift", *arguments)
    )
    service = (
        "# Written by gpufleet drift --timer: what the fleet's deploys would change on its hosts,\n"
        "# pushed to the monitoring host for Prometheus (GpufleetDrift, GpufleetDriftStale).\n"
        "[Unit]\n"
        "Description=gpufleet drift check of the fleet, pushed to its monitoring host\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        # Where the inventory was named from: pyinfra finds its group_data there.
        f"WorkingDirectory={_unit_line_value(str(folder))}\n"
        "Environment=PYINFRA_PROGRESS=off\n"
        # A host that hangs mid-check must not hold the next hour's run (systemd starts no
        # second one while this one runs); the stale alert says when checks stop arriving.
        "TimeoutStartSec=45min\n"
        # With --push the exit code says whether the result reached the monitoring host
        # (drift itself is Prometheus's to report): the unit fails only when it did not.
        f"ExecStart={command}\n"
    )
    timer = (
        "# Written by gpufleet drift --timer.\n"
        "[Unit]\n"
        "Description=gpufleet drift check of the fleet, " + schedule + "\n"
        "\n"
        "[Timer]\n"
        f"OnCalendar={schedule}\n"
        "RandomizedDelaySec=15min\n"
        # A control machine that was asleep at the hour runs the missed check when it wakes.
        "Persistent=true\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )
    return {f"{TIMER_NAME}.service": service, f"{TIMER_NAME}.timer": timer}
