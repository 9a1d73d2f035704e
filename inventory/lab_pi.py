"""An arm64 lab host standing in for the Raspberry Pi fleet: Debian 12 for arm64 (what
Raspberry Pi OS is built on) under QEMU's user-mode emulation, made by
`gpufleet lab up inventory/lab_pi.py` beside the main lab. It gets the baseline only, as the
twelve Pi 5s of inventory/homelab.py do.
"""

from gpufleet.inventory import check_inventory
from gpufleet.lab import connection

cpu_nodes = [
    (
        "lab-pi-1",
        {
            **connection("10.200.0.21"),
            "role": "Raspberry Pi 5 stand-in: arm64 Debian, baseline and node exporter",
            "arch": "aarch64",
            "hardware": {"cpu": "emulated Cortex-A76", "cores": 4, "ram_gb": 8},
            # QEMU's user-mode emulation has no netfilter netlink: nft cannot run here (a
            # real Pi's can). Its node exporter listens on loopback all the same.
            "firewall": {"enabled": False},
        },
    ),
]

check_inventory(__file__)
