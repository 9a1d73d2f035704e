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
rules watch (``GpufleetDrift``, ``GpufleetDriftUnchecked``).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gpufleet.preview import PlannedOperation, plan_each


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
