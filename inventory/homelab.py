"""The fleet: 14 machines plus the Pi 5 fleet, as the model distribution plan describes them.

These addresses belong to real machines on someone's LAN and tailnet. Validate and plan this
inventory (``gpufleet validate inventory/homelab.py``); deploy it only from that network.

Placements from the plan that cannot work are left out here, with the reason, because the
inventory check refuses them:

* old-office-pc ``llama3.1:70b-q4``: ~42.4 GB of weights, the host has 8 GB VRAM + 32 GB RAM.
* evo-x2 ``deepseek-coder-v2:236b-q4``: ~143 GB of weights in 128 GB of unified memory.
* ``stable-diffusion-xl``, ``flux-schnell``, ``stable-diffusion-2.1``, ``stable-diffusion``
  (CoreML) and ``whisper:large-v3``: image and speech models Ollama does not serve; they need
  their own engines.

Settings the plan gave that the capacity planner shows cannot hold, corrected here:

* akshat-pc keeps 2 models loaded, not 3: the three largest (llama3.2-vision:90b,
  qwen2.5:72b, llava:34b) need ~243 GB with their KV caches; the host has 32 GB VRAM + 190 GB.
* old-office-pc keeps 2 loaded: its three largest need 38.4 GB of its 38 GB.
* gtr9-pro serves one request at a time with the 128k context, one model loaded: Ollama
  allocates context x parallel slots, and 128k x 4 slots is ~172 GB of KV cache for a 72B
  model alone, in 128 GB.
"""

from gpufleet.inventory import check_inventory


def _ollama(*placements: tuple[str, str] | tuple[str, str, int]) -> list[dict[str, object]]:
    """Ollama placements as (tag, alias) or (tag, alias, priority): 2 and 3 are the router's
    backup 1 and backup 2 for that alias (seed 004's redundancy map)."""
    return [
        {"model": p[0], "alias": p[1], **({"priority": p[2]} if len(p) > 2 else {})}
        for p in placements
    ]


def _claimed(tok_s: float, placements: list[dict[str, object]], *tags: str) -> None:
    """The plan's expected speed for these placements (the low end of its range): the planner
    refuses a claim the hardware's memory bandwidth cannot reach."""
    for placement in placements:
        if placement["model"] in tags:
            placement["claimed_tok_s"] = tok_s


def _cloud(name: str, model: str) -> dict[str, str]:
    """A paid model the router may use; its key is the provider's, kept in Vault."""
    provider = model.split("/", 1)[0]
    return {"name": name, "model": model, "api_key": f"vault:kv/gpufleet/cloud#{provider}"}


_TAILNET = "tailf49db2.ts.net"
_QWEN_72B_Q4 = "qwen2.5:72b-instruct-q4_K_M"
_LLAMA_70B_Q4 = "llama3.1:70b-instruct-q4_K_M"

