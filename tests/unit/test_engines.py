"""Planned engine settings, Ollama's model list, secret references (pure logic)."""

import ast
import itertools
import os
from pathlib import Path

import pytest

from gpufleet.catalogue import load_catalogue
from gpufleet.checks import check_host
from gpufleet.engines import ENGINES, engine_for
from gpufleet.facts.ollama import full_name, missing_models, parse_ollama_list
from gpufleet.inventory import spec_for, validate_file
from gpufleet.secrets import SecretError, read_secret
from gpufleet.serving import describe, placement_runs

ROOT = Path(__file__).parents[2]
OLLAMA = ROOT / "tests/fixtures/ollama"
HOMELAB = validate_file(ROOT / "inventory/homelab.py")
EXAMPLE = validate_file(ROOT / "inventory/examples/proxmox_desktop.py")


def listing(name: str) -> list[str]:
    return (OLLAMA / name).read_text().splitlines()


def rendering(spec, index=0, fleet=None):
    """The placement at ``index`` as it runs: (decision, command flags, rendering)."""
    placement = spec.models[index]
    engine = engine_for(spec, placement)
    run = next(r for r in placement_runs(spec, engine, fleet=fleet) if r.placement is placement)
    command = run.rendered.command
    flags = dict(itertools.pairwise(command))
    return run.decision, flags, run.rendered


def test_ollama_environment_follows_the_inventory():
    _, _, rendered = rendering(HOMELAB["gtr9-pro"])
    assert dict(rendered.environment) == {
        "OLLAMA_HOST": "0.0.0.0:11434",
        "OLLAMA_KEEP_ALIVE": "5m",
        "OLLAMA_FLASH_ATTENTION": "1",
        "OLLAMA_MAX_LOADED_MODELS": "1",
        "OLLAMA_NUM_PARALLEL": "1",
        "OLLAMA_CONTEXT_LENGTH": "131072",
        # An AI Max box: its Radeon 8060S is kept and driven through Vulkan.
        "OLLAMA_IGPU_ENABLE": "1",
        "OLLAMA_VULKAN": "1",
    }
    _, _, rendered = rendering(HOMELAB["akshat-pc"])
    assert dict(rendered.environment)["OLLAMA_MAX_LOADED_MODELS"] == "2"


def test_vllm_flags_are_the_corrected_ones_and_hold_no_key():
    decision, flags, rendered = rendering(EXAMPLE["schlimers-server"])
    command = rendered.command
    assert command[:3] == ("/opt/vllm/bin/vllm", "serve", "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8")
    assert flags["--gpu-memory-utilization"] == "0.80"  # not 0.85
    assert flags["--max-num-seqs"] == "32"  # not 128
    assert flags["--max-num-batched-tokens"] == "4096"  # not 8192
    assert flags["--max-model-len"] == str(decision.context) == "16384"
    assert "--enable-prefix-caching" in command
    assert not any("key" in part.lower() for part in command)
    assert dict(rendered.environment) == {"VLLM_API_KEY": "<vault:kv/gpufleet/vllm#api_key>"}


def test_llama_server_offloads_what_the_planner_decided():
    decision, flags, _ = rendering(EXAMPLE["xps15"])
    assert flags["--n-gpu-layers"] == str(decision.gpu_layers)
    assert decision.gpu_layers > 0
    assert flags["--threads"] == "8"  # its 8 cores
    cpu_only = EXAMPLE["schlimers-server"]
    decision, flags, _ = rendering(cpu_only, 1)
    assert flags["--n-gpu-layers"] == "0" == str(decision.gpu_layers)  # vLLM holds that GPU


RTX_2080_SUPER_14B = {
    "hardware": {
        "cores": 8,
        "ram_gb": 32,
        "accelerators": [{"kind": "nvidia", "model": "RTX 2080 Super"}],
    },
    "nvidia_driver": {"version": "535.261.03"},
    "models": [
        {
            "model": "qwen2.5:14b",
            "engine": "llama.cpp",
            "context": 8192,
            "source": "/srv/models/qwen2.5-14b-q4_k_m.gguf",
        }
    ],
}


def test_a_partial_offload_renders_the_planned_layer_count_not_all_of_them():
    """qwen2.5:14b at 8k context does not fit an 8 GB card: the plan puts some of its 48
    layers there, and llama-server is told exactly that many (not 999, which fails to load)."""
    spec = spec_for("backup-pc", ["gpu_nodes"], RTX_2080_SUPER_14B)
    assert not check_host(spec, load_catalogue())
    decision, flags, _ = rendering(spec)
    assert decision.where == "partial"
    assert 0 < decision.gpu_layers < decision.layers == 48
    assert flags["--n-gpu-layers"] == str(decision.gpu_layers)
    assert flags["--ctx-size"] == "8192"
    asked = spec_for(
        "backup-pc", ["gpu_nodes"], {**RTX_2080_SUPER_14B, "llamacpp": {"gpu_layers": 48}}
    )
    problems = [str(p) for p in check_host(asked, load_catalogue())]
    assert any(
        "llamacpp.gpu_layers" in p and f"at most {decision.gpu_layers}" in p for p in problems
    )
    fewer = {**RTX_2080_SUPER_14B, "llamacpp": {"gpu_layers": 10}}
    decision, flags, _ = rendering(spec_for("backup-pc", ["gpu_nodes"], fewer))
    assert flags["--n-gpu-layers"] == "10" == str(decision.gpu_layers)


