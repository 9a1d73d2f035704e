"""What the NVIDIA driver deploy installs, decided from the host data and facts. Pure logic.

Example::

    >>> driver_packages(NvidiaDriver(version="535.261.03"), "Debian", open_modules=False)
    ['nvidia-kernel-dkms', 'nvidia-smi', 'libcuda1', 'libnvidia-ml1', 'firmware-nvidia-gsp',
     'nvidia-modprobe', 'nvidia-persistenced']
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpufleet.catalogue import AcceleratorEntry, Catalogue, fleet_catalogue

if TYPE_CHECKING:  # models import the engines, which ask this module about CUDA toolkits
    from gpufleet.models import HostSpec, NvidiaDriver

DISTRIBUTION_KERNEL = re.compile(
    r"^\d+\.\d+\.\d+-\d+-(?P<flavour>amd64|arm64|cloud-amd64|cloud-arm64|rt-amd64|rt-arm64|"
    r"generic|lowlatency|generic-64k|aws|azure|gcp|oracle)$"
)
"""Kernel releases whose headers the distribution ships as ``linux-headers-<release>``."""

PROXMOX_KERNEL = re.compile(r"^(?P<version>\d+\.\d+\.\d+-\d+)-pve$")
"""Proxmox VE kernel releases (``6.8.12-4-pve``): headers ``proxmox-headers-<release>``."""
PROXMOX_RENAMED = (6, 2, 16, 6)
"""The first Proxmox kernel ABI packaged as ``proxmox-*`` (proxmox-kernel-6.2 6.2.16-7's
changelog: "change pve- prefix to proxmox-", "bump ABI to 6.2.16-6"); older kernels' headers
are ``pve-headers-<release>``."""

HEADERS_META = {"x86_64": "amd64", "aarch64": "arm64"}
UBUNTU_GA_KERNEL = {"20.04": "5.4", "22.04": "5.15", "24.04": "6.8"}
"""The kernel series an Ubuntu LTS release ships with; a newer running series is the HWE
kernel, whose headers follow ``linux-headers-generic-hwe-<release>``."""

DEBIAN_HEADLESS = [
    "nvidia-kernel-dkms",
    "nvidia-smi",
    "libcuda1",
    "libnvidia-ml1",
    "firmware-nvidia-gsp",
]
DEBIAN_USERLAND = ["nvidia-smi", "libcuda1", "libnvidia-ml1"]
DEBIAN_KERNEL_MODULE = ["nvidia-kernel-dkms", "nvidia-open-kernel-dkms"]
"""Debian's proprietary and open module packages (the open one: NVIDIA's open GPU kernel
modules, Turing and newer)."""
CUDA_REPO_KERNEL_MODULE = ["nvidia-kernel-dkms", "nvidia-kernel-open-dkms"]
"""The same two as NVIDIA's CUDA repository for Debian names them."""
NVIDIA_TOOLS = ["nvidia-modprobe", "nvidia-persistenced"]
"""Packaged apart from the driver (Debian's contrib) with their own version numbers."""

PINNED_PACKAGES = (
    "nvidia-* libnvidia-* libcuda1 libcudadebugging1 libnvcuvid1 libnvoptix1 "
    "firmware-nvidia-gsp xserver-xorg-video-nvidia cuda-drivers*"
)
"""Packages built from the driver's source: they must all carry the driver's version."""


def uses_open_modules(driver: NvidiaDriver, cards: Iterable[AcceleratorEntry]) -> bool:
    """Whether the driver is installed with NVIDIA's open kernel modules: asked for
    (``modules: open``, source ``ubuntu-open``), or, with ``modules: auto``, because one of
    the host's cards runs on nothing else (Blackwell)."""
    if driver.source == "ubuntu-open" or driver.modules == "open":
        return True
    if driver.modules == "proprietary":
        return False
    return any(card.open_modules == "required" for card in cards)


