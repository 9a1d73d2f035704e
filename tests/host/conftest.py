"""The lab layer: real nspawn hosts, reached over SSH, shared by every test in this folder.

One session fixture brings the lab up, records what the hosts have as they boot (a Proxmox
stand-in has its containers' configs, as ``pct create`` left them), puts on the hosts what a
user had there before gpufleet (their own container config, a daemon.json, an old NVIDIA apt
list), and runs, for each deploy in turn, what a user would: a dry run (which must change
nothing), the deploy, and the deploy again (which must change nothing). Tests then assert on
those runs and inspect the hosts with testinfra.

Set GPUFLEET_KEEP_LAB=1 to leave the lab running after the session, to look around.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import testinfra

from gpufleet import lab
from gpufleet.inventory import validate_file
from gpufleet.models import HostSpec
from gpufleet.paths import DEPLOYS
from gpufleet.secrets import parse_vault_reference, secret_uses
from gpufleet.vault import VaultClient, client_for

ROOT = Path(__file__).parents[2]
LAB_INVENTORY = ROOT / "inventory/lab.py"
DEPLOY_GROUP = {
    "deploys/vault.py": "vault",
    "deploys/router.py": "router",
    "deploys/gateway.py": "gateway",
    "deploys/monitoring.py": "monitoring",
}
"""The group a deploy acts on; the others act on every host."""
FIXTURES = ROOT / "tests/fixtures"
USER_DAEMON_JSON = '{\n  "log-driver": "json-file",\n  "log-opts": {"max-size": "10m"}\n}\n'
STALE_NVIDIA_LIST = "deb https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /\n"
BEFORE_GPUFLEET = {
    "lab-pve-1": {
        "/etc/pve/lxc/107.conf": (
            FIXTURES / "proxmox/pve-lxc-no-nvidia-intel-dev.conf"
        ).read_text(),
        "/etc/docker/daemon.json": USER_DAEMON_JSON,
        # What NVIDIA's older instructions left: the same repository, no signed-by.
        "/etc/apt/sources.list.d/nvidia-docker.list": STALE_NVIDIA_LIST,
    }
}
"""Files a user had before gpufleet ran, per lab host."""
PYINFRA = str(Path(sys.executable).parent / "pyinfra")
PYINFRA_TIMEOUT_S = 1800
"""One pyinfra run of the lab. The longest, the first converge of deploys/inference.py on a
cold machine (llama.cpp compiled once from scratch on 2 cores, the other hosts install that
binary), takes under half of it: the session's summary prints each run against it."""
SSH_TIMEOUT_S = 120
"""One command on a lab host over SSH (the snapshot of a host's files is the longest)."""


@dataclass(frozen=True)
class Timed:
    """One run with a limit: how long it took against the limit it ran under."""

    label: str
    seconds: float
    limit: float

    @property
    def ratio(self) -> float:
        return self.seconds / self.limit


TIMED: list[Timed] = []
"""Every timed run of the session, in order. The standard is a 2x margin on a cold machine
(ratio at most 0.5); the summary reports the largest ratio and fails nothing, since a loaded
machine must not turn a test red."""


@contextmanager
def timed(label: str, limit: float) -> Iterator[None]:
    """Record how long the block takes against ``limit`` (also when it fails or times out)."""
    started = time.monotonic()
    try:
        yield
    finally:
        TIMED.append(Timed(label, time.monotonic() - started, limit))


def timing_summary(runs: list[Timed], top: int = 5) -> list[str]:
    """The largest duration/limit ratios, the largest first: one line each, ``longest:``
    first, then ``ssh`` calls folded into one line for their longest."""
    if not runs:
        return []
    ranked = sorted(runs, key=lambda run: run.ratio, reverse=True)
    lines = [f"longest: {_shown(ranked[0])}"]
    lines += [f"  then: {_shown(run)}" for run in ranked[1:top]]
    over = [run for run in runs if run.ratio > 0.5]
    if over:
        lines.append(f"  {len(over)} run(s) above half their limit (the 2x margin)")
    return lines