gpu_nodes = [
    (
        "akshat-pc",
        {
            "ssh_hostname": "10.0.0.5",
            "lan_address": "10.0.0.5",
            "tailscale_address": "100.111.115.92",
            "tailscale_name": f"akshat-pc.{_TAILNET}",
            "role": "primary workhorse: XL models",
            "hardware": {
                "cpu": "Intel Core i9-12900K",
                "cores": 16,
                "ram_gb": 192,
                "accelerators": [{"kind": "nvidia", "model": "RTX 5090"}],
            },
            # Blackwell needs branch 570+ and NVIDIA's open modules: Debian 12 has 535.
            "nvidia_driver": {"source": "cuda", "version": "575.64.05"},
            "ollama": {"max_loaded_models": 2},
            "models": _ollama(
                ("qwen2.5-coder:32b", "XL-LOC-FRE-qwen2.5-coder-32b"),
                ("deepseek-coder-v2:236b", "XL-LOC-FRE-deepseek-coder-236b"),
                ("qwen2.5:72b", "XL-LOC-FRE-qwen2.5-72b"),
                ("llava:34b", "XL-LOC-FRE-llava-34b"),
                ("deepseek-r1:14b", "L-LOC-FRE-deepseek-r1-14b"),
                ("qwen2.5:32b", "L-LOC-FRE-qwen2.5-32b"),
                ("llama3.2-vision:90b", "XL-LOC-FRE-llama3.2-vision-90b"),
                ("llama3.2-vision:11b", "M-LOC-FRE-llama3.2-vision-11b"),
                ("codestral:22b", "L-LOC-FRE-codestral-22b"),
            ),
        },
    ),
    (
        "old-office-pc",
        {
            "role": "backup and mid-tier models",
            "hardware": {
                "cpu": "Intel Core i7-6700K",
                "cores": 4,
                "ram_gb": 32,
                "accelerators": [{"kind": "nvidia", "model": "RTX 2080 Super"}],
            },
            "nvidia_driver": {"version": "535.261.03"},
            "ollama": {"max_loaded_models": 2},
            "models": _ollama(
                # The plan's "qwen2.5-coder:32b-q4" is no tag of Ollama's library; this is.
                ("qwen2.5-coder:32b-instruct-q4_K_M", "XL-LOC-FRE-qwen2.5-coder-32b-q4"),
                ("llama3.2-vision:11b", "M-LOC-FRE-llama3.2-vision-11b", 2),
                ("mistral-nemo:12b", "M-LOC-FRE-mistral-nemo-12b"),
                ("qwen2.5:14b", "M-LOC-FRE-qwen2.5-14b"),
                ("llama3.2:3b", "S-LOC-FRE-llama3.2-3b"),
                ("deepseek-r1:8b", "S-LOC-FRE-deepseek-r1-8b"),
                ("nomic-embed-text", "S-LOC-FRE-nomic-embed-text"),
            ),
        },
    ),
]

_AI_MAX = {
    "cpu": "AMD Ryzen AI Max+ 395",
    "cores": 16,
    "ram_gb": 128,
    "accelerators": [{"kind": "amd_igpu", "model": "Radeon 8060S"}],
}

