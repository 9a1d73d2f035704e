"""Planned engine settings, Ollama's model list, secret references (pure logic)."""

import os
from pathlib import Path

import pytest

from gpufleet.engines import describe, llama_server_command, ollama_environment, vllm_command
from gpufleet.facts.ollama import full_name, missing_models, parse_ollama_list
from gpufleet.inventory import validate_file
from gpufleet.secrets import SecretError, read_secret

ROOT = Path(__file__).parents[2]
OLLAMA = ROOT / "tests/fixtures/ollama"
HOMELAB = validate_file(ROOT / "inventory/homelab.py")
EXAMPLE = validate_file(ROOT / "inventory/examples/proxmox_desktop.py")


def listing(name: str) -> list[str]:
    return (OLLAMA / name).read_text().splitlines()


def test_ollama_environment_follows_the_inventory():
    env = ollama_environment(HOMELAB["gtr9-pro"])
    assert env == {
        "OLLAMA_HOST": "0.0.0.0:11434",
        "OLLAMA_KEEP_ALIVE": "5m",
        "OLLAMA_FLASH_ATTENTION": "1",
        "OLLAMA_MAX_LOADED_MODELS": "1",
        "OLLAMA_NUM_PARALLEL": "1",
        "OLLAMA_CONTEXT_LENGTH": "131072",
    }
    assert ollama_environment(HOMELAB["akshat-pc"])["OLLAMA_MAX_LOADED_MODELS"] == "2"


def test_vllm_flags_are_the_corrected_ones_and_hold_no_key():
    spec = EXAMPLE["schlimers-server"]
    command = vllm_command(spec, spec.models[0])
    flags = dict(zip(command[3::2], command[4::2], strict=False))
    assert command[:3] == ["/opt/vllm/bin/vllm", "serve", "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8"]
    assert flags["--gpu-memory-utilization"] == "0.80"  # not 0.85
    assert flags["--max-num-seqs"] == "32"  # not 128
    assert flags["--max-num-batched-tokens"] == "4096"  # not 8192
    assert flags["--max-model-len"] == "16384"
    assert "--enable-prefix-caching" in command
    assert not any("key" in part.lower() for part in command)


def test_llama_server_on_a_gpu_host_offloads_unless_told_not_to():
    spec = EXAMPLE["xps15"]
    command = llama_server_command(spec, spec.models[0])
    assert command[command.index("--n-gpu-layers") + 1] == "999"
    assert command[command.index("--threads") + 1] == "8"
    assert "--metrics" in command
    cpu_only = EXAMPLE["schlimers-server"]
    command = llama_server_command(cpu_only, cpu_only.models[1])
    assert command[command.index("--n-gpu-layers") + 1] == "0"  # vLLM holds that GPU


def test_plan_of_every_homelab_host_prints_without_contacting_it():
    text = "\n".join(describe(spec) for spec in HOMELAB.values())
    assert text.count("ollama on port 11434") == sum(1 for s in HOMELAB.values() if s.models)
    assert "XL-LOC-FRE-qwen2.5-coder-32b" in text


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
