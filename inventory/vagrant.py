"""The Vagrant lab: VMs that the top-level Vagrantfile makes, one per host here, at the same
names and addresses (a unit test keeps the two equal).

Its network is 10.201.0.0/24, the Vagrantfile's own; this machine is 10.201.0.1 there. The
nspawn lab (inventory/lab.py) holds 10.200.0.0/24, so the two never shadow each other's routes
and either can be up while the other runs.

vm-gpu-1 is a GPU node in a VM without a GPU, like the nspawn lab's lab-gpu-1: it declares no
card, so the NVIDIA driver and Container Toolkit are skipped with a note; the baseline (with
its firewall, time sync and node exporter) and Docker are installed and run on a real kernel
with systemd as PID 1. ``make vagrant-test`` converges deploys/gpu_node.py on it twice and runs
``gpufleet verify`` against it (docs/vagrant.md).

    vagrant up --provider=libvirt
    pyinfra inventory/vagrant.py deploys/gpu_node.py
    gpufleet verify inventory/vagrant.py --suite baseline gpu_node
"""

from gpufleet import lab as _lab  # module-level names would read as inventory groups
from gpufleet.inventory import check_inventory

_THIS_MACHINE = "10.201.0.1"
"""Where libvirt's network for the Vagrantfile's private addresses puts this machine."""


def _vm(address: str) -> dict[str, object]:
    """SSH as root with the lab's key (the Vagrantfile installs its public half), with this
    machine as the admin the firewall lets reach every service."""
    return {
        **_lab.connection(address),
        "fleet_ca_dir": str(_lab.lab_dir() / "ca"),
        "firewall": {"admin_sources": [f"{_THIS_MACHINE}/32"]},
    }


gpu_nodes = [
    (
        "vm-gpu-1",
        {
            **_vm("10.201.0.11"),
            "role": "GPU node in a VM without a GPU: driver and toolkit skipped, Docker runs",
            "hardware": {"cpu": "virtual", "cores": 2, "ram_gb": 2},
        },
    ),
]

check_inventory(__file__)
