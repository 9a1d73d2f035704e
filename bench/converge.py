"""gpufleet against Ansible on the same lab hosts, and against a bare apt-get.

Each round starts from fresh lab hosts (bench/inventory.py) and times, for 1 host and for all
of them, what an operator runs: the dry run on a fresh host, the first converge, the converged
re-run (which must report 0 changes) and the dry run on a converged host. The deploy is
gpufleet's baseline (deploys/common.py); bench/ansible/baseline.yml is the same role written
for Ansible (same packages, templates, user and services). A bare `apt-get update && apt-get
install` of the same packages on a fresh host is the floor for a first converge. Ansible's
hosts get python3-apt first, untimed: its apt module needs it, pyinfra needs nothing.

With --full-stack, it also times the converged re-run of every deploy on one host of the
running, converged lab (inventory/lab.py, `make demo` leaves it so).

    sudo .venv/bin/python bench/converge.py --rounds 3 --hosts 8 --csv bench/converge.csv
    sudo .venv/bin/python bench/converge.py --full-stack lab-infra-1 --rounds 5

Needs root (the lab) and PyPI (ansible-core, installed once under ~/.cache/gpufleet).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gpufleet.paths import DEPLOYS

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
INVENTORY = "bench/inventory.py"
PLAYBOOK = ROOT / "bench/ansible/baseline.yml"
ANSIBLE_CORE = "ansible-core==2.19.14"  # the newest that runs on Debian 12's Python 3.11
PACKAGES = "systemd-timesyncd prometheus-node-exporter pciutils"
CASES = ("dry run, fresh", "first converge", "converged re-run", "dry run, converged")
RECAP = re.compile(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


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


def median_table(timings: list[Timing], sizes: list[int]) -> str:
    """Markdown: per case and host count, each tool's median and Ansible/gpufleet."""

    def median(tool: str, case: str, hosts: int) -> float | None:
        values = [
            t.seconds for t in timings if (t.tool, t.case, t.hosts) == (tool, case, hosts) and t.ok
        ]
        return statistics.median(values) if values else None

    def failed(tool: str, case: str, hosts: int) -> bool:
        return any((t.tool, t.case, t.hosts) == (tool, case, hosts) and not t.ok for t in timings)

    rounds = len({t.round for t in timings})
    lines = [
        f"| case ({rounds} rounds, medians) | hosts | gpufleet | Ansible | Ansible / gpufleet |",
        "|---|---|---|---|---|",
    ]
    for case in CASES:
        for hosts in sizes:
            ours, theirs = median("gpufleet", case, hosts), median("ansible", case, hosts)
            if ours is not None and theirs is not None:
                lines.append(
                    f"| {case} | {hosts} | {ours:.1f} s | {theirs:.1f} s | {theirs / ours:.1f}x |"
                )
            elif ours is not None and failed("ansible", case, hosts):
                lines.append(f"| {case} | {hosts} | {ours:.1f} s | fails | - |")
    bare = median("apt-get", "first converge", 1)
    first = median("gpufleet", "first converge", 1)
    if bare and first:
        lines.append(
            f"\nFirst converge, 1 host: gpufleet {first:.1f} s, bare apt-get of the same "
            f"packages {bare:.1f} s: {first / bare:.2f}x."
        )
    for tool in ("gpufleet", "ansible"):
        one, many = median(tool, "converged re-run", 1), median(tool, "converged re-run", sizes[-1])
        if one and many and sizes[-1] > 1:
            lines.append(
                f"Converged re-run, {tool}: T({sizes[-1]} hosts) / T(1 host) = {many / one:.2f}."
            )
    stack = [t.seconds for t in timings if t.tool == "gpufleet" and t.case == "full-stack re-run"]
    if stack:
        host_count = {t.hosts for t in timings if t.case == "full-stack re-run"}
        lines.append(
            f"Full stack ({len(DEPLOYS)} deploys) converged re-run on {min(host_count)} host: "
            f"median {statistics.median(stack):.1f} s over {len(stack)} runs."
        )
    return "\n".join(lines)


