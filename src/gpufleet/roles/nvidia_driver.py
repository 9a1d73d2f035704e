"""The NVIDIA driver, held at one version, built by DKMS for the host's kernels.

Runbook it replaces: check the card is supported by the branch; blacklist nouveau and rebuild
the initramfs; install kernel headers; install the driver and hold it; enable the persistence
daemon; check the module is built for every kernel the host can boot; reboot (one host
at a time) when the module that is loaded is not the one installed.
"""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.server import LinuxDistribution, LinuxDistributionDict, Which
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from gpufleet import nvidia
from gpufleet.catalogue import fleet_catalogue
from gpufleet.facts.gpu import detected_gpus
from gpufleet.facts.system import Kernels, SecureBoot
from gpufleet.models import HostSpec, NvidiaDriver
from gpufleet.operations import nvidia as nvidia_ops
from gpufleet.paths import template
from gpufleet.roles.steps import rolling_reboot, signing_key

MODPROBE_DIR = "/etc/modprobe.d"
CUDA_KEY = "3bf863cc.pub"
"""The CUDA repository's signing key file, in each ``<distro>/<arch>`` folder."""
CUDA_KEYRING = "/etc/apt/keyrings/cuda-archive-keyring.asc"
CUDA_SOURCES = "/etc/apt/sources.list.d/gpufleet-cuda.sources"
DRIVER_PIN = "/etc/apt/preferences.d/gpufleet-nvidia-driver"


def check_detected_gpus(spec: HostSpec, open_modules: bool) -> None:
    """Stop before any change when the driver branch, or the kernel modules chosen, cannot
    drive a GPU the host has."""
    catalogue = fleet_catalogue()
    for gpu in detected_gpus()["pci"]:
        entry = catalogue.accelerator_by_pci_id(gpu["device_id"])
        if entry is None:
            # A part the inventory declares itself was checked against its declared
            # min_driver and open_modules when the inventory was validated.
            logger.warning(
                f"{host.print_prefix}GPU {gpu['name']} [10de:{gpu['device_id']}] is not in "
                "the catalogue: driver support checked only as the inventory declares it"
            )
            continue
        problem = nvidia.support_problem(entry, spec.nvidia_driver, open_modules)
        if problem:
            raise DeployError(
                f"{host.name}: nvidia_driver: detected {entry.name} at {gpu['slot']} "
                f"(declare it under hardware.accelerators if it is not): {problem}"
            )


def driver_sources(spec: HostSpec, distribution: LinuxDistributionDict) -> None:
    """Where the driver comes from: backports or NVIDIA's CUDA repository when asked."""
    driver = spec.nvidia_driver
    codename = distribution["release_meta"].get("VERSION_CODENAME", "")
    if driver.source == "debian-backports":
        backports = files.template(
            name="Add Debian backports",
            src=template("nvidia/backports.sources.j2"),
            dest="/etc/apt/sources.list.d/debian-backports.sources",
            mode="644",
            mirror=spec.apt_mirror,
            suite=codename,
            components=spec.apt_components,
        )
        apt.update(name="Refresh apt lists for backports", _if=backports.did_change)
    elif driver.source == "cuda":
        cuda_repository(spec, distribution)


def cuda_repository(spec: HostSpec, distribution: LinuxDistributionDict) -> None:
    """NVIDIA's CUDA repository: the driver (source ``cuda``) and the CUDA toolkits
    ``cuda-toolkit-X-Y`` come from it. Its key is fetched and checked against the pinned
    fingerprint before apt trusts it, rather than through the ``cuda-keyring`` package, which
    would run a maintainer script from a download whose checksum is published nowhere."""
    distro = f"{(distribution['name'] or 'debian').lower()}{distribution['major']}"
    if distribution["name"] == "Ubuntu":
        distro = f"ubuntu{distribution['major']}{distribution['minor']:02d}"
    arch = "sbsa" if spec.arch == "aarch64" else "x86_64"
    base = f"{spec.nvidia_driver.cuda_repo_url}/{distro}/{arch}"
    # cuda-keyring's own source names another keyring for the same URI: apt refuses both
    # ("Conflicting values set for option Signed-By").
    stale = files.file(
        name="Remove cuda-keyring's source (replaced by gpufleet's)",
        path=f"/etc/apt/sources.list.d/cuda-{distro}-{arch}.list",
        present=False,
    )
    key = signing_key(
        "NVIDIA CUDA", f"{base}/{CUDA_KEY}", CUDA_KEYRING, spec.nvidia_driver.cuda_key_fingerprint
    )
    source = files.template(
        name="NVIDIA CUDA apt repository (signed-by its key)",
        src=template("nvidia/cuda.sources.j2"),
        dest=CUDA_SOURCES,
        mode="644",
        uri=f"{base}/",
        keyring=CUDA_KEYRING,
    )
    apt.update(
        name="Refresh apt lists for the CUDA repository", _if=any_changed(stale, key, source)
    )


def release_of(distribution: LinuxDistributionDict) -> str:
    """The release as apt sources and package names use it: ``12`` (Debian), ``24.04``
    (Ubuntu)."""
    if distribution["name"] == "Ubuntu":
        return f"{distribution['major']}.{distribution['minor'] or 0:02d}"
    return str(distribution["major"] or "")


