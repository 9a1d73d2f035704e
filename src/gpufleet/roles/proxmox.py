"""Proxmox VE: the host's NVIDIA GPUs shared with LXC containers.

Runbook it replaces: install the driver on the host; load nvidia and nvidia-uvm at boot and
create their device nodes (nothing on the host opens the GPU, so nothing else would); read
the device majors the driver got; allow and bind-mount the devices in each container's
config, keeping the lines the user wrote.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server

from gpufleet.facts.gpu import NvidiaDeviceMajors, require_gpu, uvm_major
from gpufleet.models import HostSpec
from gpufleet.operations import proxmox
from gpufleet.paths import template


@deploy("Proxmox GPU passthrough")
def lxc_gpu_passthrough(spec: HostSpec) -> None:
    """
    Make the NVIDIA devices exist at boot and pass them to the containers the host data lists.

    .. code:: python

        lxc_gpu_passthrough(host_spec())
    """
    if spec.proxmox is None or not spec.proxmox.lxc:
        host.noop("no containers listed under proxmox.lxc: nothing to pass through")
        return
    require_gpu(
        spec.nvidia_driver.force,
        "proxmox.lxc",
        "no container can get one: fit the card, or remove the containers from proxmox.lxc",
    )

    modules = files.template(
        name="Load nvidia and nvidia-uvm at boot",
        src=template("proxmox/modules-load-nvidia.conf.j2"),
        dest="/etc/modules-load.d/gpufleet-nvidia.conf",
        mode="644",
    )
    rules = files.template(
        name="Create /dev/nvidia-uvm at boot (udev)",
        src=template("proxmox/70-nvidia-uvm.rules.j2"),
        dest="/etc/udev/rules.d/70-gpufleet-nvidia-uvm.rules",
        mode="644",
    )
    server.shell(
        name="Reload udev rules",
        commands=["if systemctl is-active -q systemd-udevd; then udevadm control --reload; fi"],
        _if=lambda: modules.did_change() or rules.did_change(),
    )

    majors = spec.proxmox.device_majors or host.get_fact(NvidiaDeviceMajors)
    if uvm_major(majors) is None:
        host.noop(
            "nvidia-uvm is not loaded yet (no major in /proc/devices): container configs are "
            "written on the first run after the driver's reboot"
        )
        return
    declared = spec.hardware.nvidia_gpu_count
    for container in spec.proxmox.lxc:
        gpus = list(container.gpus) if container.gpus is not None else list(range(declared))
        proxmox.lxc_gpu_passthrough(
            name=f"Pass GPUs {gpus} to container {container.vmid}",
            vmid=container.vmid,
            gpus=gpus,
            majors=majors,
            every_gpu=container.gpus is None,
            conf_dir=spec.proxmox.conf_dir,
        )