class Bench:
    def __init__(self, sizes: list[int]):
        self.sizes = sizes
        self.timings: list[Timing] = []
        self.ansible = ansible_playbook()

    def record(
        self,
        tool: str,
        case: str,
        hosts: int,
        rnd: int,
        seconds: float,
        changes: int,
        ok: bool = True,
    ):
        self.timings.append(Timing(tool, case, hosts, rnd, round(seconds, 2), changes, ok))
        outcome = f"{seconds:6.1f} s" if ok else "failed"
        print(f"  round {rnd} {tool:<8} {case:<20} {hosts} host(s): {outcome}", flush=True)

    def gpufleet(self, limit: list[str], rnd: int, inventory: str = INVENTORY) -> None:
        def run(*args: str) -> tuple[float, int]:
            command = [str(BIN / "pyinfra"), "--json", inventory, "deploys/common.py"]
            command += [arg for name in limit for arg in ("--limit", name)] + list(args)
            started = time.monotonic()
            result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
            took = time.monotonic() - started
            if result.returncode != 0:
                raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
            report = json.loads(result.stdout or "{}")
            changed, errors = pyinfra_changes(report)
            if errors:
                raise SystemExit(f"{' '.join(command)}: {errors} errors")
            if report.get("results") and reached(report) != set(limit):
                raise SystemExit(f"{' '.join(command)} reached {sorted(reached(report))}")
            return took, changed

        hosts = len(limit)
        self.record("gpufleet", CASES[0], hosts, rnd, run("--dry")[0], 0)
        self.record("gpufleet", CASES[1], hosts, rnd, *run("-y"))
        took, changed = run("-y")
        if changed:
            raise SystemExit(f"gpufleet re-run changed {changed} operations")
        self.record("gpufleet", CASES[2], hosts, rnd, took, changed)
        self.record("gpufleet", CASES[3], hosts, rnd, run("--dry")[0], 0)

    def ansible_run(self, limit: list[str], rnd: int) -> None:
        inventory = write_ansible_inventory()
        ansible_prerequisites(limit)

        def run(*args: str, may_fail: bool = False) -> tuple[float, int, bool]:
            command = [str(self.ansible), "-i", str(inventory), str(PLAYBOOK)]
            command += ["--limit", ",".join(limit), *args]
            env = {**os.environ, "ANSIBLE_CONFIG": str(PLAYBOOK.parent / "ansible.cfg")}
            started = time.monotonic()
            result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            took = time.monotonic() - started
            changed, broken = ansible_changes(result.stdout)
            ok = result.returncode == 0 and not broken
            if not ok and not may_fail:
                raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}")
            return took, changed, ok

        hosts = len(limit)
        took, _, ok = run("--check", may_fail=True)
        self.record("ansible", CASES[0], hosts, rnd, took, 0, ok)
        self.record("ansible", CASES[1], hosts, rnd, *run()[:2])
        took, changed, _ = run()
        if changed:
            raise SystemExit(f"Ansible re-run changed {changed} tasks")
        self.record("ansible", CASES[2], hosts, rnd, took, changed)
        self.record("ansible", CASES[3], hosts, rnd, run("--check")[0], 0)

    def bare_apt(self, host: str, rnd: int) -> None:
        from gpufleet import lab

        address = lab_addresses()[host]
        script = (
            "apt-get update -q && DEBIAN_FRONTEND=noninteractive "
            f"apt-get install -y -q --no-install-recommends {PACKAGES}"
        )
        started = time.monotonic()
        subprocess.run(
            ["ssh", "-F", str(lab.ssh_config_path()), address, script],
            capture_output=True,
            check=True,
        )
        self.record("apt-get", CASES[1], 1, rnd, time.monotonic() - started, 0)

    def round(self, rnd: int) -> None:
        names = list(lab_addresses())
        many = names[: self.sizes[-1]]
        fresh_lab()
        self.gpufleet(names[:1], rnd)
        self.ansible_run(names[1:2], rnd)
        self.bare_apt(names[2], rnd)
        if len(many) > 1:
            fresh_lab()
            self.gpufleet(many, rnd)
            fresh_lab()
            self.ansible_run(many, rnd)

    def full_stack(self, host: str, rounds: int) -> None:
        command = [str(BIN / "pyinfra"), "--json", "-y", "inventory/lab.py", *DEPLOYS]
        command += ["--limit", host]
        for rnd in range(1, rounds + 1):
            started = time.monotonic()
            result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
            took = time.monotonic() - started
            changed, errors = pyinfra_changes(json.loads(result.stdout or "{}"))
            if result.returncode != 0 or changed or errors:
                raise SystemExit(
                    f"the full stack on {host} is not converged ({changed} changes, {errors} "
                    f"errors): run `make demo` first\n{result.stderr[-2000:]}"
                )
            self.record("gpufleet", "full-stack re-run", 1, rnd, took, changed)