def _shown(run: Timed) -> str:
    return f"{run.label} {run.seconds:.0f} s of {run.limit:.0f} s limit ({run.ratio:.2f})"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = timing_summary(TIMED)
    if lines:
        terminalreporter.section("lab time-outs: duration against limit")
        for line in lines:
            terminalreporter.write_line(line)
        _write_timings({"timed": [
            {"label": r.label, "seconds": round(r.seconds, 1), "limit": r.limit,
             "ratio": round(r.ratio, 3)} for r in TIMED
        ]})  # fmt: skip


def _write_timings(values: dict) -> None:
    """Merge ``values`` into the lab's timings.json (what the last session measured)."""
    path = lab.lab_dir() / "timings.json"
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**recorded, **values}, indent=2))


# What a dry run must leave byte-for-byte as it was.
SNAPSHOT = (
    "find /etc /usr/local /opt -xdev \\( -type f -o -type l \\) -print0 2>/dev/null"
    " | sort -z | xargs -0 sha256sum 2>/dev/null; "
    "find /etc /usr/local /opt -xdev -printf '%M %u %g %p\\n' | sort; "
    "dpkg-query -W -f '${Package} ${Version} ${Status}\\n'"
)
# Proxmox's files on a host as it booted: a "== path owner:group mode" line, then the file.
PVE_FILES = "find /etc/pve -type f -printf '== %p %u:%g %m\\n' -exec cat {} \\; 2>/dev/null || true"

SPECS: dict[str, HostSpec] = validate_file(LAB_INVENTORY)


def lab_available() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root"
    missing = [tool for tool in lab.HOST_TOOLS if not shutil.which(tool)]
    return f"missing lab tools: {', '.join(missing)}" if missing else None


@dataclass
class PyinfraRun:
    args: list[str]
    returncode: int
    seconds: float
    stderr: str
    report: dict = field(default_factory=dict)

    @property
    def changed(self) -> list[tuple[str, str]]:
        """(operation, host) pairs pyinfra reports as changed. One call site can name its
        operation per host ("Install llama-server (CPU) built on lab-gpu-1" on one,
        "... (Vulkan) ..." on another); pyinfra reports one of the names as "name" and all of
        them in "names", so each host is paired with every name of its call site."""
        results = self.report.get("results") or {}
        return [
            (name, h)
            for op in results.get("operations", [])
            for name in op.get("names") or [op["name"]]
            for h in op["success"]
        ]


def pyinfra(
    deploy: str, *args: str, inventory: Path = LAB_INVENTORY, label: str | None = None
) -> PyinfraRun:
    where = inventory.relative_to(ROOT) if inventory.is_relative_to(ROOT) else inventory
    command = [PYINFRA, "--json", "-v", str(where), deploy, *args]
    started = time.monotonic()
    with timed(f"{deploy} {label or ' '.join(args)}", PYINFRA_TIMEOUT_S):
        result = subprocess.run(
            command,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=PYINFRA_TIMEOUT_S,
            env={**os.environ, "PYINFRA_PROGRESS": "off"},
        )
    run = PyinfraRun(command, result.returncode, time.monotonic() - started, result.stderr)
    if result.stdout.strip():
        run.report = json.loads(result.stdout)
    return run


def ssh(address: str, command: str, stdin: str | None = None) -> str:
    with timed(f"ssh {address} {command.split()[0] if command.split() else ''}", SSH_TIMEOUT_S):
        result = subprocess.run(
            ["ssh", "-F", str(lab.ssh_config_path()), address, command],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=SSH_TIMEOUT_S,
            check=True,
        )
    return result.stdout


def redis_cli(address: str, command: str, password: str | None) -> str:
    """redis-cli on a lab host; the password travels on stdin, never on a command line."""
    auth = "read -r REDISCLI_AUTH; export REDISCLI_AUTH; " if password else "read -r _; "
    command = f"{auth}redis-cli --no-auth-warning {command} 2>&1 || true"
    return ssh(address, command, stdin=(password or "") + "\n")


