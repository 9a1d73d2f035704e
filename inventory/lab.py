"""The local lab: real Debian 12 hosts that `gpufleet lab up` makes on this machine.

Every address lies in the lab network (10.200.0.0/24); the lab refuses any other. The hosts
declare no accelerators: they have none, and the GPU deploy must say so cleanly.
"""

from gpufleet.inventory import check_inventory
from gpufleet.lab import connection

gpu_nodes = [
    (
        "lab-gpu-1",
        {
            **connection("10.200.0.11"),
            "role": "GPU node stand-in: baseline + GPU detection (finds no GPU)",
            "hardware": {"cpu": "virtual", "cores": 2, "ram_gb": 4},
        },
    ),
]

cpu_nodes = [
    (
        "lab-infra-1",
        {
            **connection("10.200.0.12"),
            "role": "infrastructure stand-in: gateway, monitoring, vault",
            "hardware": {"cpu": "virtual", "cores": 2, "ram_gb": 4},
        },
    ),
]

gateway = ["lab-infra-1"]
monitoring = ["lab-infra-1"]
vault = ["lab-infra-1"]

check_inventory(__file__)