def ansible_prerequisites(hosts: list[str]) -> None:
    """python3-apt on each host, untimed: Ansible's apt module needs it (and --check cannot
    install it); pyinfra needs nothing on the host."""
    from gpufleet import lab

    addresses = lab_addresses()
    script = (
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-apt"
    )
    running = [
        subprocess.Popen(
            ["ssh", "-F", str(lab.ssh_config_path()), addresses[name], script],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name in hosts
    ]
    if any(process.wait() != 0 for process in running):
        raise SystemExit("installing python3-apt for Ansible failed")


@functools.cache
def lab_addresses() -> dict[str, str]:
    from gpufleet.inventory import load_inventory

    return {h.name: str(h.data.get("ssh_hostname")) for h in load_inventory(ROOT / INVENTORY)}


def fresh_lab() -> None:
    from gpufleet import lab

    lab.down()
    lab.up(ROOT / INVENTORY)


def ansible_playbook() -> Path:
    """ansible-playbook from a venv of its own, made once per ansible-core version."""
    venv = Path.home() / ".cache/gpufleet" / ANSIBLE_CORE.replace("==", "-")
    playbook = venv / "bin/ansible-playbook"
    if not playbook.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", ANSIBLE_CORE], check=True)
    return playbook


def write_ansible_inventory() -> Path:
    """The bench hosts as an Ansible YAML inventory, variables from their validated specs."""
    from gpufleet import lab
    from gpufleet.inventory import validate_file

    specs = validate_file(ROOT / INVENTORY)
    addresses = lab_addresses()
    hosts = {
        name: {
            "ansible_host": addresses[name],
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(lab.key_path()),
            "apt_mirror": spec.apt_mirror,
            "apt_security_mirror": spec.apt_security_mirror,
            "apt_components": list(spec.apt_components),
            "apt_cache_hours": spec.apt_cache_hours,
            "service_user": spec.service_user,
            "ntp_servers": list(spec.ntp_servers),
            "node_exporter_listen": f"{spec.node_exporter_address}:{spec.node_exporter_port}",
        }
        for name, spec in specs.items()
    }
    path = lab.lab_dir() / "bench-ansible-inventory.json"
    path.write_text(json.dumps({"all": {"hosts": hosts}}, indent=2))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=8, help="the larger host count")
    parser.add_argument("--csv", default="bench/converge.csv")
    parser.add_argument("--full-stack", metavar="HOST", help="also time the lab's full stack")
    parser.add_argument("--skip-baseline", action="store_true", help="only --full-stack")
    args = parser.parse_args()
    os.environ["GPUFLEET_BENCH_HOSTS"] = str(max(args.hosts, 3))
    bench = Bench([1, args.hosts])
    try:
        if args.full_stack:
            bench.full_stack(args.full_stack, args.rounds)
        if not args.skip_baseline:
            for rnd in range(1, args.rounds + 1):
                bench.round(rnd)
    finally:
        if not args.skip_baseline:
            from gpufleet import lab

            lab.down()
        with open(args.csv, "w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["tool", "case", "hosts", "round", "seconds", "changes", "ok"])
            for t in bench.timings:
                writer.writerow([t.tool, t.case, t.hosts, t.round, t.seconds, t.changes, t.ok])
    print(median_table(bench.timings, bench.sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