cpu_nodes = [
    (
        "gtr9-pro",
        {
            "role": "XL models on CPU, long context",
            "hardware": _AI_MAX,
            "ollama": {"num_parallel": 1, "context_length": 131072, "max_loaded_models": 1},
            "models": _ollama(
                # The plan's "-q4" tags are not in Ollama's library: these are its Q4 tags.
                (_QWEN_72B_Q4, "XL-LOC-FRE-qwen2.5-72b-q4-cpu"),
                (_LLAMA_70B_Q4, "XL-LOC-FRE-llama3.1-70b-q4-cpu"),
                ("mixtral:8x22b-instruct-v0.1-q4_K_M", "XL-LOC-FRE-mixtral-8x22b-q4"),
                # XL Code's backup 1 (the redundancy map: GTR9-Pro on its CPU).
                ("qwen2.5-coder:32b", "XL-LOC-FRE-qwen2.5-coder-32b", 2),
                ("mxbai-embed-large", "M-LOC-FRE-mxbai-embed-large"),
                ("bge-m3", "M-LOC-FRE-bge-m3"),
            ),
        },
    ),
    (
        "evo-x2",
        {
            "role": "XL models on CPU, redundancy",
            "hardware": _AI_MAX,
            "models": _ollama(
                (_QWEN_72B_Q4, "XL-LOC-FRE-qwen2.5-72b-q4-cpu"),
                # XL Code's backup 2 (the redundancy map: EVO-X2 on its CPU).
                ("qwen2.5-coder:32b", "XL-LOC-FRE-qwen2.5-coder-32b", 3),
                ("snowflake-arctic-embed:335m", "S-LOC-FRE-arctic-embed"),
                ("nomic-embed-text", "S-LOC-FRE-nomic-embed-text"),
            ),
        },
    ),
    (
        "ms-s1",
        {
            "role": "third XL CPU node",
            "hardware": _AI_MAX,
            "models": _ollama(
                (_QWEN_72B_Q4, "XL-LOC-FRE-qwen2.5-72b-q4-cpu"),
                (_LLAMA_70B_Q4, "XL-LOC-FRE-llama3.1-70b-q4-cpu"),
                ("granite-embedding", "S-LOC-FRE-granite-embed"),
            ),
        },
    ),
    (
        "ser9",
        {
            "role": "NPU experiments (AMD XDNA 2), CPU fallback",
            "hardware": {
                "cpu": "AMD Ryzen AI 9 HX 370",
                "cores": 12,
                "ram_gb": 32,
                "accelerators": [{"kind": "amd_npu", "model": "XDNA 2"}],
            },
            "models": _ollama(
                ("phi3.5:3.8b", "S-LOC-FRE-phi3.5-3.8b-npu"),
                ("llama3.2:3b", "S-LOC-FRE-llama3.2-3b-npu"),
                ("qwen2.5:14b", "M-LOC-FRE-qwen2.5-14b"),
                ("mistral:7b", "S-LOC-FRE-mistral-7b"),
            ),
        },
    ),
    (
        "atomman-x7-ti",
        {
            "role": "NPU experiments (Intel, OpenVINO), mid-tier models",
            "hardware": {
                "cpu": "Intel Core Ultra 9 185H",
                "cores": 16,
                "ram_gb": 32,
                "accelerators": [{"kind": "intel_npu", "model": "Intel AI Boost"}],
            },
            "models": _ollama(
                ("phi3.5:3.8b", "S-LOC-FRE-phi3.5-3.8b-intel-npu"),
                ("llama3.2:3b", "S-LOC-FRE-llama3.2-3b-intel-npu"),
                ("qwen2.5:14b", "M-LOC-FRE-qwen2.5-14b"),
                ("codellama:13b", "M-LOC-FRE-codellama-13b"),
                ("nomic-embed-text", "S-LOC-FRE-nomic-embed-text"),
            ),
        },
    ),
    (
        "mac-mini-m4-pro",
        {
            "role": "Metal-accelerated models",
            "os": "macos",
            "arch": "aarch64",
            "hardware": {
                "cpu": "Apple M4 Pro",
                "cores": 12,
                "ram_gb": 24,
                "accelerators": [{"kind": "apple_metal", "model": "M4 Pro"}],
            },
            "models": _ollama(
                ("qwen2.5:14b", "M-LOC-FRE-qwen2.5-14b-metal"),
                ("llama3.2:3b", "S-LOC-FRE-llama3.2-3b-metal"),
                ("phi3.5:3.8b", "S-LOC-FRE-phi3.5-metal"),
                ("nomic-embed-text", "S-LOC-FRE-nomic-embed-text"),
                # M Vision's backup 2 (the redundancy map: Mac Mini after Old-Office-PC).
                ("llama3.2-vision:11b", "M-LOC-FRE-llama3.2-vision-11b", 3),
            ),
        },
    ),
    (
        "ms01",
        {
            # The plan says "RAM TBD - assume 32-64GB": the lower figure keeps the check honest.
            "role": "mid-tier general purpose",
            "hardware": {"cpu": "Intel Core i9-12900H", "cores": 14, "ram_gb": 32},
            "models": _ollama(
                ("qwen2.5:14b", "M-LOC-FRE-qwen2.5-14b"),
                ("codellama:13b", "M-LOC-FRE-codellama-13b"),
                ("mistral-nemo:12b", "M-LOC-FRE-mistral-nemo-12b"),
                ("llama3.2:3b", "S-LOC-FRE-llama3.2-3b"),
                ("deepseek-r1:8b", "S-LOC-FRE-deepseek-r1-8b"),
            ),
        },
    ),
    (
        "borgcube",
        {
            "role": "small to mid models",
            "hardware": {"cpu": "Intel Core i5-12400", "cores": 6, "ram_gb": 32},
            "models": _ollama(
                ("qwen2.5:7b", "S-LOC-FRE-qwen2.5-7b"),
                ("mistral:7b", "S-LOC-FRE-mistral-7b"),
                ("phi3.5:3.8b", "S-LOC-FRE-phi3.5-3.8b"),
                ("nomic-embed-text", "S-LOC-FRE-nomic-embed-text"),
            ),
        },
    ),
    (
        "retromac",
        {
            "role": "tiny models only",
            "hardware": {"cpu": "AMD Ryzen 3 3200U", "cores": 2, "ram_gb": 16},
            "models": _ollama(
                ("tinyllama:1.1b", "XS-LOC-FRE-tinyllama-1.1b"),
                # The plan's "phi-2:2.7b": Phi-2 is "phi" in Ollama's library.
                ("phi:2.7b", "S-LOC-FRE-phi-2-2.7b"),
                ("llama3.2:1b", "XS-LOC-FRE-llama3.2-1b"),
                ("nomic-embed-text", "S-LOC-FRE-nomic-embed-text"),
            ),
        },
    ),
]

