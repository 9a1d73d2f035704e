"""gpufleet against Ansible on the same lab hosts, and against a bare apt-get.

Each round starts from fresh lab hosts (bench/inventory.py) and times, for each host count of
--hosts, what an operator runs: the dry run on a fresh host, the first converge, the converged
re-run (which must report 0 changes) and the dry run on a converged host. The deploy is
gpufleet's baseline (deploys/common.py); bench/ansible/baseline.yml is the same role written
for Ansible (same packages, templates, user and services; its templates' variables come from
the function the role renders with, gpufleet.roles.baseline.template_variables). A bare
`apt-get update && apt-get install` of the same packages on a fresh host is the floor for a
first converge. Ansible's hosts get python3-apt first, untimed: its apt module needs it,
pyinfra needs nothing.

Beside each wall time, two figures that the machine's load does not blur:

- control CPU seconds: user + system CPU of the run on this (the control) machine, the
  ``resource.getrusage(RUSAGE_CHILDREN)`` delta around the tool's process. pyinfra's SSH is
  in-process; Ansible's forks and its ssh clients are its children, so both count. Ansible's
  SSH control masters outlive ansible-playbook (ControlPersist): this process is their
  subreaper (PR_SET_CHILD_SUBREAPER), ends them when the run returns and waits for them, so
  their CPU counts too. Each run so opens its connections afresh, as pyinfra's does.
- commands per host, counted on the host side, the same way for both tools: each bench host's
  sshd logs at LogLevel VERBOSE, which writes one "Starting session: command ..." line per
  exec request (a pyinfra command or fact, an Ansible module run over its pipelined
  connection) and "Starting session: subsystem 'sftp' ..." per file transfer. The lines in
  the host's journal are counted before and after the run (``journalctl --sync`` first, so
  none is still queued); the after-count's own session is subtracted. A bare apt-get is one
  command, which --smoke checks.

CPU per extra host is (CPU(N) - CPU(1)) / (N - 1); T(N)/T(1) is the converged re-run's wall
time against one host's.

With --full-stack, it also times the converged re-run of every deploy on one host of the
running, converged lab (inventory/lab.py, `make demo` leaves it so). --smoke is the CI check:
1 host, 1 round, both tools and the bare apt-get; it fails on any failed run or a re-run that
changes something.

    sudo .venv/bin/python bench/converge.py --rounds 3 --hosts 1 8 32 --csv bench/converge.csv
    sudo .venv/bin/python bench/converge.py --full-stack lab-infra-1 --rounds 5
    sudo .venv/bin/python bench/converge.py --smoke

Needs root (the lab) and PyPI (ansible-core, installed once under ~/.cache/gpufleet). The
summary goes to stdout (markdown) and, beside the --csv of every run, to a *-summary.csv.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import functools
import json
import os
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from gpufleet.paths import DEPLOYS
from gpufleet.roles.baseline import APT_LOCK_WAIT, BASELINE_PACKAGES, template_variables

if TYPE_CHECKING:
    from gpufleet.models import HostSpec

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
INVENTORY = "bench/inventory.py"
LAB_INVENTORY = "inventory/lab.py"
DPKG_LOG = "/var/log/dpkg.log"
PLAYBOOK = ROOT / "bench/ansible/baseline.yml"
ANSIBLE_CORE = "ansible-core==2.19.14"  # the newest that runs on Debian 12's Python 3.11
PACKAGES = " ".join([*BASELINE_PACKAGES, "nftables"])
"""What the baseline installs on a bench host: its packages and the firewall's nftables (the
allow-list is a step of the baseline); the bare apt-get floor installs the same."""
CASES = ("dry run, fresh", "first converge", "converged re-run", "dry run, converged")
RECAP = re.compile(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")
SSHD_VERBOSE = "/etc/ssh/sshd_config.d/bench-sessions.conf"
COUNT_SESSIONS = (
    "journalctl --sync && journalctl -q -o cat -t sshd | awk "
    "'/Starting session: command/ {c++} /Starting session: subsystem/ {s++} "
    "END {print c+0, s+0}'"
)
"""Prints the exec requests and the file-transfer sessions sshd has logged on this host."""
PR_SET_CHILD_SUBREAPER = 36


@dataclass
class Timing:
    tool: str
    case: str
    hosts: int
    round: int
    seconds: float
    changes: int
    ok: bool = True
    """False: the run failed (Ansible's --check on a fresh host stops at a service whose
    package is not installed yet); its time is not a result."""
    cpu_seconds: float | None = None
    """User + system CPU seconds on the control machine."""
    commands_per_host: float | None = None
    """sshd's exec requests per host (mean over the run's hosts)."""
    transfers_per_host: float | None = None
    """sshd's file-transfer (sftp) sessions per host."""
    control_masters: int = 0
    """SSH control masters the run left behind (Ansible's), ended and their CPU counted."""