def driver_packages(driver: NvidiaDriver, distribution: str, open_modules: bool) -> list[str]:
    """Packages that install the driver (kernel module and user space) from ``driver.source``,
    with the open kernel modules or the proprietary ones."""
    branch = driver.effective_branch
    if driver.source in ("debian", "debian-backports"):
        module = DEBIAN_KERNEL_MODULE[1 if open_modules else 0]
        if driver.flavour == "desktop":
            # nvidia-driver depends on either module package; naming one picks it.
            return ["nvidia-driver", module, "firmware-nvidia-gsp", *NVIDIA_TOOLS]
        return [module, *DEBIAN_HEADLESS[1:], *NVIDIA_TOOLS]
    if driver.source in ("ubuntu", "ubuntu-open"):
        suffix = "-open" if open_modules else ""
        if driver.flavour == "desktop":
            return [f"nvidia-driver-{branch}-server{suffix}"]
        return [
            f"nvidia-headless-{branch}-server{suffix}",
            f"nvidia-utils-{branch}-server",
        ]
    # NVIDIA's CUDA repository (Driver Installation Guide, Debian and Ubuntu): nvidia-open
    # for the open modules, cuda-drivers for the proprietary ones, each per branch.
    return [f"nvidia-open-{branch}" if open_modules else f"cuda-drivers-{branch}"]


def userland_packages(driver: NvidiaDriver) -> list[str]:
    """Driver user space without the kernel module: for an LXC container using its host's
    module, at exactly the host's version (the same whichever modules the host runs)."""
    branch = driver.effective_branch
    if driver.source in ("debian", "debian-backports"):
        return list(DEBIAN_USERLAND)
    if driver.source in ("ubuntu", "ubuntu-open"):
        return [f"nvidia-utils-{branch}-server", f"libnvidia-compute-{branch}-server"]
    return [f"nvidia-driver-{branch}-cuda", f"libnvidia-compute-{branch}"]


def kernel_module_packages(driver: NvidiaDriver) -> list[str]:
    """Packages that would build a kernel module, open or proprietary, as the source names
    them: never wanted inside an LXC container."""
    branch = driver.effective_branch
    if driver.source in ("debian", "debian-backports"):
        return list(DEBIAN_KERNEL_MODULE)
    if driver.source in ("ubuntu", "ubuntu-open"):
        return [f"nvidia-dkms-{branch}-server", f"nvidia-dkms-{branch}-server-open"]
    # The CUDA repository: Debian's names, and Ubuntu's (per branch).
    return [*CUDA_REPO_KERNEL_MODULE, f"nvidia-dkms-{branch}", f"nvidia-dkms-{branch}-open"]


def kernel_headers(release: str) -> str | None:
    """The package holding one kernel release's headers; None for a kernel no distribution
    ships (a custom build, a container's host kernel)."""
    proxmox = PROXMOX_KERNEL.match(release)
    if proxmox:
        abi = tuple(int(part) for part in re.findall(r"\d+", proxmox["version"]))
        prefix = "proxmox" if abi >= PROXMOX_RENAMED else "pve"
        return f"{prefix}-headers-{release}"
    if DISTRIBUTION_KERNEL.match(release):
        return f"linux-headers-{release}"
    return None


