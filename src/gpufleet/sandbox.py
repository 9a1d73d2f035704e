"""The systemd sandbox of every unit gpufleet writes: one set of hardening lines, with what
each service needs on top (the folders it writes, its devices, a capability), so that a
process that goes wrong reaches no more of the host than its job needs. Pure logic.

Example::

    >>> sandbox = service_sandbox(writable=("/var/lib/vault",), capabilities=("CAP_IPC_LOCK",))
    >>> print(sandbox.service)  # doctest: +ELLIPSIS
    # Sandbox: ...
    NoNewPrivileges=yes
    ...
    ReadWritePaths=/var/lib/vault
    ...
    CapabilityBoundingSet=CAP_IPC_LOCK
    ...

``systemd-analyze security`` rates every unit written with it at 4.9 or below, a GPU or
container unit at 6.9 or below (tests/unit/test_sandbox.py renders each one and checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from gpufleet.models import HostSpec

Devices = Literal["none", "nvidia", "tegra", "amd", "docker"]
"""What a unit reaches of the hardware: nothing (a private /dev), an NVIDIA GPU, a Jetson's
integrated GPU, an AMD GPU (ROCm or Vulkan), or nothing itself but the Docker daemon that
runs its container."""

NVIDIA_DEVICES = (
    # rwm: the privileged start step below creates missing nodes (mknod); the service itself
    # has no CAP_MKNOD, so it only reads and writes them.
    "char-nvidia-frontend rwm",  # /dev/nvidia0…, /dev/nvidiactl, /dev/nvidia-modeset
    "char-nvidia-uvm rwm",  # /dev/nvidia-uvm, /dev/nvidia-uvm-tools: CUDA's unified memory
    "char-nvidia-caps rw",  # /dev/nvidia-caps/*: MIG instances
    "char-drm rw",  # /dev/dri/*
)
"""The device classes of /proc/devices that CUDA opens on a host with NVIDIA's driver. A
class is looked up when the unit starts: nvidia-uvm must be loaded by then (NVIDIA_UNIT)."""
NVIDIA_UNIT = (
    "# CUDA's unified memory module, loaded before the sandbox's device list is looked up.",
    "Wants=modprobe@nvidia-uvm.service",
    "After=modprobe@nvidia-uvm.service",
)
NVIDIA_MODPROBE = "/usr/bin/nvidia-modprobe"
"""Creates the GPUs' device nodes (``-c MINOR``) and nvidia-uvm's (``-u -c0``). CUDA runs it
itself through its setuid bit, which NoNewPrivileges= takes away from the service: so the unit
runs it first, privileged ("+"), and goes on without it where it is missing ("-": a
container's driver user space, whose nodes its host provides)."""
TEGRA_DEVICES = (
    "char-nvhost* rw",  # /dev/nvhost-*: the GPU and its engines
    "char-nvgpu* rw",  # /dev/nvgpu/*: the GPU on newer Jetson Linux
    "char-host1x* rw",
    "/dev/nvmap rw",  # a misc device: allowed by path, not by its class (every misc device)
    "char-drm rw",
)
"""What CUDA and tegrastats open on a Jetson (Jetson Linux's integrated GPU)."""
AMD_DEVICES = ("char-kfd rw", "char-drm rw")
"""/dev/kfd (ROCm's compute queues) and /dev/dri/* (the render nodes; Vulkan)."""
GPU_DEVICES = {"nvidia": NVIDIA_DEVICES, "tegra": TEGRA_DEVICES, "amd": AMD_DEVICES}


@dataclass(frozen=True)
class Sandbox:
    """Lines for the unit's [Unit] section (often none) and for its [Service] section."""

    unit: str
    service: str


def service_sandbox(
    *,
    writable: tuple[str, ...] = (),
    devices: Devices = "none",
    capabilities: tuple[str, ...] = (),
    netlink: bool = False,
    home: Literal["yes", "read-only"] = "yes",
    jit: bool = False,
    resources: bool = False,
    gpus: int = 1,
) -> Sandbox:
    """The lines that sandbox a unit.

    ``writable``: the service's data and state folders, the only ones it may write (the rest
    of the file system is read-only; "-" before a path: fine while it does not exist).
    ``devices``: see :data:`Devices`. ``capabilities``: the bounding set (none by default).
    ``netlink``: the service lists the host's interfaces (Go's net package does, for some
    listeners). ``home``: "read-only" for a service that reads a file below /home or /root
    (a model the inventory names there, Docker's registry login). ``jit``: the service
    writes code it then runs (CUDA's loader, V8, libffi's closures), so W^X memory is not
    enforced. ``resources``: the service sets its own CPU affinity, NUMA policy or
    priorities (CUDA and the inference servers' thread pools), so those calls stay allowed.
    ``gpus``: how many NVIDIA GPUs have device nodes to create. A ``docker`` unit is a client
    of the Docker daemon: it needs neither devices nor a network of its own, only the
    daemon's socket.
    """
    docker = devices == "docker"
    families = ["AF_UNIX"] if docker else ["AF_INET", "AF_INET6", "AF_UNIX"]
    if netlink:
        families.append("AF_NETLINK")
    lines = [
        "# Sandbox: the file system read-only but for the folders below, no other home, private",
        "# temporary files, no kernel settings; a denied system call fails with EPERM.",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        *([f"ReadWritePaths={' '.join(writable)}"] if writable else []),
        "PrivateTmp=yes",
        f"ProtectHome={home}",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "RestrictNamespaces=yes",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "LockPersonality=yes",
        "UMask=0027",
        f"CapabilityBoundingSet={' '.join(capabilities)}",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged" + ("" if resources else " @resources"),
        "SystemCallErrorNumber=EPERM",
        f"RestrictAddressFamilies={' '.join(families)}",
        *([] if jit else ["MemoryDenyWriteExecute=yes"]),
    ]
    if docker:
        # The daemon publishes the container's ports; the client only talks to its socket.
        lines += ["PrivateNetwork=yes", "PrivateDevices=yes"]
    elif devices == "none":
        lines.append("PrivateDevices=yes")
    else:
        lines += [
            "# The GPU's devices and the standard pseudo-devices (/dev/null…), nothing else.",
            "PrivateDevices=no",
            "DevicePolicy=closed",
            *(f"DeviceAllow={device}" for device in GPU_DEVICES[devices]),
        ]
    if devices == "amd":
        # The render nodes and /dev/kfd belong to these groups (mode 0660), not to the
        # service's user.
        lines.append("SupplementaryGroups=render video")
    if devices == "nvidia":
        minors = " ".join(f"-c{minor}" for minor in range(max(gpus, 1)))
        lines += [
            f"ExecStartPre=-+{NVIDIA_MODPROBE} {minors}",
            f"ExecStartPre=-+{NVIDIA_MODPROBE} -u -c0",
        ]
    unit = NVIDIA_UNIT if devices == "nvidia" else ()
    return Sandbox(
        unit="".join(f"{line}\n" for line in unit),
        service="".join(f"{line}\n" for line in lines),
    )


# --- What each unit gpufleet writes needs --------------------------------------------------


def host_gpu(spec: HostSpec) -> Devices:
    """The GPU an inference server on this host opens, from its declared accelerators."""
    kinds = {a.kind for a in spec.hardware.accelerators}
    if "nvidia" in kinds:
        return "nvidia"
    if "jetson" in kinds or spec.os == "jetson-l4t":
        return "tegra"
    if kinds & {"amd_igpu", "amd_gpu"}:
        return "amd"
    return "none"


def llama_server(devices: Devices, model: str, gpus: int = 1) -> Sandbox:
    """llama-server writes nothing (its model is downloaded by the deploy); it reads a model
    the inventory names below /home. CUDA's loader wants W+X memory."""
    home: Literal["yes", "read-only"] = (
        "read-only" if model.startswith(("/home/", "/root/", "/run/user/")) else "yes"
    )
    gpu = devices != "none"
    return service_sandbox(devices=devices, home=home, jit=gpu, resources=True, gpus=gpus)


def rpc_server(devices: Devices) -> Sandbox:
    """ggml-rpc-server keeps the layers it is sent in memory and writes nothing (no ``-c``
    file cache); on a GPU it loads CUDA, which wants W+X memory."""
    gpu = devices != "none"
    return service_sandbox(devices=devices, home="read-only", jit=gpu, resources=True)


def ollama(devices: Devices, home: str, gpus: int = 1) -> Sandbox:
    """Ollama keeps its key and its models in its home (~/.ollama); its runners load CUDA."""
    gpu = devices != "none"
    return service_sandbox(
        writable=(home,), devices=devices, netlink=True, jit=gpu, resources=True, gpus=gpus
    )


def vllm(container: bool, home: str, data: str, gpus: int = 1) -> Sandbox:
    """vLLM in a venv writes its Hugging Face cache (``data``) and its compile caches below its
    user's home; NCCL and gloo list the interfaces. In a container it is a Docker client."""
    if container:
        return docker_client()
    return service_sandbox(
        writable=(f"-{data}", home),
        devices="nvidia",
        netlink=True,
        jit=True,
        resources=True,
        gpus=gpus,
    )


def docker_client() -> Sandbox:
    """``docker run`` in the foreground: the daemon runs the container (its devices, ports
    and limits); the client reads root's registry login and talks to the daemon's socket."""
    return service_sandbox(devices="docker", home="read-only")


def tegrastats(textfiles: str) -> Sandbox:
    """The exporter writes the node exporter's textfile folder; tegrastats reads the GPU."""
    return service_sandbox(writable=(textfiles,), devices="tegra")


def litellm(home: str) -> Sandbox:
    """LiteLLM writes below its home (Prisma's generated client and engines, its caches);
    Prisma's Node.js and cffi's callbacks want W+X memory."""
    return service_sandbox(writable=(home,), jit=True)


def vault(data: str, mlock: bool) -> Sandbox:
    """Vault or OpenBao writes its storage; with mlock it keeps CAP_IPC_LOCK."""
    return service_sandbox(
        writable=(data,), capabilities=("CAP_IPC_LOCK",) if mlock else (), netlink=True
    )
