"""One model served by several hosts with llama.cpp's RPC backend (``rpc_workers``): the
planner's split by free memory, its bound, what the serving host and the workers run, who may
reach a worker, and every inventory that cannot work refused before any host is contacted."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from gpufleet.catalogue import load_catalogue, model_entry
from gpufleet.engines.llamacpp import LLAMACPP
from gpufleet.exposure import exposures
from gpufleet.inventory import InventoryError, validate_file
from gpufleet.planner import (
    LAN_ROUND_TRIP_S,
    RPC_SERVER,
    RUNTIME_OVERHEAD_GB,
    SYSTEM_RESERVE_GB,
    kv_cache_gb,
    plan_host,
    split_by_layers,
)
from gpufleet.roles.firewall import ruleset
from gpufleet.serving import placement_runs, rpc_server_run
from gpufleet.sizing import weights_gb

GGUF = {"source": "https://models.example/q.gguf", "sha256": "a" * 64}
HEAD = "box-1"


def host(address: str, ram_gb: float, **data) -> dict:
    return {
        "ssh_hostname": address,
        "lan_address": address,
        "hardware": {"cpu": "virtual", "cores": 8, "ram_gb": ram_gb},
        **data,
    }


def split_placement(*workers, model: str = "qwen2.5:32b", **extra) -> dict:
    return {
        "model": model,
        "engine": "llama.cpp",
        "alias": "L-LOC-FRE-qwen2.5-32b",
        "context": 4096,
        "rpc_workers": list(workers),
        **GGUF,
        **extra,
    }


def fleet_file(tmp_path: Path, hosts: dict[str, dict], extra: str = "") -> Path:
    path = tmp_path / "fleet.py"
    entries = ",\n    ".join(f"({name!r}, {json.dumps(data)})" for name, data in hosts.items())
    text = f"true, false, null = True, False, None\ncpu_nodes = [\n    {entries},\n]\n{extra}"
    path.write_text(text)
    return path


def two_boxes(tmp_path: Path, head: dict | None = None, worker: dict | None = None, **placement):
    hosts = {
        HEAD: host("10.9.0.1", 32, models=[split_placement("box-2", **placement)], **(head or {})),
        "box-2": host("10.9.0.2", 64, **(worker or {})),
    }
    return fleet_file(tmp_path, hosts)


def refused(path: Path) -> str:
    with pytest.raises(InventoryError) as error:
        validate_file(path)
    return str(error.value)


# --- the split ------------------------------------------------------------------------------


def test_layers_go_in_proportion_to_the_memory_each_host_has_free(tmp_path):
    specs = validate_file(two_boxes(tmp_path))
    catalogue = load_catalogue()
    plan = plan_host(specs[HEAD], catalogue, specs)
    decision = plan.placements[0]
    here, worker = decision.rpc
    assert (here.host, worker.host) == (HEAD, "box-2")
    free = {HEAD: 32 - SYSTEM_RESERVE_GB, "box-2": 64 - SYSTEM_RESERVE_GB}
    assert (here.free_gb, worker.free_gb) == (free[HEAD], free["box-2"])
    entry = model_entry(specs[HEAD].models[0], catalogue)
    assert here.layers + worker.layers == entry.layers == decision.layers
    # Largest remainders: each share within one layer of its exact proportion.
    exact = entry.layers * free["box-2"] / sum(free.values())
    assert abs(worker.layers - exact) < 1
    # Each share holds its layers' weights and KV cache, and a runtime's allowance.
    per_layer = (weights_gb(entry.params_b, "Q4_K_M") + kv_cache_gb(entry, 4096)) / entry.layers
    assert worker.need_gb == round(per_layer * worker.layers + RUNTIME_OVERHEAD_GB, 2)
    assert decision.where == "hosts" and decision.gpu_layers == worker.layers
    # The bound: each share read from its own memory, one after the other, and a LAN round
    # trip for the worker.
    active = weights_gb(entry.active_params_b, "Q4_K_M")
    seconds = sum(active * p.layers / entry.layers / p.bandwidth_gbs for p in decision.rpc)
    assert decision.bound_tok_s == round(1 / (seconds + LAN_ROUND_TRIP_S), 1)
    # The serving host counts only its own share in its memory.
    assert plan.ram_used_gb == here.need_gb


def test_a_worker_counts_the_layers_it_holds_and_its_server_is_limited_to_them(tmp_path):
    specs = validate_file(two_boxes(tmp_path))
    worker_plan = plan_host(specs["box-2"], load_catalogue(), specs)
    (part,) = worker_plan.rpc_parts
    share = plan_host(specs[HEAD], load_catalogue(), specs).placements[0].rpc[1]
    assert (part.head, part.layers, part.need_gb) == (HEAD, share.layers, share.need_gb)
    assert worker_plan.ram_used_gb == part.need_gb
    assert worker_plan.memory_max_gb[RPC_SERVER] >= part.need_gb
    # Without the fleet it is a host with nothing on it.
    alone = plan_host(specs["box-2"], load_catalogue())
    assert alone.rpc_parts == [] and alone.ram_used_gb == 0


def test_a_worker_given_its_layers_holds_exactly_those(tmp_path):
    hosts = {
        HEAD: host("10.9.0.1", 32, models=[split_placement({"host": "box-2", "layers": 10})]),
        "box-2": host("10.9.0.2", 64),
    }
    specs = validate_file(fleet_file(tmp_path, hosts))
    decision = plan_host(specs[HEAD], load_catalogue(), specs).placements[0]
    here, worker = decision.rpc
    assert (worker.layers, here.layers) == (10, decision.layers - 10)


def test_the_serving_host_renders_the_split_its_cpu_keeps_the_rest(tmp_path):
    specs = validate_file(two_boxes(tmp_path))
    (run,) = placement_runs(specs[HEAD], LLAMACPP, fleet=specs)
    flags = dict(itertools.pairwise(run.rendered.command))
    worker = run.decision.rpc[1]
    assert flags["--rpc"] == "10.9.0.2:50052" == worker.endpoint
    assert flags["--tensor-split"] == str(worker.layers)
    assert flags["--n-gpu-layers"] == str(worker.layers)
    # Without the fleet the split cannot be rendered: it fails rather than run unsplit.
    with pytest.raises(ValueError, match="split across hosts"):
        placement_runs(specs[HEAD], LLAMACPP)


def test_a_serving_host_with_a_gpu_puts_its_share_there_after_the_workers(tmp_path):
    gpu = {
        "hardware": {
            "cores": 8,
            "ram_gb": 64,
            "accelerators": [{"kind": "nvidia", "model": "RTX 3090"}],
        }
    }
    specs = validate_file(two_boxes(tmp_path, head=gpu))
    (run,) = placement_runs(specs[HEAD], LLAMACPP, fleet=specs)
    here, worker = run.decision.rpc
    assert here.on_gpu and not worker.on_gpu
    flags = dict(itertools.pairwise(run.rendered.command))
    assert flags["--tensor-split"] == f"{worker.layers},{here.layers}"
    assert flags["--n-gpu-layers"] == str(worker.layers + here.layers)
    assert plan_host(specs[HEAD], load_catalogue(), specs).vram_used_gb == here.need_gb


def test_the_worker_runs_ggml_rpc_server_where_only_the_serving_host_reaches_it(tmp_path):
    hosts = {
        HEAD: host("10.9.0.1", 32, models=[split_placement("box-2")]),
        "box-2": host("10.9.0.2", 64, firewall={"admin_sources": ["10.9.0.100/32"]}),
        "box-3": host("10.9.0.3", 8),
    }
    specs = validate_file(fleet_file(tmp_path, hosts))
    worker = rpc_server_run(specs["box-2"], specs)
    assert worker is not None
    assert worker.command == (
        "/usr/local/bin/ggml-rpc-server", "--host", "0.0.0.0", "--port", "50052",
        "--threads", "8",
    )  # fmt: skip
    rpc = {e.service: e for e in exposures(specs["box-2"], specs)}[RPC_SERVER]
    # Not the admin sources, not another host: the serving host alone.
    assert (rpc.clients, rpc.sources, rpc.guarded) == ((HEAD,), ("10.9.0.1",), True)
    rules = ruleset(specs["box-2"], specs)
    assert "tcp dport 50052 ip saddr { 10.9.0.1 } accept" in rules
    assert rpc_server_run(specs[HEAD], specs) is None


# --- refused before any host is contacted ----------------------------------------------------


TWO_GPUS = {"kind": "nvidia", "model": "RTX 3090", "count": 2}
GIVEN_BINARY = {"binary_url": "https://x.example/llama-server", "binary_sha256": "c" * 64}
REFUSED_SPLITS = {
    "firewall off": (
        {},
        {"firewall": {"enabled": False}},
        {},
        "host 'box-2': firewall.enabled: it holds layers of box-1's qwen2.5:32b with "
        "ggml-rpc-server, which asks no credentials",
    ),
    "no address": (
        {},
        {"lan_address": None},
        {},
        "host 'box-2': lan_address: box-1 reaches its ggml-rpc-server by address",
    ),
    "another llama.cpp": (
        {},
        {"llamacpp": {"source_sha256": "b" * 64}},
        {},
        "host 'box-2': llamacpp.source_sha256: it holds layers of box-1's qwen2.5:32b, "
        "whose llama.cpp is another source",
    ),
    "a given binary": (
        {"llamacpp": GIVEN_BINARY},
        {},
        {},
        "models[0].rpc_workers[0].host: a split model needs ggml-rpc-server and "
        "llama-server of one build",
    ),
    "two GPUs": (
        {},
        {"hardware": {"cores": 8, "ram_gb": 64, "accelerators": [TWO_GPUS]}},
        {},
        "host 'box-2': hardware.accelerators: it holds layers of box-1's qwen2.5:32b, and "
        "a worker with several GPUs",
    ),
    "no memory free": (
        {},
        {"hardware": {"cpu": "virtual", "cores": 8, "ram_gb": 2}},
        {},
        "box-2 would hold no layer",
    ),
    "too many layers": (
        {},
        {},
        {"rpc_workers": [{"host": "box-2", "layers": 70}]},
        "the layers given (70) are not the model's 64",
    ),
    "gpu layers asked": (
        {"llamacpp": {"gpu_layers": 20}},
        {},
        {},
        "host 'box-1': llamacpp.gpu_layers: the layers of a model split across hosts are the "
        "planner's split",
    ),
    "port taken": (
        {},
        {"llamacpp": {"rpc_port": 9100}},
        {},
        "host 'box-2': llamacpp.rpc_port: port 9100 is taken",
    ),
}


@pytest.mark.parametrize(
    ("head", "worker", "placement", "expected"),
    list(REFUSED_SPLITS.values()),
    ids=list(REFUSED_SPLITS),
)
def test_a_split_that_cannot_work_is_refused_naming_host_and_field(
    tmp_path, head, worker, placement, expected
):
    worker_data = host("10.9.0.2", 64, **{k: v for k, v in worker.items() if k != "lan_address"})
    if "lan_address" in worker:
        del worker_data["lan_address"]
    hosts = {
        HEAD: host("10.9.0.1", 32, models=[{**split_placement("box-2"), **placement}], **head),
        "box-2": worker_data,
    }
    assert expected in refused(fleet_file(tmp_path, hosts))


@pytest.mark.parametrize(
    ("workers", "expected"),
    [
        (["box-3"], "models[0].rpc_workers[0].host: no host 'box-3' in this inventory"),
        ([HEAD], "models[0].rpc_workers[0].host: names this host itself"),
        (["box-2;reboot"], "models[0].rpc_workers[0].host: must be an RFC 1123 host name"),
        (["box-2", "box-2"], "rpc_workers names box-2 more than once"),
    ],
)
def test_workers_that_are_not_other_hosts_of_the_inventory_are_refused(tmp_path, workers, expected):
    hosts = {
        HEAD: host("10.9.0.1", 32, models=[split_placement(*workers)]),
        "box-2": host("10.9.0.2", 64),
    }
    assert expected in refused(fleet_file(tmp_path, hosts))


def test_one_worker_serves_one_host_and_only_llama_cpp_splits(tmp_path):
    hosts = {
        HEAD: host("10.9.0.1", 32, models=[split_placement("box-3")]),
        "box-2": host("10.9.0.2", 32, models=[split_placement("box-3")]),
        "box-3": host("10.9.0.3", 64),
    }
    assert "box-3 holds layers for box-1 already" in refused(fleet_file(tmp_path, hosts))
    ollama = {"model": "qwen2.5:32b", "rpc_workers": ["box-2"]}
    hosts = {HEAD: host("10.9.0.1", 32, models=[ollama]), "box-2": host("10.9.0.2", 64)}
    (tmp_path / "ollama").mkdir()  # a file of its own: pyinfra keeps code by file name
    assert "ollama has none: set engine: llama.cpp" in refused(
        fleet_file(tmp_path / "ollama", hosts)
    )


def test_split_by_layers_refuses_what_does_not_fit():
    entry = model_entry_for("qwen2.5:32b")
    split = split_by_layers("m", entry, "Q4_K_M", 4096, [("a", 4.0, 50.0), ("b", 4.0, 50.0)])
    assert split.problem and "would hold" in split.problem and split.bound_tok_s is None


def model_entry_for(tag: str):
    from gpufleet.models import ModelPlacement

    return model_entry(ModelPlacement(model=tag), load_catalogue())