# Seed 004's performance table, where the hardware can reach it. Its other rows cannot be
# met, and the planner refuses them (tests/unit/test_inventories.py holds each refusal):
# "RTX 5090, 70B+: 20-30 tok/s" (qwen2.5:72b, llama3.2-vision:90b and deepseek-coder-v2:236b
# do not fit in 32 GB of VRAM: <= 5 tok/s), "RTX 2080S, 30B Q4: 10-15" (<= 4 tok/s with 23 of
# 64 layers on its 8 GB), "Intel CPU, 7-14B: 8-12" for the 12-14B models on DDR4 (<= 7 tok/s).
_SPEEDS = {
    # Tier 2, "AI Max+ CPU, 70B Q4: 5-10".
    "gtr9-pro": (5, (_QWEN_72B_Q4, _LLAMA_70B_Q4)),
    "evo-x2": (5, (_QWEN_72B_Q4,)),
    "ms-s1": (5, (_QWEN_72B_Q4, _LLAMA_70B_Q4)),
    # Tier 3, "NPU, 3-14B: 20-40" (the 3-4B models; the CPU does the work for now).
    "ser9": (20, ("phi3.5:3.8b", "llama3.2:3b")),
    "atomman-x7-ti": (20, ("phi3.5:3.8b", "llama3.2:3b")),
    # Tier 4, "M4 Pro, 3-14B: 15-25".
    "mac-mini-m4-pro": (15, ("qwen2.5:14b", "llama3.2:3b", "phi3.5:3.8b")),
    # Tier 5, "Intel CPU, 7-14B: 8-12" (the 7-8B models).
    "ms01": (8, ("deepseek-r1:8b",)),
    "borgcube": (8, ("qwen2.5:7b", "mistral:7b")),
}
for _name, _data in cpu_nodes:
    if _name in _SPEEDS:
        _claimed(_SPEEDS[_name][0], _data["models"], *_SPEEDS[_name][1])  # type: ignore[arg-type]

_PI5 = {"cpu": "Broadcom BCM2712 (Raspberry Pi 5)", "cores": 4, "ram_gb": 8}

