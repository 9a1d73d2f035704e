"""Three nodes: STARLORD (RTX 4090), THANOS (RTX 3080), ORACLE1 (ARM, no GPU).

This is the corrected allocation. The original one asked THANOS's single GPU for five
(autonomous-coordinator 1, adaptive-learning 2, knowledge-evolution 2) while the RTX 4090 sat
idle; the inventory check refuses that (see tests/unit/bad_inventories/). Here STARLORD serves
the LLMs through vLLM and THANOS keeps the light GPU work on its one card.
Validate and plan only: ``gpufleet validate inventory/examples/three_node.py``.
"""

from gpufleet.inventory import check_inventory

gpu_nodes = [
    (
        "starlord",
        {
            # The write-up gives no addresses; the allow-list lets monitoring in by address.
            # Give every host its lan_address and drop this line to turn it on.
            "firewall": {"enabled": False},
            "role": "primary inference: vLLM; also Vault and the LiteLLM router",
            "hardware": {
                "cpu": "AMD Ryzen 9 7950X",
                "cores": 16,
                "ram_gb": 64,
                "accelerators": [{"kind": "nvidia", "model": "RTX 4090"}],
            },
            "nvidia_driver": {"version": "535.261.03"},
            "models": [
                {
                    "model": "llama3.1:8b",
                    "engine": "vllm",
                    "source": "meta-llama/Llama-3.1-8B-Instruct",
                    "quant": "FP16",
                    "context": 16384,  # the default 128k needs 17 GB of KV cache
                    "gpus": 1,
                    "alias": "M-LOC-FRE-llama3.1-8b",
                },
            ],
            "services": [{"name": "litellm", "port": 4000}],
            # Llama weights are gated on Hugging Face: the token of an account that accepted
            # the licence, stored in Vault by you.
            "secrets": {
                "vllm_api_key": "vault:kv/gpufleet/vllm#api_key",
                "hf_token": "vault:kv/gpufleet/huggingface#token",
            },
        },
    ),
    (
        "thanos",
        {
            # The write-up gives no addresses; the allow-list lets monitoring in by address.
            # Give every host its lan_address and drop this line to turn it on.
            "firewall": {"enabled": False},
            "role": "avatar rendering, embeddings and small models on the shared GPU",
            "hardware": {
                "cpu": "Intel Core i9-10900K",
                "cores": 10,
                "ram_gb": 32,
                "accelerators": [{"kind": "nvidia", "model": "RTX 3080", "vram_gb": 10}],
            },
            "nvidia_driver": {"version": "535.261.03"},
            "models": [
                {"model": "nomic-embed-text", "alias": "S-LOC-FRE-nomic-embed-text"},
                {"model": "llama3.2:3b", "alias": "S-LOC-FRE-llama3.2-3b"},
            ],
            "services": [
                {"name": "live2d-avatar", "port": 8085, "vram_gb": 4.5},
                {"name": "autonomous-coordinator", "port": 8090, "gpus": 1, "vram_gb": 4},
            ],
        },
    ),
]

monitoring = [
    (
        "oracle1",
        {
            "role": "Prometheus, Grafana, log aggregation; no inference",
            "arch": "aarch64",
            "hardware": {"cpu": "Ampere Altra (ARM)", "cores": 4, "ram_gb": 24},
        },
    ),
]

vault = ["starlord"]
orchestrator = ["starlord"]

check_inventory(__file__)
