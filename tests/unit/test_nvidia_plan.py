"""What the driver deploy installs, decided from host data (pure logic)."""

import pytest

from gpufleet.catalogue import load_catalogue
from gpufleet.models import NvidiaDriver
from gpufleet.nvidia import (
    apt_pin,
    cuda_architectures,
    cuda_toolkit,
    driver_packages,
    header_packages,
    kernel_module_packages,
    packages_off_pin,
    pin_problem,
    support_problem,
    toolkit_problem,
    userland_packages,
    uses_open_modules,
)

CATALOGUE = load_catalogue()


def entry(name):
    found = CATALOGUE.accelerator(name)
    assert found is not None
    return found


def test_debian_headless_driver_has_module_smi_and_cuda_but_no_x():
    packages = driver_packages(NvidiaDriver(version="535.261.03"), "Debian", False)
    assert packages[0] == "nvidia-kernel-dkms"
    assert {"nvidia-smi", "libcuda1", "libnvidia-ml1", "nvidia-persistenced"} <= set(packages)
    assert not any("xserver" in p or p == "nvidia-driver" for p in packages)
    desktop = driver_packages(
        NvidiaDriver(version="535.261.03", flavour="desktop"), "Debian", False
    )
    assert "nvidia-driver" in desktop


@pytest.mark.parametrize(
    "source, open_modules, expected",
    [
        ("ubuntu", False, ["nvidia-headless-570-server", "nvidia-utils-570-server"]),
        ("ubuntu", True, ["nvidia-headless-570-server-open", "nvidia-utils-570-server"]),
        ("ubuntu-open", True, ["nvidia-headless-570-server-open", "nvidia-utils-570-server"]),
        ("cuda", False, ["cuda-drivers-570"]),
        ("cuda", True, ["nvidia-open-570"]),
    ],
)
def test_packages_named_by_branch(source, open_modules, expected):
    driver = NvidiaDriver(source=source, branch=570)
    assert driver_packages(driver, "Ubuntu", open_modules) == expected


def test_debian_open_modules_replace_the_proprietary_module_package():
    driver = NvidiaDriver(version="535.261.03")
    assert driver_packages(driver, "Debian", True)[0] == "nvidia-open-kernel-dkms"
    desktop = driver_packages(NvidiaDriver(version="535.261.03", flavour="desktop"), "Debian", True)
    assert "nvidia-open-kernel-dkms" in desktop and "nvidia-kernel-dkms" not in desktop


@pytest.mark.parametrize("source", ["debian", "ubuntu", "ubuntu-open", "cuda"])
@pytest.mark.parametrize("open_modules", [False, True])
def test_the_module_package_installed_is_one_a_container_removes(source, open_modules):
    driver = NvidiaDriver(source=source, version="575.64.05")
    modules = set(kernel_module_packages(driver))
    installed = driver_packages(driver, "Debian", open_modules)
    # The metas (cuda-drivers, nvidia-open, nvidia-headless) pull a module in; Debian names it.
    if source == "debian":
        assert modules & set(installed) == {
            "nvidia-open-kernel-dkms" if open_modules else "nvidia-kernel-dkms"
        }
    assert not modules & set(userland_packages(driver))


@pytest.mark.parametrize(
    "cards, driver, expected",
    [
        (["RTX 5090"], NvidiaDriver(source="cuda", branch=575), True),
        (["RTX 4090"], NvidiaDriver(source="cuda", branch=575), False),
        (["RTX 4090"], NvidiaDriver(source="cuda", branch=575, modules="open"), True),
        (["RTX 4090"], NvidiaDriver(source="ubuntu-open", branch=575), True),
        (["RTX 5090"], NvidiaDriver(source="cuda", branch=575, modules="proprietary"), False),
    ],
)
def test_open_modules_where_a_card_requires_them_or_asked(cards, driver, expected):
    assert uses_open_modules(driver, [entry(card) for card in cards]) is expected


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
    assert header_packages(running, [], "x86_64", "Debian", "12") == (expected, covered)


def test_headers_for_every_installed_kernel_so_the_next_boot_has_the_module():
    packages, covered = header_packages(
        "6.1.0-28-amd64", ["6.1.0-28-amd64", "6.1.0-31-amd64"], "x86_64", "Debian", "12"
    )
    assert covered
    assert packages == [
        "linux-headers-amd64",
        "linux-headers-6.1.0-28-amd64",
        "linux-headers-6.1.0-31-amd64",
    ]


def test_proxmox_headers_for_the_running_and_every_installed_pve_kernel():
    # pveversion -v of a PVE 8.3.2 host:
    # https://github.com/zhaodice/proxmox-ve-anti-detection/issues/28
    installed = ["6.8.4-2-pve", "6.8.12-1-pve", "6.8.12-5-pve", "6.8.12-6-pve"]
    packages, covered = header_packages("6.8.12-5-pve", installed, "x86_64", "Debian", "12")
    assert covered
    assert packages[0] == "proxmox-default-headers"
    assert set(packages[1:]) == {f"proxmox-headers-{k}" for k in installed}
    assert not any(p.startswith("linux-headers") for p in packages)