@dataclass
class Summary:
    """One row of the summary: medians over rounds of one tool, case and host count."""

    tool: str
    case: str
    hosts: int
    rounds: int
    seconds: float
    cpu_seconds: float | None
    cpu_per_extra_host: float | None
    commands_per_host: float | None
    transfers_per_host: float | None
    t_over_t1: float | None
    """The median wall time over the same tool and case on one host."""
    over_apt_get: float | None
    """First converge only: the median wall time over the bare apt-get's."""


def ansible_changes(recap: str) -> tuple[int, int]:
    """(changed, unreachable + failed) summed over the PLAY RECAP lines of a playbook run.

    >>> ansible_changes("bench-1 : ok=14 changed=3 unreachable=0 failed=0 skipped=2")
    (3, 0)
    """
    changed = broken = 0
    for line in recap.splitlines():
        match = RECAP.match(line.strip())
        if match:
            changed += int(match[2])
            broken += int(match[3]) + int(match[4])
    return changed, broken


def ansible_failures(output: str, shown: int = 5) -> str:
    """The first ``shown`` failed tasks of a playbook run (the task and its fatal line, which
    come before the recap), then the recap."""
    lines = output.splitlines()
    failed = [
        f"{lines[n - 1] if n else ''}\n{line[:600]}"
        for n, line in enumerate(lines)
        if line.startswith(("fatal:", "failed:"))
    ]
    recap = output[output.find("PLAY RECAP") :] if "PLAY RECAP" in output else output[-2000:]
    return "\n".join([*failed[:shown], recap[-3000:]])


def pyinfra_changes(report: dict) -> tuple[int, int]:
    """(changed, errors) from ``pyinfra --json`` results."""
    operations = (report.get("results") or {}).get("operations", [])
    changed = sum(len(op["success"]) for op in operations)
    errors = sum(len(op.get("error", [])) for op in operations)
    return changed, errors


def reached(report: dict) -> set[str]:
    """The hosts ``pyinfra --json`` results show an operation ran on."""
    operations = (report.get("results") or {}).get("operations", [])
    return {h for op in operations for h in (*op["success"], *op.get("no_change", []))}


def session_counts(output: str) -> tuple[int, int]:
    """(commands, transfers) from :data:`COUNT_SESSIONS`' output.

    >>> session_counts("41 3\\n")
    (41, 3)
    """
    commands, transfers = output.split()
    return int(commands), int(transfers)


def sessions_of_run(before: tuple[int, int], after: tuple[int, int]) -> tuple[int, int]:
    """(commands, transfers) a run made on a host, from the counts before and after it: the
    after-count is itself one command.

    >>> sessions_of_run((10, 1), (52, 4))
    (41, 3)
    """
    return after[0] - before[0] - 1, after[1] - before[1]


STAGES = (
    ("python starting", "started"),
    ("imports", "imported"),
    ("inventory loaded and validated", "connect"),
    ("connecting", "prepare"),
    ("deploys run, facts asked", "execute"),
    ("operations", "disconnect"),
    ("disconnecting, exit", "exit"),
)
"""Each span of a pyinfra run and the mark bench/pyinfra_stages.py writes where it ends."""


def stage_spans(launched: float, marks: str) -> dict[str, float]:
    """Seconds of each of :data:`STAGES`, from the marks of one run launched at ``launched``."""
    stamps = dict(line.split() for line in marks.splitlines() if line.strip())
    spans, previous = {}, launched
    for name, mark in STAGES:
        if mark in stamps:
            spans[name] = float(stamps[mark]) - previous
            previous = float(stamps[mark])
    return spans