orchestrator = [
    (
        "pi5l",
        {
            "ssh_hostname": "10.0.0.111",
            "lan_address": "10.0.0.111",
            "tailscale_address": "100.77.119.64",
            "tailscale_name": f"pi5l.{_TAILNET}",
            "role": "orchestrator: LiteLLM, PostgreSQL, Redis, Prometheus, Grafana; no models",
            "os": "raspios",
            "arch": "aarch64",
            "hardware": _PI5,
            "gateway": {"clients": {"laptop": "vault:kv/gpufleet/gateway#laptop"}},
            "grafana": {"enabled": True},
            # Alerts posted to a relay that pages a phone; its URL holds a token you put in Vault.
            "alertmanager": {
                "webhooks": [{"name": "pager", "url": "vault:kv/gpufleet/alertmanager#pager_url"}]
            },
            # The router's API on the tailnet too, with Tailscale's certificate.
            "tailscale": {"enabled": True, "serve_router": True},
            "litellm": {
                # Seed 004's redundancy map. A placement's priority makes the same alias's
                # backup 1 and 2 on other hosts; these carry a category to other aliases
                # (another model or quantization), and to the cloud last.
                "fallbacks": {
                    # XL Code: Akshat-PC, GTR9-Pro (CPU), EVO-X2 (CPU), then the cloud.
                    "XL-LOC-FRE-deepseek-coder-236b": (
                        "XL-LOC-FRE-qwen2.5-coder-32b",
                        "XL-LOC-FRE-qwen2.5-coder-32b.backup1",
                        "XL-LOC-FRE-qwen2.5-coder-32b.backup2",
                        "XL-CLD-PAY-claude-opus-4.5",
                    ),
                    "XL-LOC-FRE-qwen2.5-coder-32b": (
                        "XL-LOC-FRE-qwen2.5-coder-32b-q4",
                        "XL-CLD-PAY-claude-opus-4.5",
                    ),
                    # XL Vision: Akshat-PC, Old-Office-PC's smaller vision model, the cloud.
                    "XL-LOC-FRE-llama3.2-vision-90b": (
                        "XL-LOC-FRE-llava-34b",
                        "M-LOC-FRE-llama3.2-vision-11b.backup1",
                        "XL-CLD-PAY-gpt-4o",
                    ),
                    "XL-LOC-FRE-llava-34b": (
                        "M-LOC-FRE-llama3.2-vision-11b.backup1",
                        "XL-CLD-PAY-gpt-4o",
                    ),
                    # Qwen 2.5 72B on the GPU and its Q4 copies on the three CPU boxes.
                    "XL-LOC-FRE-qwen2.5-72b": (
                        "XL-LOC-FRE-qwen2.5-72b-q4-cpu",
                        "XL-CLD-PAY-claude-opus-4.5",
                    ),
                    "XL-LOC-FRE-qwen2.5-72b-q4-cpu": (
                        "XL-LOC-FRE-qwen2.5-72b",
                        "XL-CLD-PAY-claude-opus-4.5",
                    ),
                    "XL-LOC-FRE-llama3.1-70b-q4-cpu": (
                        "XL-LOC-FRE-qwen2.5-72b-q4-cpu",
                        "XL-CLD-PAY-claude-opus-4.5",
                    ),
                    # L Code: Akshat-PC, Old-Office-PC, MS01, then the cloud.
                    "L-LOC-FRE-codestral-22b": (
                        "XL-LOC-FRE-qwen2.5-coder-32b-q4",
                        "M-LOC-FRE-codellama-13b",
                        "M-CLD-PAY-claude-sonnet-4.5",
                    ),
                    # M Vision: Akshat-PC, Old-Office-PC, Mac Mini (priorities), the cloud.
                    "M-LOC-FRE-llama3.2-vision-11b": ("M-CLD-PAY-gemini-flash-2.0",),
                    # S Fast: served by several hosts each; the cloud when all are down.
                    "S-LOC-FRE-llama3.2-3b": ("S-CLD-PAY-gpt-4o-mini",),
                    "S-LOC-FRE-mistral-7b": ("S-CLD-PAY-claude-haiku-4.5",),
                },
                # The plan's seven paid models, as declared here only; their keys go into
                # Vault by hand.
                "cloud_models": [
                    _cloud("XL-CLD-PAY-claude-opus-4.5", "anthropic/claude-opus-4-5"),
                    _cloud("XL-CLD-PAY-gpt-4o", "openai/gpt-4o"),
                    _cloud("XL-CLD-PAY-o1", "openai/o1"),
                    _cloud("M-CLD-PAY-claude-sonnet-4.5", "anthropic/claude-sonnet-4-5"),
                    _cloud("M-CLD-PAY-gemini-flash-2.0", "gemini/gemini-2.0-flash"),
                    _cloud("S-CLD-PAY-gpt-4o-mini", "openai/gpt-4o-mini"),
                    _cloud("S-CLD-PAY-claude-haiku-4.5", "anthropic/claude-haiku-4-5"),
                ],
                # Routing state in Redis and LiteLLM's keys, users and spend in PostgreSQL,
                # both on this Pi (seed 004's Pi5L stack).
                "redis": {"enabled": True},
                "database": {"enabled": True},
            },
        },
    ),
]

# The eleven other Pis: node exporters, log aggregation, health checks, backups; no models.
infra = [
    (
        f"pi5-{n:02d}",
        {"os": "raspios", "arch": "aarch64", "role": "infrastructure", "hardware": _PI5},
    )
    for n in range(1, 12)
]

# Every machine is on the tailnet (seed 004: everything is reached over Tailscale); the
# auth key is one you make in Tailscale's admin console and store in Vault yourself.
for _name, _data in [*gpu_nodes, *cpu_nodes, *orchestrator, *infra]:
    _data.setdefault("tailscale", {"enabled": True})

gateway = ["pi5l"]
router = ["pi5l"]
monitoring = ["pi5l"]
vault = ["pi5l"]
proxmox_hosts: list[str] = []
edge: list[str] = []

check_inventory(__file__)
