"""What the NVIDIA driver deploy installs, decided from the host data and facts. Pure logic.

Example::

    >>> driver_packages(NvidiaDriver(version="535.261.03"), "Debian")
    ['nvidia-kernel-dkms', 'nvidia-smi', 'libcuda1', 'libnvidia-ml1', 'firmware-nvidia-gsp',
     'nvidia-modprobe', 'nvidia-persistenced']
"""

from __future__ import annotations

import re

from gpufleet.catalogue import AcceleratorEntry
from gpufleet.models import NvidiaDriver

DISTRIBUTION_KERNEL = re.compile(
    r"^\d+\.\d+\.\d+-\d+-(?P<flavour>amd64|arm64|cloud-amd64|cloud-arm64|rt-amd64|rt-arm64|"
    r"generic|lowlatency|generic-64k|aws|azure|gcp|oracle)$"
)
"""Kernel releases whose headers the distribution ships as ``linux-headers-<release>``."""

HEADERS_META = {"x86_64": "amd64", "aarch64": "arm64"}

DEBIAN_HEADLESS = [
    "nvidia-kernel-dkms",
    "nvidia-smi",
    "libcuda1",
    "libnvidia-ml1",
    "firmware-nvidia-gsp",
]
DEBIAN_USERLAND = ["nvidia-smi", "libcuda1", "libnvidia-ml1"]
DEBIAN_KERNEL_MODULE = ["nvidia-kernel-dkms", "nvidia-open-kernel-dkms"]
NVIDIA_TOOLS = ["nvidia-modprobe", "nvidia-persistenced"]
"""Packaged apart from the driver (Debian's contrib) with their own version numbers."""

PINNED_PACKAGES = (
    "nvidia-* libnvidia-* libcuda1 libcudadebugging1 libnvcuvid1 libnvoptix1 "
    "firmware-nvidia-gsp xserver-xorg-video-nvidia cuda-drivers*"
)
"""Packages built from the driver's source: they must all carry the driver's version."""


def driver_packages(driver: NvidiaDriver, distribution: str) -> list[str]:
    """Packages that install the driver (kernel module and user space) from ``driver.source``."""
    branch = driver.effective_branch
    if driver.source in ("debian", "debian-backports"):
        if driver.flavour == "desktop":
            return ["nvidia-driver", "firmware-nvidia-gsp", *NVIDIA_TOOLS]
        return [*DEBIAN_HEADLESS, *NVIDIA_TOOLS]
    if driver.source in ("ubuntu", "ubuntu-open"):
        suffix = "-open" if driver.source == "ubuntu-open" else ""
        if driver.flavour == "desktop":
            return [f"nvidia-driver-{branch}-server{suffix}"]
        return [
            f"nvidia-headless-{branch}-server{suffix}",
            f"nvidia-utils-{branch}-server",
        ]
    return [f"cuda-drivers-{branch}"]


def userland_packages(driver: NvidiaDriver) -> list[str]:
    """Driver user space without the kernel module: for an LXC container using its host's
    module, at exactly the host's version."""
    branch = driver.effective_branch
    if driver.source in ("debian", "debian-backports"):
        return list(DEBIAN_USERLAND)
    if driver.source in ("ubuntu", "ubuntu-open"):
        return [f"nvidia-utils-{branch}-server", f"libnvidia-compute-{branch}-server"]
    return [f"nvidia-driver-{branch}-cuda", f"libnvidia-compute-{branch}"]


def kernel_module_packages(driver: NvidiaDriver) -> list[str]:
    """Packages that would build a kernel module: never wanted inside an LXC container."""
    branch = driver.effective_branch
    if driver.source in ("debian", "debian-backports"):
        return list(DEBIAN_KERNEL_MODULE)
    if driver.source in ("ubuntu", "ubuntu-open"):
        return [f"nvidia-dkms-{branch}-server", f"nvidia-dkms-{branch}-server-open"]
    return [f"nvidia-kernel-dkms-{branch}" if branch else "nvidia-kernel-dkms"]


def header_packages(running_kernel: str, arch: str, distribution: str) -> tuple[list[str], bool]:
    """Kernel headers DKMS needs: ``(packages, running_kernel_covered)``.

    The meta package keeps headers coming with every new kernel; the running kernel's own
    headers are added when it is a distribution kernel. A custom kernel, or a container's
    host kernel, has none to install: then the module is built for the installed kernels only.
    """
    meta = HEADERS_META.get(arch, "amd64")
    packages = [f"linux-headers-{meta}"] if distribution != "Ubuntu" else ["linux-headers-generic"]
    if DISTRIBUTION_KERNEL.match(running_kernel):
        return [*packages, f"linux-headers-{running_kernel}"], True
    return packages, False


def apt_pin(driver: NvidiaDriver) -> str | None:
    """An apt preferences stanza holding every package of the driver at ``driver.version``:
    an upgrade can then never leave the loaded module and the libraries at different
    versions ("Failed to initialize NVML: Driver/library version mismatch")."""
    if not driver.version:
        return None
    return f"Package: {PINNED_PACKAGES}\nPin: version {driver.version}-*\nPin-Priority: 1001\n"


def support_problem(entry: AcceleratorEntry, driver: NvidiaDriver) -> str | None:
    """Why ``driver`` cannot drive the ``entry`` GPU, with the fix; None when it can."""
    branch = driver.effective_branch
    if entry.min_driver and branch is not None and branch < entry.min_driver:
        return (
            f"driver branch {branch} does not support the {entry.name} (it needs "
            f"{entry.min_driver} or newer); pin a newer version, or use source 'cuda' with "
            f"branch {max(entry.min_driver, 570)}"
        )
    if entry.open_modules == "required" and driver.source in (
        "debian",
        "debian-backports",
        "ubuntu",
    ):
        return (
            f"the {entry.name} runs only on NVIDIA's open kernel modules, which source "
            f"{driver.source!r} does not install; use source 'cuda' or 'ubuntu-open'"
        )
    if entry.open_modules == "unsupported" and driver.source == "ubuntu-open":
        return (
            f"the {entry.name} is older than Turing and has no open kernel module; "
            "use source 'ubuntu'"
        )
    return None


def pin_problem(driver: NvidiaDriver) -> str | None:
    """The version or branch a source needs, when it is missing."""
    if driver.source in ("debian", "debian-backports") and not driver.version:
        return (
            "the driver is held at one version; set nvidia_driver.version, e.g. '535.261.03' "
            "(Debian 12's current nvidia-driver)"
        )
    if driver.source in ("ubuntu", "ubuntu-open", "cuda") and driver.effective_branch is None:
        return (
            f"source {driver.source!r} names packages by branch; set nvidia_driver.branch, "
            "e.g. 570, or nvidia_driver.version"
        )
    return None


def packages_off_pin(
    installed: dict[str, set[str]], packages: list[str], version: str | None
) -> list[str]:
    """Installed ``packages`` of the driver whose version is not ``version`` (an older or
    newer driver already on the host): apt must move them to the held version."""
    if not version:
        return []
    return sorted(
        package
        for package in packages
        if package not in NVIDIA_TOOLS
        and installed.get(package)
        and not any(v.startswith(f"{version}-") for v in installed[package])
    )
