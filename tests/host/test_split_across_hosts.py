"""One model served by two hosts together, with llama.cpp's RPC backend: lab-cpu-1 serves
Gemma 3 270M and keeps the first part of its layers; lab-gpu-1's ggml-rpc-server holds the
rest and computes them for it. The split is the planner's (by each host's free memory), the
flags are what it decided, the answer comes through the gateway, and the worker's port lets
in lab-cpu-1 and nothing else."""

from __future__ import annotations

import itertools
import socket

import pytest

from gpufleet import lab
from gpufleet.engines.llamacpp import LLAMACPP
from gpufleet.gguf import tensor_bytes
from gpufleet.serving import placement_runs, rpc_server_run

from .conftest import SPECS, ssh
from .test_secure_gateway import completes_through_the_gateway

HEAD, WORKER = "lab-cpu-1", "lab-gpu-1"
HEAD_ADDRESS, WORKER_ADDRESS = str(SPECS[HEAD].lan_address), str(SPECS[WORKER].lan_address)
RPC_PORT = SPECS[WORKER].llamacpp.rpc_port


def split_run():
    """lab-cpu-1's placement as the planner decided it with the fleet."""
    return placement_runs(SPECS[HEAD], LLAMACPP, fleet=SPECS)[0]


def test_the_planner_gives_both_hosts_layers():
    here, worker = split_run().decision.rpc
    assert (here.host, worker.host) == (HEAD, WORKER)
    assert here.layers > 0 and worker.layers > 0
    assert here.layers + worker.layers == split_run().decision.layers
    assert worker.endpoint == f"{WORKER_ADDRESS}:{RPC_PORT}"


def test_the_serving_host_runs_the_planned_split(lab_session):
    run = split_run()
    worker = run.decision.rpc[1]
    argv = ssh(HEAD_ADDRESS, "tr '\\0' '\\n' < /proc/$(pgrep -o -x llama-server)/cmdline")
    flags = dict(itertools.pairwise(argv.split("\n")))
    assert flags["--rpc"] == worker.endpoint
    assert flags["--n-gpu-layers"] == str(worker.layers)  # the worker's device, RPC0
    assert flags["--tensor-split"] == str(worker.layers)
    assert argv.split("\n")[:-1] == list(run.rendered.command)


def test_the_worker_holds_the_weights_of_its_layers(lab_session):
    """lab-gpu-1's ggml-rpc-server holds at least the weights of the layers the planner gave
    it (llama.cpp offloads the last layers: blocks 10 to 17 of Gemma's 18), read from the
    GGUF file itself, beyond what an idle ggml-rpc-server takes."""
    worker = split_run().decision.rpc[1]
    layers = split_run().decision.layers
    sizes = tensor_bytes(lab.lab_dir() / "mirror/models" / lab.GGUF_NAME)
    offloaded = range(layers - worker.layers, layers)
    weights = sum(
        b
        for name, b in sizes.items()
        if name.split(".")[:2] in (["blk", str(i)] for i in offloaded)
    )
    assert weights > 0
    held = rpc_server_run(SPECS[WORKER], SPECS)
    assert held is not None and held.parts[0].layers == worker.layers
    serving_kb = int(ssh(WORKER_ADDRESS, "ps -o rss= -C ggml-rpc-server").split()[0])
    idle = (
        "timeout 5 /usr/local/bin/ggml-rpc-server --port 50999 --threads 1 "
        "</dev/null >/dev/null 2>&1 & sleep 2; "
        "ps -o rss= -p $(pgrep -xf '/usr/local/bin/ggml-rpc-server --port 50999 --threads 1')"
    )
    idle_kb = int(ssh(WORKER_ADDRESS, idle).split()[0])
    assert (serving_kb - idle_kb) * 1024 >= 0.9 * weights, (serving_kb, idle_kb, weights)


def test_the_split_model_answers_through_the_gateway(lab_session, fleet_ca, client_key):
    # lab-cpu-1 generates it, with lab-gpu-1 computing its layers.
    completes_through_the_gateway(SPECS[HEAD].models[0].alias, HEAD_ADDRESS, client_key, fleet_ca)


def _connects(source: str | None, address: str, port: int) -> bool:
    """Whether a TCP connection from lab host ``source`` (None: this machine) opens."""
    if source is None:
        try:
            socket.create_connection((address, port), timeout=3).close()
        except OSError:
            return False
        return True
    probe = f"timeout 3 bash -c '</dev/tcp/{address}/{port}' 2>/dev/null && echo open || echo shut"
    return ssh(source, probe).strip() == "open"


@pytest.mark.parametrize(
    ("source", "name"),
    [
        (None, "this machine, an admin source"),
        ("10.200.0.12", "the router"),
        ("10.200.0.14", "a peer"),
    ],
)
def test_the_worker_lets_in_no_one_but_its_serving_host(lab_session, source, name):
    """ggml-rpc-server asks no credentials and runs what it is sent: its port is shut to
    every host but lab-cpu-1, the admin sources and the router among them."""
    assert not _connects(source, WORKER_ADDRESS, RPC_PORT), name


def test_the_serving_host_reaches_the_worker(lab_session):
    # llama-server on lab-cpu-1 holds its connection to the worker.
    peers = ssh(HEAD_ADDRESS, "ss -Htn state established | awk '{print $4}'").split()
    assert f"{WORKER_ADDRESS}:{RPC_PORT}" in peers