def stage_line(spans: list[dict[str, float]]) -> str:
    medians = {
        name: statistics.median(s[name] for s in spans if name in s)
        for name, _ in STAGES
        if any(name in s for s in spans)
    }
    return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in medians.items())


def summarize(timings: list[Timing]) -> list[Summary]:
    """Per tool, case and host count, the medians of the runs that worked, with the scale
    figures against one host and the first converge against the bare apt-get."""

    def median(values: Sequence[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return round(statistics.median(known), 2) if known else None

    groups: dict[tuple[str, str, int], list[Timing]] = {}
    for t in timings:
        if t.ok:
            groups.setdefault((t.tool, t.case, t.hosts), []).append(t)
    seconds = {key: median([t.seconds for t in runs]) for key, runs in groups.items()}
    cpu = {key: median([t.cpu_seconds for t in runs]) for key, runs in groups.items()}
    bare = seconds.get(("apt-get", CASES[1], 1))
    rows = []
    for (tool, case, hosts), runs in groups.items():
        one_wall, one_cpu = seconds.get((tool, case, 1)), cpu.get((tool, case, 1))
        wall, used = seconds[(tool, case, hosts)], cpu[(tool, case, hosts)]
        extra = (
            round((used - one_cpu) / (hosts - 1), 3)
            if hosts > 1 and used is not None and one_cpu is not None
            else None
        )
        rows.append(
            Summary(
                tool=tool,
                case=case,
                hosts=hosts,
                rounds=len(runs),
                seconds=wall or 0.0,
                cpu_seconds=used,
                cpu_per_extra_host=extra,
                commands_per_host=median([t.commands_per_host for t in runs]),
                transfers_per_host=median([t.transfers_per_host for t in runs]),
                t_over_t1=round(wall / one_wall, 2) if wall and one_wall else None,
                over_apt_get=(
                    round(wall / bare, 2)
                    if wall and bare and case == CASES[1] and tool != "apt-get"
                    else None
                ),
            )
        )
    order = {case: n for n, case in enumerate((*CASES, "full-stack re-run"))}
    return sorted(rows, key=lambda r: (order.get(r.case, 99), r.hosts, r.tool))


def _figure(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def median_table(timings: list[Timing], sizes: list[int]) -> str:
    """Markdown: per case and host count, each tool's median wall time, control CPU and
    commands per host, and Ansible/gpufleet; then the scale per tool (T(N)/T(1), CPU per extra
    host) and the first converge against a bare apt-get."""
    summary = {(s.tool, s.case, s.hosts): s for s in summarize(timings)}

    def failed(tool: str, case: str, hosts: int) -> bool:
        return any((t.tool, t.case, t.hosts) == (tool, case, hosts) and not t.ok for t in timings)

    rounds = len({t.round for t in timings})
    lines = [
        f"| case ({rounds} rounds, medians) | hosts | gpufleet | CPU | commands/host "
        "| Ansible | CPU | commands/host | Ansible / gpufleet |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        for hosts in sizes:
            ours, theirs = (
                summary.get(("gpufleet", case, hosts)),
                summary.get(("ansible", case, hosts)),
            )
            if ours is None:
                continue
            mine = (
                f"{ours.seconds:.1f} s | {_figure(ours.cpu_seconds, ' s')} "
                f"| {_figure(ours.commands_per_host, '', 0)}"
            )
            if theirs is not None:
                lines.append(
                    f"| {case} | {hosts} | {mine} | {theirs.seconds:.1f} s "
                    f"| {_figure(theirs.cpu_seconds, ' s')} "
                    f"| {_figure(theirs.commands_per_host, '', 0)} "
                    f"| {theirs.seconds / ours.seconds:.1f}x |"
                )
            elif failed("ansible", case, hosts):
                lines.append(f"| {case} | {hosts} | {mine} | fails | - | - | - |")
            elif not any(t.tool == "ansible" for t in timings):  # --tools gpufleet
                lines.append(f"| {case} | {hosts} | {mine} | - | - | - | - |")
    scale = [
        s
        for s in summary.values()
        if s.case == CASES[2] and s.tool in ("gpufleet", "ansible") and len(sizes) > 1
    ]
    if scale:
        lines += [
            "",
            "| converged re-run | hosts | wall | T(N)/T(1) | control CPU | CPU per extra host "
            "| commands/host |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in sorted(scale, key=lambda s: (s.tool != "gpufleet", s.hosts)):
            lines.append(
                f"| {s.tool} | {s.hosts} | {s.seconds:.1f} s | {_figure(s.t_over_t1, '', 2)} "
                f"| {_figure(s.cpu_seconds, ' s', 2)} "
                f"| {_figure(s.cpu_per_extra_host, ' s', 3)} "
                f"| {_figure(s.commands_per_host, '', 0)} |"
            )
    bare = summary.get(("apt-get", CASES[1], 1))
    lines.append("")
    for tool in ("gpufleet", "ansible"):
        first = summary.get((tool, CASES[1], 1))
        if bare and first and first.over_apt_get:
            lines.append(
                f"First converge, 1 host: {tool} {first.seconds:.1f} s, bare apt-get of the "
                f"same packages {bare.seconds:.1f} s: {first.over_apt_get:.2f}x."
            )
    for tool in ("gpufleet", "ansible"):
        many = summary.get((tool, CASES[2], sizes[-1]))
        if many and many.t_over_t1 and sizes[-1] > 1:
            lines.append(
                f"Converged re-run, {tool}: T({sizes[-1]} hosts) / T(1 host) = "
                f"{many.t_over_t1:.2f}."
            )
    stack = [t.seconds for t in timings if t.tool == "gpufleet" and t.case == "full-stack re-run"]
    if stack:
        host_count = {t.hosts for t in timings if t.case == "full-stack re-run"}
        lines.append(
            f"Full stack ({len(DEPLOYS)} deploys) converged re-run on {min(host_count)} host: "
            f"median {statistics.median(stack):.1f} s over {len(stack)} runs."
        )
    return "\n".join(lines)


@dataclass
class Measured:
    seconds: float
    cpu_seconds: float
    result: subprocess.CompletedProcess[str]
    masters: int
    """SSH control masters the run left behind, ended and counted."""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def become_subreaper() -> None:
    """Orphaned descendants (Ansible's SSH control masters) become this process's children,
    so that their CPU can be waited for and counted."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def orphaned_ssh() -> list[int]:
    """ssh processes whose parent is this one: with no ssh of our own running, these are
    control masters left behind by a run (the lab's systemd-nspawn children are left alone)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        command = text[text.index("(") + 1 : text.rindex(")")]
        parent = int(text[text.rindex(")") + 2 :].split()[1])
        if parent == os.getpid() and command == "ssh":
            found.append(int(stat.parent.name))
    return found


def measured(command: list[str], **options: object) -> Measured:
    """Run ``command``; its wall time, and the CPU it and every process it left behind used."""
    before = _children_cpu()
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, check=False, **options)  # type: ignore[call-overload]
    took = time.monotonic() - started
    masters = orphaned_ssh()
    for pid in masters:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    return Measured(took, _children_cpu() - before, result, len(masters))


class Bench:
    def __init__(self, sizes: list[int], tools: tuple[str, ...] = ("gpufleet", "ansible")):
        self.sizes = sizes
        self.tools = tools
        self.timings: list[Timing] = []
        self.ansible = ansible_playbook() if "ansible" in tools else Path()
        become_subreaper()

    def record(self, timing: Timing) -> None:
        timing.seconds = round(timing.seconds, 2)
        if timing.cpu_seconds is not None:
            timing.cpu_seconds = round(timing.cpu_seconds, 2)
        self.timings.append(timing)
        outcome = f"{timing.seconds:6.1f} s" if timing.ok else "failed"
        extra = ""
        if timing.cpu_seconds is not None:
            extra += f", CPU {timing.cpu_seconds:5.1f} s"
        if timing.commands_per_host is not None:
            extra += f", {timing.commands_per_host:.0f} commands"
            extra += f" + {timing.transfers_per_host:.0f} transfers per host"
        if timing.control_masters:
            extra += f", {timing.control_masters} SSH control masters ended"
        print(
            f"  round {timing.round} {timing.tool:<8} {timing.case:<20} "
            f"{timing.hosts} host(s): {outcome}{extra}",
            flush=True,
        )

    def counted(
        self, tool: str, case: str, limit: list[str], rnd: int, command: list[str], **options
    ) -> tuple[Timing, subprocess.CompletedProcess[str]]:
        """Run ``command`` against ``limit``: its wall time, control CPU and sessions per host."""
        before = sessions(limit)
        run = measured(command, **options)
        after = sessions(limit)
        made = [sessions_of_run(before[name], after[name]) for name in limit]
        timing = Timing(
            tool,
            case,
            len(limit),
            rnd,
            run.seconds,
            0,
            cpu_seconds=run.cpu_seconds,
            commands_per_host=statistics.fmean(c for c, _ in made),
            transfers_per_host=statistics.fmean(t for _, t in made),
            control_masters=run.masters,
        )
        return timing, run.result

    def gpufleet(self, limit: list[str], rnd: int) -> None:
        def run(case: str, *args: str) -> Timing:
            command = [str(BIN / "pyinfra"), "--json", INVENTORY, "deploys/common.py"]
            command += [arg for name in limit for arg in ("--limit", name)] + list(args)
            timing, result = self.counted("gpufleet", case, limit, rnd, command, cwd=ROOT)
            if result.returncode != 0:
                raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
            report = json.loads(result.stdout or "{}")
            changed, errors = pyinfra_changes(report)
            if errors:
                raise SystemExit(f"{' '.join(command)}: {errors} errors")
            if report.get("results") and reached(report) != set(limit):
                raise SystemExit(f"{' '.join(command)} reached {sorted(reached(report))}")
            timing.changes = 0 if "--dry" in args else changed
            return timing

        self.record(run(CASES[0], "--dry"))
        self.record(run(CASES[1], "-y"))
        rerun = run(CASES[2], "-y")
        if rerun.changes:
            raise SystemExit(f"gpufleet re-run changed {rerun.changes} operations")
        self.record(rerun)
        self.record(run(CASES[3], "--dry"))

    def ansible_run(self, limit: list[str], rnd: int) -> None:
        inventory = write_ansible_inventory()
        ansible_prerequisites(limit)
        env = {**os.environ, "ANSIBLE_CONFIG": str(PLAYBOOK.parent / "ansible.cfg")}

        def run(case: str, *args: str, may_fail: bool = False) -> Timing:
            command = [str(self.ansible), "-i", str(inventory), str(PLAYBOOK)]
            # One fork per host, as many as pyinfra's connections (the config's 16 is for
            # ansible-playbook run by hand).
            command += ["--limit", ",".join(limit), "--forks", str(len(limit)), *args]
            timing, result = self.counted("ansible", case, limit, rnd, command, env=env)
            changed, broken = ansible_changes(result.stdout)
            timing.ok = result.returncode == 0 and not broken
            if not timing.ok and not may_fail:
                raise SystemExit(f"{' '.join(command)} failed:\n{ansible_failures(result.stdout)}")
            timing.changes = 0 if "--check" in args else changed
            return timing

        self.record(run(CASES[0], "--check", may_fail=True))
        self.record(run(CASES[1]))
        rerun = run(CASES[2])
        if rerun.changes:
            raise SystemExit(f"Ansible re-run changed {rerun.changes} tasks")
        self.record(rerun)
        self.record(run(CASES[3], "--check"))

    def bare_apt(self, host: str, rnd: int) -> None:
        from gpufleet import lab

        script = (
            "apt-get update -q && DEBIAN_FRONTEND=noninteractive "
            f"apt-get install -y -q --no-install-recommends {PACKAGES}"
        )
        command = ["ssh", "-F", str(lab.ssh_config_path()), lab_addresses()[host], script]
        timing, result = self.counted("apt-get", CASES[1], [host], rnd, command)
        if result.returncode != 0:
            raise SystemExit(f"the bare apt-get on {host} failed:\n{result.stderr[-2000:]}")
        self.record(timing)

    def round(self, rnd: int) -> None:
        for size in self.sizes:
            if size == 1:
                names = fresh_lab(3)
                if "gpufleet" in self.tools:
                    self.gpufleet(names[:1], rnd)
                if "ansible" in self.tools:
                    self.ansible_run(names[1:2], rnd)
                self.bare_apt(names[2], rnd)
            else:
                if "gpufleet" in self.tools:
                    self.gpufleet(fresh_lab(size), rnd)
                if "ansible" in self.tools:
                    self.ansible_run(fresh_lab(size), rnd)

    def full_stack(self, host: str, rounds: int) -> None:
        """The converged re-run of every deploy on one lab host, ``rounds`` times, and where
        its time goes (:data:`STAGES`, medians over the rounds)."""
        command = [sys.executable, str(ROOT / "bench/pyinfra_stages.py")]
        command += ["--json", "-y", "inventory/lab.py", *DEPLOYS, "--limit", host]
        spans: list[dict[str, float]] = []
        for rnd in range(1, rounds + 1):
            with tempfile.NamedTemporaryFile("r", suffix=".stages") as marks:
                env = {**os.environ, "GPUFLEET_BENCH_STAGES": marks.name}
                launched = time.time()
                run = measured(command, cwd=ROOT, env=env)
                spans.append(stage_spans(launched, marks.read()))
            changed, errors = pyinfra_changes(json.loads(run.result.stdout or "{}"))
            if run.result.returncode != 0 or changed or errors:
                raise SystemExit(
                    f"the full stack on {host} is not converged ({changed} changes, {errors} "
                    f"errors): run `make demo` first\n{run.result.stderr[-2000:]}"
                )
            self.record(
                Timing(
                    "gpufleet",
                    "full-stack re-run",
                    1,
                    rnd,
                    run.seconds,
                    changed,
                    cpu_seconds=run.cpu_seconds,
                )
            )

        print(f"  where {host}'s full-stack re-run goes (median of {rounds}):", stage_line(spans))

    def gpu_node_floor(self, host: str) -> None:
        """``deploys/gpu_node.py``'s first converge of a fresh lab ``host`` (driver, DKMS
        build, Docker, the toolkit, the baseline), then, on ``host`` fresh again with the apt
        sources and keys that converge left, a bare apt-get update and install of every
        package the converge installed (from dpkg's log): the same downloads, unpacking and
        DKMS build, none of the rest."""
        from gpufleet import lab
        from gpufleet.inventory import load_inventory

        inventory = ROOT / LAB_INVENTORY
        address = {h.name: str(h.data.get("ssh_hostname")) for h in load_inventory(inventory)}
        ssh = ["ssh", "-F", str(lab.ssh_config_path()), address[host]]

        def fresh() -> None:
            lab.down()
            lab.up(inventory)

        fresh()
        logged = subprocess.run(
            [*ssh, f"wc -l < {DPKG_LOG} 2>/dev/null || echo 0"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        command = [str(BIN / "pyinfra"), "--json", "-y", LAB_INVENTORY, "deploys/gpu_node.py"]
        run = measured([*command, "--limit", host], cwd=ROOT)
        changed, errors = pyinfra_changes(json.loads(run.result.stdout or "{}"))
        if run.result.returncode != 0 or errors:
            raise SystemExit(f"gpu_node.py failed on {host}:\n{run.result.stderr[-2000:]}")
        self.record(Timing("gpufleet", "gpu_node first converge", 1, 1, run.seconds, changed,
                           cpu_seconds=run.cpu_seconds))  # fmt: skip
        installed = subprocess.run(
            [*ssh, f"tail -n +{int(logged) + 1} {DPKG_LOG} | awk '$3 == \"install\" {{print $4}}'"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        sources = subprocess.run(
            [*ssh, "tar -C / -czf - etc/apt usr/share/keyrings"], capture_output=True, check=True
        ).stdout
        fresh()
        subprocess.run([*ssh, "tar -C / -xzf -"], input=sources, check=True)
        packages = " ".join(shlex.quote(name.split(":")[0]) for name in dict.fromkeys(installed))
        script = (
            "apt-get update -q && DEBIAN_FRONTEND=noninteractive "
            f"apt-get install -y -q --no-install-recommends {packages}"
        )
        floor = measured([*ssh, script])
        if floor.result.returncode != 0:
            raise SystemExit(f"the bare apt-get on {host} failed:\n{floor.result.stderr[-2000:]}")
        self.record(Timing("apt-get", "gpu_node first converge", 1, 1, floor.seconds, 0,
                           cpu_seconds=floor.cpu_seconds))  # fmt: skip
        print(
            f"gpu_node.py first converge on {host}: gpufleet {run.seconds:.1f} s, bare apt-get "
            f"of the same {len(installed)} packages {floor.seconds:.1f} s: "
            f"{run.seconds / floor.seconds:.2f}x"
        )

    def check_smoke(self) -> None:
        """What --smoke asks beyond every run working: each tool and case ran, and the session
        count is right where it is known (a bare apt-get is one command)."""
        seen = {(t.tool, t.case) for t in self.timings}
        missing = [
            f"{tool} {case}"
            for tool in ("gpufleet", "ansible")
            for case in CASES
            if (tool, case) not in seen
        ]
        if missing:
            raise SystemExit(f"smoke: no run of {', '.join(missing)}")
        bare = [t.commands_per_host for t in self.timings if t.tool == "apt-get"]
        if bare != [1]:
            raise SystemExit(f"smoke: the bare apt-get counted {bare} commands, not [1]")
        # Ansible's control masters outlive it: were none found, their CPU went uncounted.
        uncounted = [t.case for t in self.timings if t.tool == "ansible" and not t.control_masters]
        if uncounted:
            raise SystemExit(f"smoke: no SSH control master of Ansible's was ended: {uncounted}")


def on_hosts(hosts: list[str], script: str) -> dict[str, str]:
    """Run ``script`` over SSH on every host at once; their stdout by host, or SystemExit."""
    from gpufleet import lab

    addresses = lab_addresses()
    running = {
        name: subprocess.Popen(
            ["ssh", "-F", str(lab.ssh_config_path()), addresses[name], script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in hosts
    }
    outputs, failed = {}, {}
    for name, process in running.items():
        out, err = process.communicate()
        outputs[name] = out
        if process.returncode != 0:
            failed[name] = err.strip()[-500:]
    if failed:
        raise SystemExit(f"{script!r} failed on {failed}")
    return outputs


def sessions(hosts: list[str]) -> dict[str, tuple[int, int]]:
    """Per host, the sshd sessions logged so far (commands, transfers)."""
    return {name: session_counts(out) for name, out in on_hosts(hosts, COUNT_SESSIONS).items()}


def log_sessions(hosts: list[str]) -> None:
    """sshd on each host logs every session it starts (LogLevel VERBOSE), untimed."""
    on_hosts(
        hosts,
        f"printf 'LogLevel VERBOSE\\n' > {SSHD_VERBOSE} && sshd -t && systemctl reload ssh",
    )


def ansible_prerequisites(hosts: list[str]) -> None:
    """python3-apt on each host, untimed: Ansible's apt module needs it (and --check cannot
    install it); pyinfra needs nothing on the host."""
    on_hosts(
        hosts,
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-apt",
    )


@functools.cache
def _addresses(count: str) -> dict[str, str]:
    from gpufleet.inventory import load_inventory

    return {h.name: str(h.data.get("ssh_hostname")) for h in load_inventory(ROOT / INVENTORY)}


def lab_addresses() -> dict[str, str]:
    """The bench hosts of the inventory as GPUFLEET_BENCH_HOSTS sizes it now."""
    return _addresses(os.environ.get("GPUFLEET_BENCH_HOSTS", ""))


def fresh_lab(count: int) -> list[str]:
    """Every lab host down, then ``count`` fresh bench hosts up, logging their sessions."""
    from gpufleet import lab

    os.environ["GPUFLEET_BENCH_HOSTS"] = str(count)  # bench/inventory.py and pyinfra read it
    lab.down()
    lab.up(ROOT / INVENTORY, timeout=max(90, 5 * count))
    names = list(lab_addresses())
    log_sessions(names)
    return names


def ansible_playbook() -> Path:
    """ansible-playbook from a venv of its own, made once per ansible-core version. A venv
    without its marker (an install stopped half-way, a cold machine) is made afresh."""
    venv = Path.home() / ".cache/gpufleet" / ANSIBLE_CORE.replace("==", "-")
    installed = venv / "installed"
    if not installed.exists():
        subprocess.run(["rm", "-rf", str(venv)], check=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", ANSIBLE_CORE], check=True)
        installed.write_text(ANSIBLE_CORE + "\n")
    return venv / "bin/ansible-playbook"


def ansible_host_vars(
    spec: HostSpec, address: str, key: str, specs: dict[str, HostSpec]
) -> dict[str, object]:
    """One bench host's Ansible variables: how to reach it, what the playbook writes beyond
    templates (each from the constant or function the role writes it with), and every variable
    of every template the baseline renders (template_variables), at the top level where
    Ansible's template module finds them."""
    from gpufleet.paths import HOST_STATE
    from gpufleet.roles import firewall

    variables: dict[str, object] = {
        "ansible_host": address,
        "ansible_user": "root",
        "ansible_ssh_private_key_file": key,
        "apt_cache_hours": spec.apt_cache_hours,
        "apt_lock_wait": APT_LOCK_WAIT,
        "service_user": spec.service_user,
        "root_folders": list(dict.fromkeys([HOST_STATE, f"/var/lib/{spec.service_user}"])),
        "firewall_enabled": spec.firewall.enabled,
        "firewall_rules": firewall.ruleset(spec, specs),
        "rules": firewall.RULES,  # the allow-list unit's template
    }
    for name, given in template_variables(spec).items():
        for variable, value in given.items():
            if variable in variables and variables[variable] != value:
                raise ValueError(
                    f"{name}: variable {variable} is {value!r} here and "
                    f"{variables[variable]!r} elsewhere: one Ansible host variable cannot be both"
                )
            variables[variable] = value
    return variables


def write_ansible_inventory() -> Path:
    """The bench hosts as an Ansible YAML inventory, variables from their validated specs."""
    from gpufleet import lab
    from gpufleet.inventory import validate_file

    specs = validate_file(ROOT / INVENTORY)
    addresses = lab_addresses()
    hosts = {
        name: ansible_host_vars(spec, addresses[name], str(lab.key_path()), specs)
        for name, spec in specs.items()
    }
    path = lab.lab_dir() / "bench-ansible-inventory.json"
    path.write_text(json.dumps({"all": {"hosts": hosts}}, indent=2))
    return path


def write_csv(path: Path, rows: Sequence[object], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)  # type: ignore[call-overload]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--hosts",
        type=int,
        nargs="+",
        default=[1, 8],
        metavar="N",
        help="host counts to time (1 is always among them: the scale figures need it)",
    )
    parser.add_argument(
        "--tools",
        nargs="+",
        choices=["gpufleet", "ansible"],
        default=["gpufleet", "ansible"],
        help="which tools to time (default both; the smoke always runs both)",
    )
    parser.add_argument("--csv", help="every run (default: bench/converge.csv)")
    parser.add_argument("--full-stack", metavar="HOST", help="also time the lab's full stack")
    parser.add_argument(
        "--gpu-node",
        metavar="HOST",
        help="also time deploys/gpu_node.py's first converge of the lab's HOST against a bare "
        "apt-get of the packages it installed",
    )
    parser.add_argument(
        "--skip-baseline", action="store_true", help="only --full-stack and --gpu-node"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI check: 1 host, 1 round, both tools and the bare apt-get; fails on any failure",
    )
    args = parser.parse_args()
    if args.smoke:
        args.hosts, args.rounds, args.full_stack, args.skip_baseline = [1], 1, None, False
        args.gpu_node = None
        args.tools = ["gpufleet", "ansible"]
        args.csv = args.csv or "reports/converge-smoke.csv"
    if min(args.hosts) < 1 or args.rounds < 1:
        parser.error("--hosts and --rounds take whole numbers of at least 1")
    sizes = sorted({1, *args.hosts})
    runs_csv = Path(args.csv or "bench/converge.csv")
    started = time.monotonic()
    bench = Bench(sizes, tuple(args.tools))
    try:
        if args.full_stack:
            bench.full_stack(args.full_stack, args.rounds)
        if args.gpu_node:
            bench.gpu_node_floor(args.gpu_node)
        if not args.skip_baseline:
            for rnd in range(1, args.rounds + 1):
                bench.round(rnd)
    finally:
        if not args.skip_baseline or args.gpu_node:
            from gpufleet import lab

            lab.down()
        write_csv(runs_csv, bench.timings, [f.name for f in fields(Timing)])
        write_csv(
            runs_csv.with_name(runs_csv.stem + "-summary.csv"),
            summarize(bench.timings),
            [f.name for f in fields(Summary)],
        )
        print(median_table(bench.timings, sizes))  # what was measured, also before a failure
    if args.smoke:
        bench.check_smoke()
        took = time.monotonic() - started
        print(f"smoke: both tools converged and re-ran unchanged ({took:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
