"""An LXC container using its Proxmox host's GPUs: the driver's user space only.

The kernel module is the host's; the container needs nvidia-smi, libcuda and NVML at
exactly the host's driver version (a different version fails with "Driver/library version
mismatch") and must never build a module of its own.
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import apt

from gpufleet import nvidia
from gpufleet.inventory import spec_of
from gpufleet.models import HostSpec
from gpufleet.roles.nvidia_driver import hold_driver_version, move_to_held_version


@deploy("NVIDIA user space for an LXC container")
def nvidia_userland(spec: HostSpec) -> None:
    """
    Install the driver's user space at the Proxmox host's version, without a kernel module.

    .. code:: python

        nvidia_userland(host_spec())
    """
    assert spec.lxc_guest is not None
    proxmox_host = spec_of(spec.lxc_guest.proxmox_host)
    driver = proxmox_host.nvidia_driver
    hold_driver_version(driver)  # the host's version, not one of its own
    apt.packages(
        name="Remove kernel module packages (the host's module serves this container)",
        packages=nvidia.kernel_module_packages(driver),
        present=False,
    )
    packages = nvidia.userland_packages(driver)
    apt.packages(
        name=f"Install the driver's user space {driver.version or driver.effective_branch}",
        packages=packages,
        no_recommends=True,
    )
    move_to_held_version(packages, driver.version)