def put_file(address: str, path: str, content: str) -> None:
    with timed(f"put {path} on {address}", 60):
        _put_file(address, path, content)


def _put_file(address: str, path: str, content: str) -> None:
    subprocess.run(
        [
            "ssh",
            "-F",
            str(lab.ssh_config_path()),
            address,
            f"mkdir -p $(dirname {path}) && cat > {path}",
        ],
        input=content,
        text=True,
        timeout=60,
        check=True,
    )


@dataclass
class DeployRuns:
    dry: PyinfraRun
    dry_unchanged: dict[str, bool]
    first: PyinfraRun
    second: PyinfraRun


@dataclass
class LabSession:
    hosts: list[lab.LabHost]
    up_seconds: float
    runs: dict[str, DeployRuns]
    pve_files_at_boot: dict[str, str] = field(default_factory=dict)
    """PVE_FILES per host, right after ``lab up`` and before any test wrote to it."""

    # The GPU node deploy's runs, which most tests look at.
    @property
    def dry(self) -> PyinfraRun:
        return self.runs[DEPLOYS[0]].dry

    @property
    def dry_unchanged(self) -> dict[str, bool]:
        return self.runs[DEPLOYS[0]].dry_unchanged

    @property
    def first(self) -> PyinfraRun:
        return self.runs[DEPLOYS[0]].first

    @property
    def second(self) -> PyinfraRun:
        return self.runs[DEPLOYS[0]].second