SHIPPED = {
    path.name: validate_file(path)
    for path in [
        ROOT / "inventory/homelab.py",
        ROOT / "inventory/lab.py",
        *sorted((ROOT / "inventory/examples").glob("*.py")),
    ]
}
EVERY_PLACEMENT = [
    (inventory, name, index)
    for inventory, specs in SHIPPED.items()
    for name, spec in specs.items()
    for index in range(len(spec.models))
]


@pytest.mark.parametrize(("inventory", "host", "index"), EVERY_PLACEMENT)
def test_every_shipped_placement_renders_the_plan(inventory, host, index):
    """The flags and environment of every placement of every shipped inventory carry the
    planner's numbers: context, layers on the GPU, slots, threads."""
    spec = SHIPPED[inventory][host]
    decision, flags, rendered = rendering(spec, index, SHIPPED[inventory])
    if spec.models[index].engine == "llama.cpp":
        assert flags["--n-gpu-layers"] == str(decision.gpu_layers)
        workers = decision.rpc[1:]
        assert flags.get("--rpc") == (",".join(p.endpoint for p in workers) or None)
        assert flags.get("--tensor-split") == (",".join(str(p.layers) for p in workers) or None)
        assert flags["--ctx-size"] == str(decision.context)
        assert flags["--parallel"] == str(decision.slots)
        assert flags["--threads"] == str(decision.threads)
    elif spec.models[index].engine == "vllm":
        assert flags["--max-model-len"] == str(decision.context)
        assert flags["--max-num-seqs"] == str(decision.slots)
        assert flags["--tensor-parallel-size"] == str(decision.gpus)
    else:
        environment = dict(rendered.environment)
        parameters = dict(rendered.parameters)
        if spec.models[index].alias:
            assert parameters == {
                "num_ctx": str(decision.context),
                "num_gpu": str(decision.gpu_layers),
            }
        else:
            default = environment.get("OLLAMA_CONTEXT_LENGTH", "2048")
            assert str(decision.context) == default
        assert environment.get("OLLAMA_NUM_PARALLEL", "1") == str(decision.slots)


def test_plan_of_every_homelab_host_prints_without_contacting_it():
    text = "\n".join(describe(spec) for spec in HOMELAB.values())
    assert text.count("ollama on port 11434") == sum(
        1 for s in HOMELAB.values() if any(m.engine == "ollama" for m in s.models)
    )
    assert "XL-LOC-FRE-qwen2.5-coder-32b: num_ctx=" in text


def test_ollama_list_names():
    assert parse_ollama_list(listing("ollama-list-many.txt")) == {
        "codellama:7b-code", "codegemma:2b", "mistral:latest", "qwen3:latest",
        "qwen2.5vl:latest", "gemma3:latest", "deepseek-r1:8b", "deepseek-r1:latest",
    }  # fmt: skip
    assert parse_ollama_list(listing("ollama-list-empty.txt")) == set()
    assert parse_ollama_list([]) is None  # not installed or not answering


def test_only_missing_models_are_pulled():
    listed = parse_ollama_list(listing("ollama-list-many.txt")) or set()
    wanted = ["mistral", "deepseek-r1:8b", "qwen2.5-coder:32b", "nomic-embed-text"]
    assert missing_models(wanted, listed) == ["qwen2.5-coder:32b", "nomic-embed-text"]
    namespaced = parse_ollama_list(listing("ollama-list-namespaced.txt")) or set()
    tag = "modelscope.cn/unsloth/DeepSeek-R1-Distill-Qwen-7B-GGUF:Q4_K_M"
    assert missing_models([tag], namespaced) == []
    assert full_name("hf.co/org/model") == "hf.co/org/model:latest"


def test_file_secrets_must_be_private(tmp_path):
    key = tmp_path / "key"
    key.write_text("s3cr3t\n")
    os.chmod(key, 0o600)
    assert read_secret(f"file:{key}") == "s3cr3t"
    os.chmod(key, 0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        read_secret(f"file:{key}")


def test_vault_secrets_need_an_address_and_token(monkeypatch):
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    with pytest.raises(SecretError, match="set VAULT_ADDR and VAULT_TOKEN"):
        read_secret("vault:kv/gpufleet/vllm#api_key")


def test_the_inference_deploy_runs_every_engines_role_in_the_registrys_order():
    """Adding an engine to the registry without its step in deploys/inference.py fails here."""
    tree = ast.parse((ROOT / "src/gpufleet/deploys/inference.py").read_text())
    modules = {
        alias.asname or alias.name: f"{node.module}.{alias.name}"
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module == "gpufleet.roles"
        for alias in node.names
    }
    called = [
        modules[node.value.func.value.id]
        for node in tree.body
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Attribute)
        and node.value.func.attr == "serve"
    ]
    assert called == list(dict.fromkeys(engine.role for engine in ENGINES))


def test_each_engine_names_its_warm_up_request():
    for engine in ENGINES:
        assert engine.warm_up_path("llm") == "/v1/chat/completions"
        assert engine.warm_up_path("embedding") == "/v1/embeddings"
