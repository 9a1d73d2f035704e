"""Operations on a Proxmox VE host."""

from __future__ import annotations

from io import StringIO

from pyinfra import host, logger
from pyinfra.api import OperationError, operation
from pyinfra.facts.files import FileContents
from pyinfra.operations import files

from gpufleet.configs import ConfigError, merge_lxc_conf, passthrough_lines


@operation()
def lxc_gpu_passthrough(
    vmid: int,
    gpus: list[int],
    majors: dict[str, int],
    every_gpu: bool = True,
    conf_dir: str = "/etc/pve/lxc",
):
    """
    Give an LXC container the host's NVIDIA GPUs, editing its config in place.

    + vmid: the container's id; its config must exist (create the container first)
    + gpus: indexes of the GPUs to pass (``/dev/nvidia<N>``)
    + majors: the host's NVIDIA device majors (``NvidiaDeviceMajors``); nvidia-uvm's differs
      from host to host and is never assumed
    + every_gpu: the container gets all of the host's GPUs (one cgroup rule for major 195)
    + conf_dir: where the configs live

    Lines the user wrote stay as they are; only the passthrough lines are replaced. The
    container sees the change at its next start.

    .. code:: python

        proxmox.lxc_gpu_passthrough(vmid=107, gpus=[0], majors={"nvidia": 195, "nvidia-uvm": 509})
    """
    path = f"{conf_dir}/{vmid}.conf"
    lines = host.get_fact(FileContents, path=path)
    if lines is None:
        raise OperationError(
            f"{host.name}: {path} does not exist; create container {vmid} first "
            f"(pct create {vmid} ...) or fix proxmox.lxc[].vmid"
        )
    current = "\n".join(lines) + "\n"
    try:
        wanted, notes = merge_lxc_conf(current, passthrough_lines(gpus, majors, every_gpu), majors)
    except ConfigError as error:
        raise OperationError(f"{host.name}: container {vmid}: {error}") from None
    for note in notes:
        logger.warning(f"{host.print_prefix}{path}: {note}")
    if wanted == current:
        host.noop(f"container {vmid} already has GPUs {gpus}")
        return
    yield from files.put._inner(src=StringIO(wanted), dest=path)
