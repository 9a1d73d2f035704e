"""A single AI desktop, a Proxmox laptop host and a Jetson edge node.

The AI desktop (Ryzen 9 9900X, RTX 5070 Ti 16 GB, 128 GB) serves an 8B model through vLLM in
FP8 and a 3B model through llama.cpp on the CPU; the XPS 15 runs Proxmox with the gateway,
Vault and Prometheus containers and a llama.cpp container on its GTX 1650; the Jetson Orin
Nano Super serves a 1B model at the edge. The earlier Proxmox desktop (i7-8700, 32 GB,
RTX 5070 Ti) carries the models its tests validated.

Left out because they cannot work: Llama 3.3 70B through vLLM on the 16 GB card (about 39 GB
of weights at 4 bits, and vLLM cannot offload to RAM), and the claimed 30-40 tok/s for it.
Validate and plan only: ``gpufleet validate inventory/examples/proxmox_desktop.py``.
"""

from gpufleet.inventory import check_inventory

gpu_nodes = [
    (
        "schlimers-server",
        {
            "role": "AI desktop: vLLM on the GPU, llama.cpp on the CPU",
            "os": "ubuntu",
            "hardware": {
                "cpu": "AMD Ryzen 9 9900X",
                "cores": 12,
                "ram_gb": 128,
                "accelerators": [{"kind": "nvidia", "model": "RTX 5070 Ti"}],
            },
            # Blackwell: branch 570+ with NVIDIA's open kernel modules.
            "nvidia_driver": {"source": "ubuntu-open", "version": "575.64.05"},
            "vllm": {"gpu_memory_utilization": 0.80},
            "llamacpp": {"gpu_layers": 0},  # the GPU is vLLM's; llama.cpp serves from the CPU
            "models": [
                {
                    "model": "llama3.1:8b",
                    "engine": "vllm",
                    "source": "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8",
                    "quant": "FP8",
                    "gpus": 1,
                    "context": 16384,
                    "alias": "M-LOC-FRE-llama3.1-8b-fp8",
                },
                {
                    "model": "llama3.2:3b",
                    "engine": "llama.cpp",
                    "source": "/srv/models/Llama-3.2-3B-Instruct-Q4_K_M.gguf",
                    "quant": "Q4_K_M",
                    "context": 8192,
                    "alias": "S-LOC-FRE-llama3.2-3b",
                },
            ],
            "secrets": {
                "vllm_api_key": "vault:kv/gpufleet/vllm#api_key",
                "llamacpp_api_key": "vault:kv/gpufleet/llamacpp#api_key",
            },
            # Triton (the write-ups' Must-Have) beside vLLM: an ONNX embedding model in the
            # GPU memory vLLM leaves; its ports moved off vLLM's 8000.
            "triton": {
                "enabled": True,
                "http_port": 8010,
                "grpc_port": 8011,
                "metrics_port": 8012,
                "models": [
                    {
                        "name": "bge-small-en-v1.5",
                        "backend": "onnxruntime",
                        "source": "/srv/models/bge-small-en-v1.5/model.onnx",
                        "max_batch_size": 32,
                    }
                ],
            },
        },
    ),
    (
        "proxmox-homelab",
        {
            "role": "Proxmox host with the RTX 5070 Ti passed to a container",
            "os": "proxmox",
            "hardware": {
                "cpu": "Intel Core i7-8700",
                "cores": 6,
                "ram_gb": 32,
                "accelerators": [{"kind": "nvidia", "model": "RTX 5070 Ti"}],
            },
            "nvidia_driver": {"source": "cuda", "version": "575.64.05"},
            "models": [
                {"model": "llama3.2:3b", "alias": "S-LOC-FRE-llama3.2-3b"},
                {"model": "deepseek-coder:6.7b", "alias": "S-LOC-FRE-deepseek-coder-6.7b"},
                # Fits in VRAM + RAM, but took over 7 minutes per answer: batch work only.
                {"model": "deepseek-coder:33b", "alias": "L-LOC-FRE-deepseek-coder-33b"},
            ],
        },
    ),
]

proxmox_hosts = [
    (
        "xps15",
        {
            "ssh_hostname": "192.168.1.15",
            "lan_address": "192.168.1.15",
            "role": "Proxmox: NGINX, Vault, Prometheus/Grafana containers; llama.cpp on GTX 1650",
            "os": "proxmox",
            "hardware": {
                "cpu": "Intel Core i9-9980HK",
                "cores": 8,
                "ram_gb": 64,
                "accelerators": [{"kind": "nvidia", "model": "GTX 1650"}],
            },
            "nvidia_driver": {"version": "535.261.03"},
            # LXC 7, the llama.cpp container, gets the GTX 1650.
            "proxmox": {"lxc": [{"vmid": 107}]},
            "gateway": {"clients": {"desktop": "vault:kv/gpufleet/gateway#desktop"}},
            "models": [
                {
                    "model": "llama3.2:1b",
                    "engine": "llama.cpp",
                    "source": "/srv/models/Llama-3.2-1B-Instruct-Q4_K_M.gguf",
                    "context": 4096,
                    "alias": "XS-LOC-FRE-llama3.2-1b",
                },
            ],
        },
    ),
]

edge = [
    (
        "jetson-orin-nano",
        {
            "ssh_hostname": "192.168.100.50",
            "lan_address": "192.168.100.50",
            "role": "edge inference, small models only",
            "os": "jetson-l4t",
            "arch": "aarch64",
            "hardware": {
                "cpu": "Arm Cortex-A78AE",
                "cores": 6,
                "ram_gb": 8,
                "accelerators": [{"kind": "jetson", "model": "Jetson Orin Nano Super"}],
            },
            "models": [
                {
                    "model": "llama3.2:1b",
                    "engine": "llama.cpp",
                    "source": "/srv/models/Llama-3.2-1B-Instruct-Q4_K_M.gguf",
                    "alias": "XS-LOC-FRE-llama3.2-1b",
                },
            ],
            "secrets": {"llamacpp_api_key": "vault:kv/gpufleet/llamacpp#api_key"},
        },
    ),
]

gateway = ["xps15"]
router = ["xps15"]
vault = ["xps15"]
monitoring = ["xps15"]

check_inventory(__file__)
