"""One vLLM model served by several hosts' GPUs, one pipeline stage per host on a Ray cluster
(``ray_workers``): the planner's split by free VRAM, what the head and the workers run, who
may reach the Ray ports, what a first run would do, and every inventory that cannot work
refused before any host is contacted."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from gpufleet.catalogue import load_catalogue, model_entry
from gpufleet.engines.vllm import RAY_ENV_FILE, VLLM
from gpufleet.exposure import exposures
from gpufleet.inventory import InventoryError, validate_file
from gpufleet.planner import RAY_NODE, RPC_SERVER, RUNTIME_OVERHEAD_GB, kv_cache_gb, plan_host
from gpufleet.preview import plan, profiles_for
from gpufleet.roles.firewall import ruleset
from gpufleet.serving import placement_runs, ray_node_run, rpc_server_run
from gpufleet.sizing import weights_gb

HEAD = "gpu-1"
TOKEN = "file:/etc/gpufleet-secrets/ray.token"
MODEL = {
    "model": "qwen2.5:72b",
    "engine": "vllm",
    "quant": "AWQ",
    "alias": "XL-LOC-FRE-qwen2.5-72b",
    "context": 8192,
    "source": "Qwen/Qwen2.5-72B-Instruct-AWQ",
}


def box(address: str, models: list | None = None, card: str = "RTX 4090", **extra) -> dict:
    data = {
        "ssh_hostname": address,
        "lan_address": address,
        "hardware": {
            "cpu": "virtual",
            "cores": 16,
            "ram_gb": 64,
            "accelerators": [{"kind": "nvidia", "model": card}] if card else [],
        },
        "nvidia_driver": {"version": "535.261.03"},
        "secrets": {"ray_token": TOKEN, "vllm_api_key": "file:/k/vllm"},
        "models": models or [],
    }
    for key, value in extra.items():
        if key != "secrets" and isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}  # type: ignore[dict-item]
        else:
            data[key] = value
    return data


def fleet_file(tmp_path: Path, hosts: dict[str, dict]) -> Path:
    path = tmp_path / "fleet.py"
    entries = ",\n    ".join(f"({name!r}, {json.dumps(data)})" for name, data in hosts.items())
    path.write_text(f"true, false, null = True, False, None\ngpu_nodes = [\n    {entries},\n]\n")
    return path


def three_boxes(tmp_path: Path, head: dict | None = None, workers=("gpu-2", "gpu-3"), **more):
    placement = {**MODEL, "ray_workers": list(workers), **(head or {})}
    hosts = {
        HEAD: box("10.9.0.1", [placement]),
        "gpu-2": box("10.9.0.2", **more.get("gpu-2", {})),
        "gpu-3": box("10.9.0.3", **more.get("gpu-3", {})),
    }  # fmt: skip
    return fleet_file(tmp_path, hosts)


def refused(path: Path) -> str:
    with pytest.raises(InventoryError) as error:
        validate_file(path)
    return str(error.value)


# --- the split ------------------------------------------------------------------------------


def test_stages_hold_layers_in_proportion_to_the_vram_vllm_may_use_on_each_host(tmp_path):
    specs = validate_file(three_boxes(tmp_path))
    catalogue = load_catalogue()
    decision = plan_host(specs[HEAD], catalogue, specs).placements[0]
    assert decision.problem is None and decision.where == "hosts"
    entry = model_entry(specs[HEAD].models[0], catalogue)
    stages = decision.rpc
    assert [s.host for s in stages] == [HEAD, "gpu-2", "gpu-3"]
    assert sum(s.layers for s in stages) == entry.layers == decision.gpu_layers
    # Each host gives vLLM's share (0.80) of its one 24 GB card: equal shares, within a layer.
    assert all(s.on_gpu and s.free_gb == round(24 * 0.80, 2) for s in stages)
    assert max(s.layers for s in stages) - min(s.layers for s in stages) <= 1
    per_layer = (weights_gb(entry.params_b, "AWQ") + kv_cache_gb(entry, 8192)) / entry.layers
    for stage in stages:
        assert stage.need_gb == round(per_layer * stage.layers + RUNTIME_OVERHEAD_GB, 2)
    # The head reaches the cluster at its own GCS; the workers' node managers are theirs.
    assert [s.endpoint for s in stages] == ["10.9.0.1:6379", "10.9.0.2:6380", "10.9.0.3:6380"]


def test_a_host_with_less_free_vram_runs_a_shorter_stage(tmp_path):
    specs = validate_file(three_boxes(tmp_path, **{"gpu-3": {"card": "RTX 3060"}}))
    stages = plan_host(specs[HEAD], load_catalogue(), specs).placements[0].rpc
    by_host = {s.host: s.layers for s in stages}
    assert by_host["gpu-3"] < by_host["gpu-2"]


def test_each_worker_counts_its_stage_and_its_ray_node_is_held_to_a_limit(tmp_path):
    specs = validate_file(three_boxes(tmp_path))
    catalogue = load_catalogue()
    stages = plan_host(specs[HEAD], catalogue, specs).placements[0].rpc
    worker = plan_host(specs["gpu-2"], catalogue, specs)
    (part,) = worker.rpc_parts
    assert (part.head, part.server, part.layers) == (HEAD, RAY_NODE, stages[1].layers)
    assert worker.vram_used_gb == stages[1].need_gb and worker.ram_used_gb == 0
    assert worker.memory_max_gb[RAY_NODE] > 0 and RPC_SERVER not in worker.memory_max_gb
    # The head's Ray node runs its first stage's workers: it is limited too.
    assert plan_host(specs[HEAD], catalogue, specs).memory_max_gb[RAY_NODE] > 0
    # A Ray worker runs no ggml-rpc-server.
    assert rpc_server_run(specs["gpu-2"], specs) is None


# --- what runs ------------------------------------------------------------------------------


def test_the_head_serves_the_planned_pipeline_and_the_workers_join_it(tmp_path):
    specs = validate_file(three_boxes(tmp_path))
    (run,) = placement_runs(specs[HEAD], VLLM, fleet=specs)
    stages = run.decision.rpc
    flags = dict(itertools.pairwise(run.rendered.command))
    assert flags["--pipeline-parallel-size"] == "3"
    assert flags["--tensor-parallel-size"] == "1"
    assert flags["--distributed-executor-backend"] == "ray"
    environment = dict(run.rendered.environment)
    # vLLM would split the layers evenly; it is told the planner's split instead.
    assert environment["VLLM_PP_LAYER_PARTITION"] == ",".join(str(s.layers) for s in stages)
    assert environment["RAY_ADDRESS"] == "10.9.0.1:6379"
    assert environment["RAY_AUTH_MODE"] == "token"
    # The token is a reference here, a value only in the 0640 file on the host.
    assert environment["RAY_AUTH_TOKEN"] == f"<{TOKEN}>"

    head = ray_node_run(specs[HEAD], specs)
    assert head is not None and head.is_head and head.layers == stages[0].layers
    head_flags = dict(itertools.pairwise(head.command))
    assert "--head" in head.command and head_flags["--port"] == "6379"
    assert "--include-dashboard=false" in head.command
    for number, name in enumerate(["gpu-2", "gpu-3"], start=1):
        node = ray_node_run(specs[name], specs)
        assert node is not None and not node.is_head
        assert (node.stage, node.layers) == (number, stages[number].layers)
        worker_flags = dict(itertools.pairwise(node.command))
        assert worker_flags["--address"] == "10.9.0.1:6379"
        assert worker_flags["--node-ip-address"] == stages[number].endpoint.split(":")[0]
        assert worker_flags["--num-gpus"] == "1"
        assert "--head" not in node.command
    # Without the fleet the split cannot be rendered: it fails rather than run unsplit.
    with pytest.raises(ValueError, match="split across hosts"):
        placement_runs(specs[HEAD], VLLM)


def test_ray_ports_admit_the_clusters_hosts_alone_not_even_the_admin_sources(tmp_path):
    admin = {"firewall": {"admin_sources": ["10.9.0.100/32"]}}
    specs = validate_file(three_boxes(tmp_path, **{"gpu-2": admin}))
    ray = {e.service: e for e in exposures(specs["gpu-2"], specs)}["ray"]
    assert ray.clients == (HEAD, "gpu-3") and ray.guarded
    assert ray.sources == ("10.9.0.1", "10.9.0.3")
    assert 6379 not in ray.ports and ray.port_range == (10002, 10101)
    rules = ruleset(specs["gpu-2"], specs)
    wanted = "tcp dport { 6380, 6381, 6382, 6383, 6384, 6385, 10002-10101 }"
    assert f"{wanted} ip saddr {{ 10.9.0.1, 10.9.0.3 }} accept" in rules
    assert f"{wanted} reject with tcp reset" in rules
    head = {e.service: e for e in exposures(specs[HEAD], specs)}["ray"]
    assert {6379, 10001} <= set(head.ports) and head.sources == ("10.9.0.2", "10.9.0.3")


def test_a_first_run_installs_ray_beside_vllm_and_starts_each_node(tmp_path, monkeypatch):
    path = three_boxes(tmp_path)
    profiles = profiles_for(str(path), None)
    planned = plan(str(path), ["deploys/inference.py"], lambda h, f, a: profiles[h].answer(f, a))
    for name in (HEAD, "gpu-2", "gpu-3"):
        operations = planned[name]
        commands = [c for o in operations for c in o.commands]
        assert any("'ray[cgraph]==2.60.0'" in c and "vllm==0.28.0" in c for c in commands)
        unit = next(
            c for o in operations for d, c in o.uploads.items() if d.endswith("ray.service")
        )
        assert "Environment=RAY_AUTH_MODE=token" in unit
        assert f"EnvironmentFile={RAY_ENV_FILE}" in unit and "MemoryMax=" in unit
        node = ray_node_run(validate_file(path)[name], validate_file(path))
        assert node is not None and "ExecStart=" + " ".join(node.command) in unit
        assert "systemctl start ray.service" in commands
    head_units = {d: c for o in planned[HEAD] for d, c in o.uploads.items()}
    vllm_unit = head_units["/etc/systemd/system/vllm.service"]
    assert "Requires=ray.service" in vllm_unit and f"EnvironmentFile={RAY_ENV_FILE}" in vllm_unit
    assert "Environment=VLLM_PP_LAYER_PARTITION=" in vllm_unit
    assert "RAY_AUTH_TOKEN" not in vllm_unit  # only the file holds it
    # Only the head serves: the workers start no vLLM server.
    assert not any("vllm.service" in d for o in planned["gpu-2"] for d in o.uploads)


# --- refused before any host is contacted ----------------------------------------------------


def test_ray_workers_belong_to_vllm():
    from pydantic import ValidationError

    from gpufleet.models import ModelPlacement

    with pytest.raises(ValidationError, match="ray_workers run a vLLM model"):
        ModelPlacement(**{**MODEL, "engine": "llama.cpp", "ray_workers": ["gpu-2"]})
    with pytest.raises(ValidationError, match="more than once"):
        ModelPlacement(**{**MODEL, "ray_workers": ["gpu-2", "gpu-2"]})
    with pytest.raises(ValidationError):
        ModelPlacement(**{**MODEL, "ray_workers": ["gpu-2; rm -rf /"]})


REFUSED = {
    "no token": (
        {"gpu-2": {"secrets": {"vllm_api_key": "file:/k/vllm"}}},
        "host 'gpu-2': secrets.ray_token: it joins gpu-1's Ray cluster, which asks for the token",
    ),
    "another token": (
        {"gpu-3": {"secrets": {"ray_token": "file:/other"}}},
        "host 'gpu-3': secrets.ray_token: it joins gpu-1's Ray cluster",
    ),
    "firewall off": (
        {"gpu-2": {"firewall": {"enabled": False}}},
        "host 'gpu-2': firewall.enabled: it runs a pipeline stage of gpu-1's qwen2.5:72b",
    ),
    "another vLLM": (
        {"gpu-3": {"vllm": {"version": "0.27.0"}}},
        "host 'gpu-3': vllm.version: it runs a pipeline stage of gpu-1's qwen2.5:72b, whose "
        "cluster runs 0.28.0",
    ),
    "in a container": (
        {"gpu-2": {"vllm": {"install": "container"}}},
        "host 'gpu-2': vllm.install: it runs a pipeline stage of gpu-1's model from vLLM's venv",
    ),
    "no GPU": (
        {"gpu-3": {"card": None}},
        "host 'gpu-1': models[0].ray_workers: gpu-3 has 0 NVIDIA GPU(s) and every pipeline "
        "stage runs on 1 (gpus, the tensor-parallel size)",
    ),
    "a port taken": (
        {"gpu-2": {"vllm": {"ray": {"node_manager_port": 9100}}}},
        "host 'gpu-2': vllm.ray.node_manager_port: port 9100 is taken by node_exporter_port",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_cluster_that_cannot_work_is_refused_naming_host_field_and_fix(tmp_path, case):
    more, message = REFUSED[case]
    assert message in refused(three_boxes(tmp_path, **more))


def test_no_token_on_the_head_is_refused_with_where_to_keep_one(tmp_path):
    path = three_boxes(tmp_path)
    text = path.read_text().replace(f'"ray_token": "{TOKEN}", ', "", 1)
    assert text != path.read_text()
    path.write_text(text)
    assert "host 'gpu-1': secrets.ray_token: a Ray cluster's nodes and vLLM present one" in (
        refused(path)
    )


def test_a_host_runs_one_ray_node(tmp_path):
    hosts = {
        HEAD: box("10.9.0.1", [{**MODEL, "ray_workers": ["gpu-3"]}]),
        "gpu-2": box("10.9.0.2", [{**MODEL, "alias": "XL-LOC-FRE-q2", "ray_workers": ["gpu-3"]}]),
        "gpu-3": box("10.9.0.3"),
    }
    assert "gpu-3 runs a stage for gpu-1 already; a host runs one Ray node" in refused(
        fleet_file(tmp_path, hosts)
    )