@pytest.fixture(scope="session")
def lab_session() -> LabSession:
    reason = lab_available()
    if reason:
        pytest.skip(reason)
    if os.environ.get("GPUFLEET_REUSE_LAB"):
        # While writing a test: the converged lab left running (GPUFLEET_KEEP_LAB=1), as it
        # is, with no deploy run recorded; tests that look at the runs fail.
        yield LabSession(lab.up(LAB_INVENTORY), 0.0, {})
        return
    lab.down()  # the promises are about fresh hosts: never reuse a converged lab
    started = time.monotonic()
    waiting_from: list[float] = []

    def seen(step: str) -> None:
        if step.startswith("waiting for SSH"):
            waiting_from.append(time.monotonic())

    hosts = lab.up(LAB_INVENTORY, progress=seen)
    up_seconds = time.monotonic() - started
    if waiting_from:  # lab.up's limit is on the hosts' SSH answering (its timeout)
        TIMED.append(Timed("lab up: SSH on every host", time.monotonic() - waiting_from[0], 90))
    pve_files = {h.name: ssh(str(h.address), PVE_FILES) for h in hosts}

    for host in hosts:
        for path, content in BEFORE_GPUFLEET.get(host.name, {}).items():
            put_file(str(host.address), path, content)

    runs = {}
    for deploy in DEPLOYS:
        before = {h.name: ssh(str(h.address), SNAPSHOT) for h in hosts}
        # no -y: with it, pyinfra skips change detection
        dry = pyinfra(deploy, "--dry", label="dry run")
        after = {h.name: ssh(str(h.address), SNAPSHOT) for h in hosts}
        first = pyinfra(deploy, "-y", label="first converge")
        second = pyinfra(deploy, "-y", label="second converge")
        unchanged = {n: before[n] == after[n] for n in before}
        runs[deploy] = DeployRuns(dry, unchanged, first, second)
    session = LabSession(hosts, up_seconds, runs, pve_files)
    timings: dict[str, float] = {"lab_up_s": round(up_seconds, 1)}
    for deploy, run in runs.items():
        name = Path(deploy).stem
        timings[f"{name}_dry_run_s"] = round(run.dry.seconds, 1)
        timings[f"{name}_first_converge_s"] = round(run.first.seconds, 1)
        timings[f"{name}_second_converge_s"] = round(run.second.seconds, 1)
    (lab.lab_dir() / "timings.json").write_text(json.dumps(timings, indent=2))
    # Who compiled llama-server in the first converge of the inference deploy: one host.
    inference = runs.get("deploys/inference.py")
    if inference:
        changed = inference.first.changed
        built = list(dict.fromkeys(h for op, h in changed if "Build llama-server" in op))
        installed = list(dict.fromkeys(h for op, h in changed if "Install llama-server" in op))
        _write_timings({"llama_server_built_on": built, "llama_server_installed_on": installed})
        print(f"llama-server compiled on {built}, installed from that build on {installed}")
    print(f"\nlab timings: {timings}")
    yield session
    if not os.environ.get("GPUFLEET_KEEP_LAB"):
        lab.down()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``lab_host`` runs a test once per lab host; ``@pytest.mark.group(name)`` or
    ``@pytest.mark.hosts(*names)`` narrows it."""
    if "lab_host" in metafunc.fixturenames:
        group = metafunc.definition.get_closest_marker("group")
        only = metafunc.definition.get_closest_marker("hosts")
        names = [n for n, s in SPECS.items() if group is None or group.args[0] in s.groups]
        names = [n for n in names if only is None or n in only.args]
        metafunc.parametrize("lab_host", names, indirect=True)


@dataclass
class LabHostUnderTest:
    spec: HostSpec
    address: str
    testinfra: testinfra.host.Host


@pytest.fixture
def lab_host(request: pytest.FixtureRequest, lab_session: LabSession) -> LabHostUnderTest:
    spec = SPECS[request.param]
    address = str(spec.lan_address)
    backend = testinfra.get_host(f"ssh://{address}", ssh_config=str(lab.ssh_config_path()))
    return LabHostUnderTest(spec, address, backend)


@dataclass
class RebuildRuns:
    dry: PyinfraRun
    dry_unchanged: bool
    first: PyinfraRun
    second: PyinfraRun
    refused: PyinfraRun
    refused_unchanged: bool


REBUILD = "deploys/rebuild.py"


@pytest.fixture(scope="session")
def rebuild_session(lab_session: LabSession) -> RebuildRuns:
    """The hardware-swap flow on converged lab hosts: lab-gpu-1 has more RAM than declared;
    lab-pve-1 declares a GTX 1650 its facts do not show, which its vLLM placement needs."""
    gpu = "10.200.0.11"
    before = ssh(gpu, SNAPSHOT)
    dry = pyinfra(REBUILD, "--limit", "lab-gpu-1", "--dry")
    dry_unchanged = ssh(gpu, SNAPSHOT) == before
    first = pyinfra(REBUILD, "--limit", "lab-gpu-1", "-y")
    second = pyinfra(REBUILD, "--limit", "lab-gpu-1", "-y")
    pve = "10.200.0.13"
    before = ssh(pve, SNAPSHOT)
    refused = pyinfra(REBUILD, "--limit", "lab-pve-1", "-y")
    return RebuildRuns(dry, dry_unchanged, first, second, refused, ssh(pve, SNAPSHOT) == before)


@pytest.fixture(scope="session")
def fleet_ca() -> str:
    """The fleet CA's certificate, which every lab listener's certificate chains to."""
    return str(lab.lab_dir() / "ca" / "ca.crt")


def vault_secrets(client: VaultClient) -> dict[str, str]:
    """Every fleet secret kept in Vault, by reference."""
    values = {}
    for use in secret_uses(SPECS):
        if use.reference.startswith("vault:"):
            mount, path, key = parse_vault_reference(use.reference)
            values[use.reference] = str(client.kv_get(mount, path)[key])
    return values


@pytest.fixture(scope="session")
def client_key(lab_session: LabSession) -> str:
    """The lab gateway client's key, from Vault."""
    spec = SPECS["lab-infra-1"]
    mount, path, key = parse_vault_reference(spec.gateway.clients["lab-client"])
    return str(client_for(spec).kv_get(mount, path)[key])


def llama_headers() -> dict[str, str]:
    """What llama-server asks every client for on the lab: its key (a 0600 file here)."""
    key = (lab.lab_dir() / lab.LLAMACPP_KEY_FILE).read_text().strip()
    return {"Authorization": f"Bearer {key}"}