def hold_driver_version(driver: NvidiaDriver) -> None:
    """The apt pin that keeps every package of the driver at ``driver.version``."""
    pin = nvidia.apt_pin(driver)
    if pin:
        files.template(
            name=f"Hold the driver at {driver.version}",
            src=template("nvidia/driver-pin.j2"),
            dest=DRIVER_PIN,
            mode="644",
            version=driver.version,
            pin=pin,
        )


def move_to_held_version(packages: list[str], version: str | None) -> None:
    """Up- or downgrade driver packages installed at another version to the held one."""
    off_pin = nvidia.packages_off_pin(host.get_fact(DebPackages), packages, version)
    if off_pin:
        server.shell(
            name=f"Move the driver to {version}",
            commands=[
                "DEBIAN_FRONTEND=noninteractive apt-get install -y --allow-downgrades "
                "--no-install-recommends " + " ".join(off_pin)
            ],
        )


@deploy("NVIDIA driver")
def nvidia_driver(spec: HostSpec) -> None:
    """
    Install the NVIDIA driver the host data asks for and hold it at that version.

    .. code:: python

        nvidia_driver(host_spec())
    """
    driver = spec.nvidia_driver
    gpus = detected_gpus()
    if not gpus["pci"] and not driver.force:
        host.noop("no NVIDIA GPU detected: driver not installed (nvidia_driver.force installs)")
        return
    open_modules = nvidia.uses_open_modules(driver, nvidia.declared_cards(spec))
    check_detected_gpus(spec, open_modules)
    distribution = host.get_fact(LinuxDistribution)
    distribution_name = distribution["name"] or "Debian"
    kernels = host.get_fact(Kernels)
    if host.get_fact(SecureBoot) == "enabled":
        logger.warning(
            f"{host.print_prefix}Secure Boot is on: the DKMS-built module loads only once its "
            "signing key is enrolled (mokutil --import /var/lib/dkms/mok.pub, then reboot and "
            "confirm in the MOK manager)"
        )

    # 1. nouveau out of the way, in the initramfs too.
    blacklist = files.template(
        name="Blacklist nouveau",
        src=template("nvidia/blacklist-nouveau.conf.j2"),
        dest=f"{MODPROBE_DIR}/gpufleet-blacklist-nouveau.conf",
        mode="644",
    )
    options = files.template(
        name="NVIDIA module options",
        src=template("nvidia/gpufleet-nvidia.conf.j2"),
        dest=f"{MODPROBE_DIR}/gpufleet-nvidia.conf",
        mode="644",
        options=driver.modprobe_options,
    )
    if host.get_fact(Which, command="update-initramfs"):
        server.shell(
            name="Rebuild the initramfs without nouveau",
            commands=["update-initramfs -u -k all"],
            _if=any_changed(blacklist, options),
        )
    else:
        host.noop("no initramfs-tools: nothing to rebuild (nouveau is blacklisted at boot)")

    # 2. Where the packages come from, and the hold on their version.
    driver_sources(spec, distribution)
    hold_driver_version(driver)

    # 3. Headers for DKMS: the running kernel's and every installed kernel's, so the module
    #    is built for the kernel in memory and for the one the next boot picks.
    headers, running_covered = nvidia.header_packages(
        kernels["running"],
        kernels["installed"],
        spec.arch,
        distribution_name,
        release_of(distribution),
    )
    if not running_covered:
        host.noop(
            f"running kernel {kernels['running']} is not a {distribution_name} kernel (a "
            "container's host, or a custom build): the module is built for the installed "
            "distribution kernels"
        )

    # 4. The driver, at the held version, with the headers DKMS builds it against.
    packages = nvidia.driver_packages(driver, distribution_name, open_modules)
    modules = "open" if open_modules else "proprietary"
    installed = apt.packages(
        name=f"Install NVIDIA driver {driver.version or driver.effective_branch} ({modules} "
        "kernel modules)",
        packages=[*headers, *packages],
        no_recommends=True,
    )
    move_to_held_version(packages, driver.version)

    # 5. Persistence daemon: enabled now, running once the module is loaded.
    loaded = gpus["driver_version"]
    if driver.persistence:
        systemd.service(
            name="Enable nvidia-persistenced",
            service="nvidia-persistenced",
            enabled=True,
            running=True if loaded else None,
        )

    # 6. The module for every kernel the host can boot, before any reboot: a kernel
    #    installed since the driver (unattended-upgrades, a Proxmox update) boots without
    #    GPUs until DKMS builds it there. A run that finds one lacking stops here, naming it.
    nvidia_ops.module_built(
        name="NVIDIA module built for every kernel the host can boot",
        kernels=kernels["installed"],
        running=kernels["running"] if running_covered else None,
        driver_changes=installed.will_change,
    )

    # 7. Reboot when the module in memory is not the driver on disk: one host at a time,
    #    drained first, and the next goes down only once this one's servers answer again.
    wanted = driver.version
    stale_module = bool(wanted and loaded and loaded != wanted)
    if installed.will_change or stale_module or not loaded:
        reason = (
            f"NVIDIA driver {wanted or driver.effective_branch} installed, "
            f"loaded module: {loaded or 'none'}"
        )
        if kernels["installed"]:  # the check above passed, or this run stopped there
            reason += f"; module built for {', '.join(kernels['installed'])}"
        if driver.reboot and (installed.will_change or stale_module):
            rolling_reboot(spec, "Reboot into the new NVIDIA driver")
        else:
            nvidia_ops.reboot_required(name="Report the reboot the driver needs", reason=reason)