def header_packages(
    running: str, installed: Iterable[str], arch: str, distribution: str, release: str = ""
) -> tuple[list[str], bool]:
    """Kernel headers DKMS needs: ``(packages, running_kernel_covered)``.

    The headers of the running kernel and of every installed one, so that the module is
    built for the kernel in memory and for the one the next boot picks, before any reboot;
    and the meta package that brings the headers of every kernel installed later. A Proxmox
    VE host (a ``-pve`` kernel) gets ``proxmox-default-headers``, Debian
    ``linux-headers-<arch>``, Ubuntu ``linux-headers-generic`` (or the HWE one when the
    running kernel is a newer series than ``release`` ships). A custom kernel, or a
    container's host kernel, has none to install: then the module is built for the
    installed distribution kernels only.
    """
    kernels = [running, *installed]
    if any(PROXMOX_KERNEL.match(kernel) for kernel in kernels):
        newest_pve = max((k for k in kernels if PROXMOX_KERNEL.match(k)), key=lambda k: _numbers(k))
        renamed = (kernel_headers(newest_pve) or "").startswith("proxmox-")
        meta = "proxmox-default-headers" if renamed else "pve-headers"
    elif distribution == "Ubuntu":
        ga = UBUNTU_GA_KERNEL.get(release)
        series = ".".join(running.split(".")[:2])
        hwe = ga is not None and DISTRIBUTION_KERNEL.match(running) and series != ga
        meta = f"linux-headers-generic-hwe-{release}" if hwe else "linux-headers-generic"
    else:
        meta = f"linux-headers-{HEADERS_META.get(arch, 'amd64')}"
    packages = [meta]
    for kernel in kernels:
        headers = kernel_headers(kernel)
        if headers and headers not in packages:
            packages.append(headers)
    return packages, kernel_headers(running) is not None


