"""What the driver deploy installs, decided from host data (pure logic)."""

import pytest

from gpufleet.catalogue import load_catalogue
from gpufleet.models import NvidiaDriver
from gpufleet.nvidia import (
    apt_pin,
    driver_packages,
    header_packages,
    kernel_module_packages,
    packages_off_pin,
    pin_problem,
    support_problem,
    userland_packages,
)

CATALOGUE = load_catalogue()


def entry(name):
    found = CATALOGUE.accelerator(name)
    assert found is not None
    return found


def test_debian_headless_driver_has_module_smi_and_cuda_but_no_x():
    packages = driver_packages(NvidiaDriver(version="535.261.03"), "Debian")
    assert packages[0] == "nvidia-kernel-dkms"
    assert {"nvidia-smi", "libcuda1", "libnvidia-ml1", "nvidia-persistenced"} <= set(packages)
    assert not any("xserver" in p or p == "nvidia-driver" for p in packages)
    desktop = driver_packages(NvidiaDriver(version="535.261.03", flavour="desktop"), "Debian")
    assert "nvidia-driver" in desktop


@pytest.mark.parametrize(
    "source, expected",
    [
        ("ubuntu", ["nvidia-headless-570-server", "nvidia-utils-570-server"]),
        ("ubuntu-open", ["nvidia-headless-570-server-open", "nvidia-utils-570-server"]),
        ("cuda", ["cuda-drivers-570"]),
    ],
)
def test_packages_named_by_branch(source, expected):
    assert driver_packages(NvidiaDriver(source=source, branch=570), "Ubuntu") == expected


def test_container_user_space_never_includes_a_module():
    for source in ("debian", "ubuntu", "cuda"):
        driver = NvidiaDriver(source=source, version="570.172.08")
        userland = set(userland_packages(driver))
        assert userland
        assert not userland & set(kernel_module_packages(driver))
        assert not any("dkms" in package for package in userland)


@pytest.mark.parametrize(
    "running, expected, covered",
    [
        ("6.1.0-28-amd64", ["linux-headers-amd64", "linux-headers-6.1.0-28-amd64"], True),
        ("6.12.9+bpo-amd64", ["linux-headers-amd64"], False),
        ("6.18.44-fc-v669", ["linux-headers-amd64"], False),  # a container's host kernel
    ],
)
def test_headers_for_the_running_kernel_when_the_distribution_has_them(running, expected, covered):
    assert header_packages(running, "x86_64", "Debian") == (expected, covered)


def test_ubuntu_headers():
    packages, covered = header_packages("6.8.0-51-generic", "x86_64", "Ubuntu")
    assert packages == ["linux-headers-generic", "linux-headers-6.8.0-51-generic"] and covered


def test_pin_holds_every_driver_package_at_the_version():
    pin = apt_pin(NvidiaDriver(version="535.261.03"))
    assert pin is not None
    assert "Pin: version 535.261.03-*\n" in pin
    assert "Pin-Priority: 1001\n" in pin  # above 1000: apt even downgrades to it
    assert "libnvidia-*" in pin and "nvidia-*" in pin
    assert apt_pin(NvidiaDriver(source="cuda", branch=570)) is None


def test_packages_off_the_held_version_are_moved_tools_are_not():
    installed = {
        "nvidia-kernel-dkms": {"535.247.01-1~deb12u1"},
        "nvidia-smi": {"535.261.03-1"},
        "nvidia-persistenced": {"535.171.04-1~deb12u1"},  # its own version, never moved
    }
    packages = ["nvidia-kernel-dkms", "nvidia-smi", "nvidia-persistenced", "libcuda1"]
    assert packages_off_pin(installed, packages, "535.261.03") == ["nvidia-kernel-dkms"]
    assert packages_off_pin(installed, packages, None) == []


@pytest.mark.parametrize(
    "gpu, driver, fragment",
    [
        ("RTX 5070 Ti", NvidiaDriver(version="535.261.03"), "needs 570 or newer"),
        ("RTX 5090", NvidiaDriver(source="ubuntu", branch=575), "open kernel modules"),
        ("RTX 5090", NvidiaDriver(source="debian", version="575.64.05"), "open kernel modules"),
        ("H200", NvidiaDriver(version="535.261.03"), "needs 550 or newer"),
    ],
)
def test_branches_that_cannot_drive_the_gpu(gpu, driver, fragment):
    problem = support_problem(entry(gpu), driver)
    assert problem is not None and fragment in problem


@pytest.mark.parametrize(
    "gpu, driver",
    [
        ("RTX 5090", NvidiaDriver(source="cuda", version="575.64.05")),
        ("RTX 5070 Ti", NvidiaDriver(source="ubuntu-open", branch=570)),
        ("GTX 1650", NvidiaDriver(version="535.261.03")),
        ("RTX 4090", NvidiaDriver(source="ubuntu", branch=550)),
    ],
)
def test_branches_that_can(gpu, driver):
    assert support_problem(entry(gpu), driver) is None


def test_pin_problems():
    assert "nvidia_driver.version" in (pin_problem(NvidiaDriver()) or "")
    assert "nvidia_driver.branch" in (pin_problem(NvidiaDriver(source="cuda")) or "")
    assert pin_problem(NvidiaDriver(source="cuda", version="575.64.05")) is None
