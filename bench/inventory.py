"""Bench hosts for bench/converge.py: GPUFLEET_BENCH_HOSTS (default 8) plain Debian 12 hosts
in the lab network, made by `gpufleet lab up bench/inventory.py`. The baseline is what both
gpufleet and the Ansible playbook converge here. GPUFLEET_BENCH_FIREWALL=off leaves the
nftables allow-list out (``firewall.enabled: false``): the allow-list's reload has been seen
to fail on some of 8 hosts converged at once on a loaded 2-core machine, cause not yet found."""

import os as _os

from gpufleet.inventory import check_inventory
from gpufleet.lab import connection

_COUNT = int(_os.environ.get("GPUFLEET_BENCH_HOSTS", "8"))
_FIREWALL = _os.environ.get("GPUFLEET_BENCH_FIREWALL", "on") != "off"

cpu_nodes = [
    (
        f"bench-{n}",
        {
            **connection(f"10.200.0.{30 + n}"),
            "role": "bench host: baseline only",
            "hardware": {"cpu": "virtual", "cores": 2, "ram_gb": 2},
            "firewall": {"enabled": _FIREWALL},
        },
    )
    for n in range(1, _COUNT + 1)
]

check_inventory(__file__)
