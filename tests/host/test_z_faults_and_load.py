"""Faults and load, on the converged lab (after every other host test: these break things on
purpose). Another apt holding dpkg's lock; a first converge killed at five points; 64
streaming clients through NGINX -> LiteLLM -> llama.cpp with the primary engine killed under
them; a drifted host drained, rebuilt and returned under load; Vault rebuilt from a
snapshot. The figures go to the lab folder (``load.json``);
docs/testing.md quotes two runs of them."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import requests

from gpufleet import lab
from gpufleet.vault import VaultClient, VaultError, client_for

from .conftest import LAB_INVENTORY, PYINFRA, ROOT, SPECS, pyinfra, ssh, timed, vault_secrets

GPU, INFRA, LXC = "10.200.0.11", "10.200.0.12", "10.200.0.14"
GATEWAY = f"https://{INFRA}"
MODEL = "XS-LOC-FRE-gemma3-270m"


# --- another apt holds dpkg's lock -------------------------------------------------------

HOLD_S = 20
HOLD_LOCK = (
    "import fcntl, time\n"
    "lock = open('/var/lib/dpkg/lock-frontend', 'w')\n"
    "fcntl.lockf(lock, fcntl.LOCK_EX)\n"
    f"time.sleep({HOLD_S})\n"
)


def test_a_deploy_waits_for_the_dpkg_lock_another_apt_holds(lab_session):
    """As unattended-upgrades holds it on a freshly booted host: the deploy's apt-get waits
    (saying who holds the lock) and goes on, instead of failing."""
    ssh(LXC, "apt-get remove -y -q pciutils >/dev/null")  # a baseline package to put back
    ssh(LXC, f"systemd-run --unit=hold-dpkg-lock python3 -c {shlex.quote(HOLD_LOCK)}")
    held_at = time.monotonic()
    try:
        run = pyinfra("deploys/common.py", "--limit", "lab-lxc-1", "-y")
    finally:
        ssh(LXC, "systemctl stop hold-dpkg-lock 2>/dev/null || true")
    assert run.returncode == 0, run.stderr[-3000:]
    assert ("Install baseline packages", "lab-lxc-1") in [
        (name.split(" | ")[-1], host) for name, host in run.changed
    ]
    assert time.monotonic() - held_at >= HOLD_S  # it waited for the lock, then installed
    assert ssh(LXC, "dpkg-query -W -f '${Status}' pciutils") == "install ok installed"


# --- a first converge killed at five points ----------------------------------------------

KILL_POINTS = (
    ("Install baseline packages", 1.5),
    ("llama.cpp build tools", 3.0),
    ("Download the llama.cpp source", 0.3),
    ("Build llama-server", 3.0),
    ("Warm up", 0.3),
)
"""Operations of deploys/inference.py on lab-lxc-1, in the order they run, and how long into
each pyinfra is killed: every run gets further than the last, and is killed while that
operation runs on the host."""
CONVERGE = "deploys/inference.py"


def _killed_at(point: str, after_s: float) -> str:
    """Run the deploy on lab-lxc-1 and SIGKILL pyinfra ``after_s`` seconds after it starts
    ``point``; returns what it printed."""
    command = [PYINFRA, "-y", "-v", str(LAB_INVENTORY.relative_to(ROOT)), CONVERGE]
    process = subprocess.Popen(
        [*command, "--limit", "lab-lxc-1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYINFRA_PROGRESS": "off"},
    )
    assert process.stdout is not None
    printed = []
    killer = None
    for line in process.stdout:
        printed.append(line)
        if killer is None and "Starting" in line and point in line:
            killer = threading.Timer(after_s, process.send_signal, (signal.SIGKILL,))
            killer.start()
    with timed(f"deploys/inference.py killed in {point}", 1800):
        process.wait(timeout=1800)
    assert process.returncode == -signal.SIGKILL, f"{point} never started:\n{''.join(printed)}"
    return "".join(printed)


def test_a_first_converge_killed_at_five_points_converges_on_the_next_run(lab_session):
    lab.reboot_fresh(LAB_INVENTORY, "lab-lxc-1")  # a fresh host: its first converge
    assert ssh(LXC, "test -e /usr/local/bin/llama-server || echo fresh").strip() == "fresh"
    # Alone in the run and with no build kept on this machine, lab-lxc-1 compiles
    # llama-server itself, so a kill lands in the middle of the build.
    shutil.rmtree(lab.lab_dir() / lab.BUILD_CACHE, ignore_errors=True)
    for point, after_s in KILL_POINTS:
        _killed_at(point, after_s)
    converged = pyinfra(CONVERGE, "--limit", "lab-lxc-1", "-y")
    assert converged.returncode == 0, converged.stderr[-3000:]
    again = pyinfra(CONVERGE, "--limit", "lab-lxc-1", "-y")
    assert again.returncode == 0 and again.changed == [], again.changed
    health = requests.get(f"http://{LXC}:8080/health", timeout=10)
    assert health.json() == {"status": "ok"}
    # The warm-up the last kill cut short was done by the run after it.
    model = SPECS["lab-lxc-1"].models[0].alias
    record = json.loads(ssh(LXC, f"cat /var/lib/gpufleet/warmup/{model}.json"))
    assert record["model"] == model and record["tokens"] > 0


# --- 64 streaming clients, the primary engine killed under them --------------------------

CLIENTS = 64
LOAD_S = 60
KILL_AT_S = 20


@dataclass
class Request:
    started: float
    ended: float
    status: int | None
    ttft_s: float | None
    complete: bool
    error: str = ""


def _client(
    stop_at: float | threading.Event,
    key: str,
    ca: str,
    done: list[Request],
    lock: threading.Lock,
    pause_s: float = 0.0,
) -> None:
    session = requests.Session()
    headers = {"Authorization": f"Bearer {key}"}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count from one to five."}],
        "max_tokens": 16,
        "stream": True,
    }

    def going_on() -> bool:
        if isinstance(stop_at, threading.Event):
            return not stop_at.is_set()
        return time.monotonic() < stop_at

    while going_on():
        started, first, complete, status, error = time.monotonic(), None, False, None, ""
        try:
            with session.post(
                f"{GATEWAY}/v1/chat/completions",
                json=body,
                headers=headers,
                verify=ca,
                stream=True,
                timeout=120,
            ) as reply:
                status = reply.status_code
                if status == 200:
                    for line in reply.iter_lines():
                        if line == b"data: [DONE]":
                            complete = True
                            break
                        if line.startswith(b"data: ") and first is None and b'"content"' in line:
                            first = time.monotonic()
                else:
                    error = reply.text[:200]
        except requests.RequestException as exception:
            error = type(exception).__name__
        ended = time.monotonic()
        with lock:
            done.append(Request(started, ended, status, first and first - started, complete, error))
        if status == 429:
            time.sleep(1)  # the budget is spent: ask again a second later
        time.sleep(pause_s)


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


# --- a drifted host drained, rebuilt and returned under load (before the 64 clients
# spend the gateway's budget) -----------------------------

DRAIN_CLIENTS = 3
DRAIN_PAUSE_S = 3.0
"""Three clients, each pausing 3 s between requests: within the lab client's budget of 60
requests a minute, so every answer is the model's, not the gateway's 429."""
UNIT = "/etc/systemd/system/llama-server.service"


def test_a_host_drained_rebuilt_and_returned_under_load_fails_no_request(client_key, fleet_ca):
    """lab-gpu-1's llama-server unit edited by hand: its rebuild rewrites it and restarts the
    server. Streaming clients run through the gateway the whole time; the host is drained
    first (the backup on lab-infra-1 takes the new requests, those in flight finish),
    rebuilt, verified and returned, and no request fails."""
    ssh(GPU, f"sed -i 's/^Description=.*/& (edited by hand)/' {UNIT}")
    done: list[Request] = []
    lock = threading.Lock()
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_client, args=(stop, client_key, fleet_ca, done, lock, DRAIN_PAUSE_S)
        )
        for _ in range(DRAIN_CLIENTS)
    ]
    for thread in threads:
        thread.start()
    time.sleep(5)
    rebuilt_from = time.monotonic()
    try:
        rebuild = pyinfra("deploys/rebuild.py", "--limit", "lab-gpu-1", "-y", label="under load")
        rebuilt_until = time.monotonic()
        time.sleep(10)  # back in rotation: the clients go on a little
    finally:
        stop.set()
        with timed(f"{DRAIN_CLIENTS} clients finish", 300):
            for thread in threads:
                thread.join(timeout=300)

    assert rebuild.returncode == 0, rebuild.stderr[-3000:]
    changed = {name for name, _ in rebuild.changed}
    assert "Drain: out of the router's rotation, requests in flight finish" in changed
    assert "deploys/inference.py | llama.cpp | llama-server unit" in changed
    assert "Return: back into the router's rotation" in changed
    assert "edited by hand" not in ssh(GPU, f"cat {UNIT}")
    assert "gpufleet-drain" not in ssh(GPU, "nft list tables")

    served = [r for r in done if r.status == 200 and r.complete]
    budget = [r for r in done if r.status == 429]
    failed = [r for r in done if r not in served and r not in budget]
    during = [r for r in served if rebuilt_from < r.started < rebuilt_until]
    figures = {
        "clients": DRAIN_CLIENTS,
        "rebuild_s": round(rebuilt_until - rebuilt_from, 1),
        "requests": len(done),
        "served": len(served),
        "served_during_rebuild": len(during),
        "budget_429": len(budget),
        "failed": len(failed),
        "failures": [asdict(r) for r in failed][:10],
    }
    (lab.lab_dir() / "drain.json").write_text(json.dumps(figures, indent=2))
    print(f"\ndrain: {json.dumps({k: v for k, v in figures.items() if k != 'failures'})}")
    assert during, figures  # the model was served while its primary was drained
    assert failed == [], figures


def test_64_streaming_clients_lose_no_request_but_those_in_flight_when_the_primary_dies(
    client_key, fleet_ca
):
    done: list[Request] = []
    lock = threading.Lock()
    started = time.monotonic()
    stop_at = started + LOAD_S
    threads = [
        threading.Thread(target=_client, args=(stop_at, client_key, fleet_ca, done, lock))
        for _ in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    time.sleep(KILL_AT_S)
    killed_from = time.monotonic()
    ssh(GPU, 'kill -KILL "$(systemctl show -p MainPID --value llama-server)"')
    killed_until = time.monotonic()
    with timed(f"{CLIENTS} streaming clients", LOAD_S + 300):
        for thread in threads:
            thread.join(timeout=300)

    served = [r for r in done if r.status == 200 and r.complete]
    budget = [r for r in done if r.status == 429]
    failed = [r for r in done if r not in served and r not in budget]
    in_flight = [r for r in done if r.started < killed_until and r.ended > killed_from]
    after_kill = [r for r in served if r.started > killed_until]
    ttft = [r.ttft_s for r in served if r.ttft_s is not None]
    figures = {
        "clients": CLIENTS,
        "seconds": LOAD_S,
        "requests": len(done),
        "served": len(served),
        "budget_429": len(budget),
        "failed": len(failed),
        "in_flight_at_kill": len(in_flight),
        "served_after_kill": len(after_kill),
        "ttft_p50_s": round(statistics.median(ttft), 3) if ttft else None,
        "ttft_p99_s": round(_percentile(ttft, 0.99), 3) if ttft else None,
        "failures": [asdict(r) for r in failed][:10],
    }
    (lab.lab_dir() / "load.json").write_text(json.dumps(figures, indent=2))
    print(f"\nload: {json.dumps({k: v for k, v in figures.items() if k != 'failures'})}")

    assert served and budget, figures  # the budget's 429s, and requests served within it
    assert after_kill, figures  # the backup took over
    # Nothing fails but what the dying engine was streaming when it died.
    assert all(r in in_flight for r in failed), figures
    assert len(failed) <= len(in_flight), figures
    deadline = time.monotonic() + 120  # systemd brings the primary back
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://{GPU}:8080/health", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(1)
    else:
        pytest.fail("llama-server on lab-gpu-1 did not come back after SIGKILL")


# --- Vault rebuilt from a snapshot -------------------------------------------------------


def test_vault_rebuilt_from_a_snapshot_serves_every_secret_again(tmp_path):
    """The runbook of a lost Vault host: ``gpufleet vault snapshot`` while it ran; a blank
    server; ``gpufleet vault restore``; a restart; deploys/vault.py unseals it with the
    fleet's shares and finds nothing else to change; every secret reads as before."""
    spec = SPECS["lab-infra-1"]
    service, data = "openbao", "/var/lib/openbao"
    before = vault_secrets(client_for(spec))
    assert before
    snapshot = tmp_path / "vault.snap"
    gpufleet = [str(Path(PYINFRA).parent / "gpufleet"), "vault"]
    inventory = str(LAB_INVENTORY)
    taken = subprocess.run([*gpufleet, "snapshot", inventory, str(snapshot)], cwd=ROOT)
    assert taken.returncode == 0 and snapshot.stat().st_mode & 0o777 == 0o600

    # The host is lost: an empty data folder, a server that knows nothing.
    ssh(INFRA, f"systemctl stop {service} && find {data} -mindepth 1 -delete")
    ssh(INFRA, f"systemctl start {service}")
    blank = VaultClient(client_for(spec).address, None, client_for(spec).ca_file)
    deadline = time.monotonic() + 60
    while not blank.reachable() and time.monotonic() < deadline:
        time.sleep(1)
    assert not blank.initialized()
    with pytest.raises(VaultError):  # nothing of the fleet's is there
        vault_secrets(client_for(spec))

    restored = subprocess.run([*gpufleet, "restore", inventory, str(snapshot)], cwd=ROOT)
    assert restored.returncode == 0
    ssh(INFRA, f"systemctl restart {service}")
    rerun = pyinfra("deploys/vault.py", "-y")  # unseals with the shares
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert [name for name, _ in rerun.changed if "nseal" not in name] == [], rerun.changed
    assert vault_secrets(client_for(spec)) == before
    again = pyinfra("deploys/vault.py", "-y")
    assert again.returncode == 0 and again.changed == [], again.changed