def test_proxmox_kernels_before_the_rename_have_pve_headers():
    packages, _ = header_packages("5.15.108-1-pve", [], "x86_64", "Debian", "11")
    assert packages == ["pve-headers", "pve-headers-5.15.108-1-pve"]
    packages, _ = header_packages("6.2.16-6-pve", ["6.2.16-3-pve"], "x86_64", "Debian", "12")
    assert packages == [
        "proxmox-default-headers",
        "proxmox-headers-6.2.16-6-pve",
        "pve-headers-6.2.16-3-pve",
    ]


def test_ubuntu_headers():
    packages, covered = header_packages("6.8.0-51-generic", [], "x86_64", "Ubuntu", "24.04")
    assert packages == ["linux-headers-generic", "linux-headers-6.8.0-51-generic"] and covered
    hwe, _ = header_packages("6.11.0-26-generic", [], "x86_64", "Ubuntu", "24.04")
    assert hwe == ["linux-headers-generic-hwe-24.04", "linux-headers-6.11.0-26-generic"]


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
        (
            "RTX 5090",
            NvidiaDriver(source="ubuntu", branch=575, modules="proprietary"),
            "set nvidia_driver.modules to 'open'",
        ),
        (
            "RTX 5090",
            NvidiaDriver(source="cuda", version="575.64.05", modules="proprietary"),
            "open kernel modules",
        ),
        ("H200", NvidiaDriver(version="535.261.03"), "needs 550 or newer"),
    ],
)
def test_branches_that_cannot_drive_the_gpu(gpu, driver, fragment):
    card = entry(gpu)
    problem = support_problem(card, driver, uses_open_modules(driver, [card]))
    assert problem is not None and fragment in problem


@pytest.mark.parametrize(
    "gpu, driver",
    [
        ("RTX 5090", NvidiaDriver(source="cuda", version="575.64.05")),
        ("RTX 5090", NvidiaDriver(source="ubuntu", branch=575)),  # auto: the open modules
        ("RTX 5070 Ti", NvidiaDriver(source="ubuntu-open", branch=570)),
        ("GTX 1650", NvidiaDriver(version="535.261.03")),
        ("GTX 1650", NvidiaDriver(version="535.261.03", modules="open")),
        ("RTX 4090", NvidiaDriver(source="ubuntu", branch=550)),
    ],
)
def test_branches_that_can(gpu, driver):
    card = entry(gpu)
    assert support_problem(card, driver, uses_open_modules(driver, [card])) is None


@pytest.mark.parametrize(
    "choice, release, gpu, fragment",
    [
        ("distribution", ("Debian", "12"), "RTX 5090", "CUDA 11.8"),
        ("distribution", ("Ubuntu", "24.04"), "RTX 5070 Ti", "CUDA 12.0"),
        ("distribution", ("Debian", "13"), "RTX 5070 Ti", "CUDA 12.4"),
        ("cuda-toolkit-12-6", ("Debian", "12"), "RTX 5090", "CUDA 12.6"),
    ],
)
def test_toolkits_that_cannot_compile_for_blackwell(choice, release, gpu, fragment):
    problem = toolkit_problem(cuda_toolkit(choice, *release), [entry(gpu)])
    assert problem is not None and fragment in problem
    assert "sm_120" in problem and "'cuda-toolkit-12-8'" in problem


@pytest.mark.parametrize(
    "choice, release, gpu",
    [
        ("cuda-toolkit-12-8", ("Debian", "12"), "RTX 5090"),
        ("cuda-toolkit-12-9", ("Ubuntu", "24.04"), "RTX 5070 Ti"),
        ("distribution", ("Debian", "12"), "GTX 1650"),
        ("distribution", ("Debian", "12"), "H100 PCIe"),  # sm_90: CUDA 11.8's newest
        ("distribution", ("Ubuntu", "24.04"), "RTX 4090"),
    ],
)
def test_toolkits_that_can(choice, release, gpu):
    assert toolkit_problem(cuda_toolkit(choice, *release), [entry(gpu)]) is None


def test_nvidia_toolkits_build_with_their_own_nvcc_for_the_cards_only():
    toolkit = cuda_toolkit("cuda-toolkit-12-8", "Debian", "12")
    assert toolkit.package == "cuda-toolkit-12-8" and toolkit.from_cuda_repository
    assert toolkit.nvcc == "/usr/local/cuda-12.8/bin/nvcc"
    assert cuda_architectures([entry("RTX 5090"), entry("GTX 1650"), entry("RTX 5070 Ti")]) == (
        "75;120"
    )


def test_catalogue_compute_capabilities():
    # NVIDIA's CUDA GPUs page (developer.nvidia.com/cuda-gpus).
    expected = {
        "RTX 5090": "12.0",
        "RTX 5070 Ti": "12.0",
        "RTX 4090": "8.9",
        "RTX 3090": "8.6",
        "RTX 3080": "8.6",
        "RTX 3080 Laptop": "8.6",
        "RTX 2080 Super": "7.5",
        "GTX 1650": "7.5",
        "H100 PCIe": "9.0",
        "H100 SXM": "9.0",
        "H200": "9.0",
    }
    assert {name: entry(name).compute_capability for name in expected} == expected


def test_pin_problems():
    assert "nvidia_driver.version" in (pin_problem(NvidiaDriver()) or "")
    assert "nvidia_driver.branch" in (pin_problem(NvidiaDriver(source="cuda")) or "")
    assert pin_problem(NvidiaDriver(source="cuda", version="575.64.05")) is None
