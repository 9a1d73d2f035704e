"""Proxmox VE: the host's NVIDIA GPUs shared with LXC containers.

Runbook it replaces: install the driver on the host; load nvidia and nvidia-uvm at boot and
create their device nodes (nothing on the host opens the GPU, so nothing else would); read
the device majors the driver got; allow and bind-mount the devices in each container's
config, keeping the lines the user wrote.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import File
from pyinfra.operations import files, server

from gpufleet.facts.gpu import NvidiaDeviceMajors, require_gpu, uvm_major
from gpufleet.models import HostSpec, ProxmoxHost
from gpufleet.operations import proxmox
from gpufleet.paths import template

PVE_SOURCES = "/etc/apt/sources.list.d/gpufleet-pve.sources"
PVE_KEYRINGS = {
    "bookworm": "/etc/apt/trusted.gpg.d/proxmox-release-bookworm.gpg",
    "bullseye": "/etc/apt/trusted.gpg.d/proxmox-release-bullseye.gpg",
}
"""Where the Proxmox VE installer puts the release key (pve-docs, "SecureApt"); from PVE 9
on it is the proxmox-archive-keyring package's file."""
PVE_ARCHIVE_KEYRING = "/usr/share/keyrings/proxmox-archive-keyring.gpg"
ENTERPRISE_LISTS = (
    "/etc/apt/sources.list.d/pve-enterprise.list",
    "/etc/apt/sources.list.d/ceph.list",
)
"""The installer's enterprise entries (PVE 8): without a subscription key their ``apt-get
update`` fails with 401, and every apt step after it."""
ENTERPRISE_LINE = r"^(deb .*enterprise\.proxmox\.com.*)$"


def proxmox_repository(spec: HostSpec, codename: str) -> list[OperationMeta]:
    """The Proxmox VE repository the inventory names (``proxmox.repository``), beside the
    Debian sources the baseline writes: the kernel headers the NVIDIA driver is built against
    come from it. Returns the operations whose change calls for an apt refresh."""
    settings = spec.proxmox or ProxmoxHost()
    if settings.repository == "pve-enterprise":
        host.noop(
            "proxmox.repository is pve-enterprise: the installer's pve-enterprise.list is "
            "kept as it is (it needs a subscription key)"
        )
        return [
            files.file(
                name="Remove gpufleet's pve-no-subscription source", path=PVE_SOURCES, present=False
            )
        ]
    changed = [
        files.template(
            name="Proxmox VE pve-no-subscription repository",
            src=template("apt/repository.sources.j2"),
            dest=PVE_SOURCES,
            mode="644",
            repository="Proxmox VE pve-no-subscription",
            uri=settings.repo_url,
            suite=codename,
            components=["pve-no-subscription"],
            keyring=PVE_KEYRINGS.get(codename, PVE_ARCHIVE_KEYRING),
        )
    ]
    for path in ENTERPRISE_LISTS:
        if host.get_fact(File, path=path):
            # Commented out, as the web interface's "Disable" does: kept for a later key.
            changed.append(
                files.replace(
                    name=f"Disable the enterprise repository in {path} (no subscription)",
                    path=path,
                    text=ENTERPRISE_LINE,
                    replace=r"# \1",
                    extended_regex=True,
                )
            )
    return changed


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