def _numbers(release: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", release))


def apt_pin(driver: NvidiaDriver) -> str | None:
    """An apt preferences stanza holding every package of the driver at ``driver.version``:
    an upgrade can then never leave the loaded module and the libraries at different
    versions ("Failed to initialize NVML: Driver/library version mismatch")."""
    if not driver.version:
        return None
    return f"Package: {PINNED_PACKAGES}\nPin: version {driver.version}-*\nPin-Priority: 1001\n"


def support_problem(
    entry: AcceleratorEntry, driver: NvidiaDriver, open_modules: bool
) -> str | None:
    """Why ``driver`` (with the open kernel modules or not) cannot drive the ``entry`` GPU,
    with the fix; None when it can."""
    branch = driver.effective_branch
    if entry.min_driver and branch is not None and branch < entry.min_driver:
        return (
            f"driver branch {branch} does not support the {entry.name} (it needs "
            f"{entry.min_driver} or newer); pin a newer version, or use source 'cuda' with "
            f"branch {max(entry.min_driver, 570)}"
        )
    if entry.open_modules == "required" and not open_modules:
        return (
            f"the {entry.name} runs only on NVIDIA's open kernel modules; set "
            "nvidia_driver.modules to 'open' (or leave it 'auto'), or use source 'cuda' or "
            "'ubuntu-open'"
        )
    if entry.open_modules == "unsupported" and open_modules:
        return (
            f"the {entry.name} is older than Turing and has no open kernel module; set "
            "nvidia_driver.modules to 'proprietary' and use source 'debian', 'ubuntu' or 'cuda'"
        )
    return None


def modules_problem(driver: NvidiaDriver) -> str | None:
    """Settings that contradict each other about the kernel modules."""
    if driver.source == "ubuntu-open" and driver.modules == "proprietary":
        return (
            "source 'ubuntu-open' installs the open kernel modules; use source 'ubuntu' for "
            "the proprietary ones, or set nvidia_driver.modules to 'auto'"
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


def declared_cards(spec: HostSpec, catalogue: Catalogue | None = None) -> list[AcceleratorEntry]:
    """The figures of the NVIDIA cards the host data declares (the catalogue's, or the
    host's own for a part it declares), from ``catalogue`` or the inventory's."""
    catalogue = catalogue or fleet_catalogue()
    entries = (
        catalogue.accelerator_for(accelerator)
        for accelerator in spec.hardware.accelerators
        if accelerator.kind == "nvidia"
    )
    return [entry for entry in entries if entry is not None]


# CUDA toolkits, and the GPUs they can build for.

PLANNED_RELEASES = {
    "debian": ("Debian", "12"),
    "proxmox": ("Debian", "12"),
    "ubuntu": ("Ubuntu", "24.04"),
}
"""The release gpufleet plans a host of each ``os`` for (Proxmox VE 8 is Debian 12): what
the inventory check assumes before any host is asked."""
DISTRIBUTION_TOOLKITS = {
    ("Debian", "12"): (11, 8),
    ("Debian", "13"): (12, 4),
    ("Ubuntu", "22.04"): (11, 5),
    ("Ubuntu", "24.04"): (12, 0),
}
"""CUDA version of each release's ``nvidia-cuda-toolkit`` (packages.debian.org:
11.8.89~11.8.0-5~deb12u1 in bookworm, 12.4.131~12.4.1-2 in trixie; Ubuntu's archive:
11.5.1 in jammy, 12.0.140 in noble)."""
NEWEST_ARCHITECTURE = [((12, 9), 121), ((12, 8), 120), ((11, 8), 90), ((11, 1), 86), ((11, 0), 80)]
"""The newest GPU architecture (sm_XY) each CUDA release can compile for, from NVIDIA's
CUDA release notes: 11.8 added sm_89/sm_90, 12.8 Blackwell's sm_100 and sm_120, 12.9
sm_121."""
CUDA_TOOLKIT = re.compile(r"^cuda-toolkit-(?P<major>\d+)-(?P<minor>\d+)$")


@dataclass(frozen=True)
class CudaToolkit:
    """A CUDA toolkit as apt installs it."""

    package: str
    version: tuple[int, int] | None
    """CUDA release; None where the distribution release is one gpufleet does not know."""
    nvcc: str
    from_cuda_repository: bool
    """In NVIDIA's CUDA repository (source ``cuda``), not the distribution's archive."""

    @property
    def name(self) -> str:
        version = ".".join(map(str, self.version)) if self.version else "of unknown version"
        where = "NVIDIA's CUDA repository" if self.from_cuda_repository else "the distribution"
        return f"{self.package} (CUDA {version}, from {where})"


def cuda_toolkit(choice: str, distribution: str, release: str) -> CudaToolkit:
    """The toolkit ``llamacpp.cuda_toolkit`` names: ``distribution`` (the release's
    ``nvidia-cuda-toolkit``, nvcc in /usr/bin) or ``cuda-toolkit-X-Y`` from NVIDIA's CUDA
    repository (nvcc in /usr/local/cuda-X.Y)."""
    wanted = CUDA_TOOLKIT.match(choice)
    if wanted:
        major, minor = int(wanted["major"]), int(wanted["minor"])
        return CudaToolkit(
            choice, (major, minor), f"/usr/local/cuda-{major}.{minor}/bin/nvcc", True
        )
    version = DISTRIBUTION_TOOLKITS.get((distribution, release))
    return CudaToolkit("nvidia-cuda-toolkit", version, "/usr/bin/nvcc", False)


def newest_architecture(version: tuple[int, int]) -> int:
    return next((sm for since, sm in NEWEST_ARCHITECTURE if version >= since), 75)


def toolkit_problem(toolkit: CudaToolkit, cards: Iterable[AcceleratorEntry]) -> str | None:
    """Why ``toolkit`` cannot build CUDA code for one of ``cards``, with the fix; None when
    it can (or when its version is unknown)."""
    if toolkit.version is None:
        return None
    newest = newest_architecture(toolkit.version)
    for card in cards:
        if card.sm is None or card.sm <= newest:
            continue
        needed = min((since for since, sm in NEWEST_ARCHITECTURE if sm >= card.sm), default=None)
        if needed is None:
            return f"no CUDA release gpufleet knows compiles for the {card.name} (sm_{card.sm})"
        return (
            f"{toolkit.name} cannot compile for the {card.name} (compute capability "
            f"{card.compute_capability}, sm_{card.sm}; it needs CUDA "
            f"{needed[0]}.{needed[1]} or newer); set llamacpp.cuda_toolkit to "
            f"'cuda-toolkit-{needed[0]}-{needed[1]}' (NVIDIA's CUDA repository) or newer"
        )
    return None


def cuda_architectures(cards: Iterable[AcceleratorEntry]) -> str:
    """``CMAKE_CUDA_ARCHITECTURES`` for the cards: each one's sm, ``75;120``."""
    return ";".join(str(sm) for sm in sorted({card.sm for card in cards if card.sm}))
