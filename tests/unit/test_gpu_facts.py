"""GPU fact parsers against real captured outputs (tests/fixtures/gpu/SOURCES.md)."""

from pathlib import Path

import pytest

from gpufleet.facts.gpu import (
    NvidiaGpus,
    describe,
    parse_driver_version,
    parse_lspci,
    parse_module_flavour,
    parse_nvidia_smi_query,
    parse_proc_devices,
    parse_smi_csv,
    uvm_major,
)
from gpufleet.facts.system import Kernels, parse_secure_boot

FIXTURES = Path(__file__).parents[1] / "fixtures" / "gpu"


def lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


def test_desktop_listing_finds_the_card_and_skips_its_audio_function():
    gpus = parse_lspci(lines("lspci-nn-desktop-gtx1060.txt"))
    assert gpus == [
        {
            "slot": "0000:05:00.0",
            "class_code": "0300",
            "device_id": "1c03",
            "name": "GP106 [GeForce GTX 1060 6GB]",
        }
    ]


def test_server_listing_finds_four_3d_controllers():
    gpus = parse_lspci(lines("lspci-nn-server-4xh100.txt"))
    assert [g["slot"] for g in gpus] == [
        "0000:06:00.0",
        "0000:0c:00.0",
        "0000:46:00.0",
        "0000:4c:00.0",
    ]
    assert {g["device_id"] for g in gpus} == {"2330"}
    assert {g["class_code"] for g in gpus} == {"0302"}


def test_machine_without_gpu_has_none():
    assert parse_lspci(lines("lspci-nn-no-gpu.txt")) == []


def test_sysfs_fallback_lines_parse_like_lspci():
    # The shape the fact prints from /sys/bus/pci when lspci is missing.
    fallback = [
        "0000:01:00.0 Class [0300]: Device [10de:2684]",
        "0000:01:00.1 Class [0403]: Device [10de:22ba]",
    ]
    assert parse_lspci(fallback) == [
        {"slot": "0000:01:00.0", "class_code": "0300", "device_id": "2684", "name": "Device"}
    ]


# No real capture of this exact four-column query is on hand yet (SOURCES.md); these rows
# follow the documented csv,noheader,nounits format: "name, MiB, driver, bus id".
SMI_TWO_GPUS = [
    "NVIDIA GeForce RTX 4090, 24564, 550.54.14, 00000000:01:00.0",
    "NVIDIA GeForce RTX 3080, 10240, 550.54.14, 00000000:02:00.0",
]


def test_nvidia_smi_query_rows():
    gpus, error = parse_nvidia_smi_query(SMI_TWO_GPUS)
    assert error is None
    assert [(g["name"], g["memory_total_mib"]) for g in gpus] == [
        ("NVIDIA GeForce RTX 4090", 24564),
        ("NVIDIA GeForce RTX 3080", 10240),
    ]
    assert gpus[1]["pci_bus_id"] == "00000000:02:00.0"


@pytest.mark.parametrize(
    "fixture, expected",
    [
        ("nvidia-smi-mismatch.txt", "Driver/library version mismatch"),
        ("nvidia-smi-mismatch-nvml-version.txt", "NVML library version: 570.124"),
        ("nvidia-smi-no-driver.txt", "couldn't communicate with the NVIDIA driver"),
    ],
)
def test_nvidia_smi_failures_are_reported_not_parsed(fixture, expected):
    gpus, error = parse_nvidia_smi_query(lines(fixture))
    assert gpus == []
    assert error is not None and expected in error


@pytest.mark.parametrize(
    "fixture, version",
    [
        ("proc-driver-nvidia-version.txt", "565.57.01"),
        ("proc-driver-nvidia-version-proprietary.txt", "384.98"),
    ],
)
def test_driver_version(fixture, version):
    assert parse_driver_version((FIXTURES / fixture).read_text()) == version


def test_no_driver_version_without_the_file():
    assert parse_driver_version("") is None


@pytest.mark.parametrize(
    "fixture, flavour, version",
    [
        ("proc-driver-nvidia-version.txt", "open", "565.57.01"),
        ("proc-driver-nvidia-version-proprietary.txt", "proprietary", "384.98"),
        ("proc-driver-nvidia-version-open-aarch64-jetson.txt", "open", "35.3.1"),
    ],
)
def test_which_kernel_module_is_loaded(fixture, flavour, version):
    text = (FIXTURES / fixture).read_text()
    assert parse_module_flavour(text) == flavour
    assert parse_driver_version(text) == version  # "for aarch64" does not hide the version
    assert parse_module_flavour("") is None


def test_the_fact_says_which_module_is_loaded():
    report = NvidiaGpus().process(
        [
            "### pci",
            "### nvidia-smi",
            *SMI_TWO_GPUS,
            "### driver",
            *lines("proc-driver-nvidia-version-proprietary.txt"),
        ]
    )
    assert report["module_flavour"] == "proprietary"


# --- values nvidia-smi cannot report: [N/A], [Not Supported] -----------------------------


def test_unified_memory_gpu_reports_memory_as_na():
    # DGX Spark (GB10): memory.total is [N/A]; csv with its header line.
    rows, errors = parse_smi_csv(
        lines("nvidia-smi-query-gb10-memory-na.csv"),
        ["index", "name", "memory.total", "memory.free"],
    )
    assert errors == []
    assert rows == [
        {"index": "0", "name": "NVIDIA GB10", "memory.total": None, "memory.free": None}
    ]


def test_a_fan_it_cannot_read_is_unknown_the_rest_is_read():
    fields = "memory.total,memory.free,memory.used,temperature.gpu,fan.speed,utilization.gpu,"
    rows, errors = parse_smi_csv(
        lines("nvidia-smi-query-fan-na-nounits.csv"), (fields + "utilization.memory").split(",")
    )
    assert errors == []
    assert rows[0]["fan.speed"] is None
    assert rows[0]["temperature.gpu"] == "44" and rows[0]["memory.total"] == "2004"


def test_not_supported_fields_are_unknown():
    fields = [
        "gpu_name",
        "utilization.gpu",
        "utilization.memory",
        "temperature.gpu",
        "power.draw",
        "power.limit",
        "fan.speed",
        "pstate",
        "clocks.current.graphics",
        "clocks.current.memory",
        "power.max_limit",
        "power.default_limit",
    ]
    rows, errors = parse_smi_csv(lines("nvidia-smi-query-gtx770-not-supported.csv"), fields)
    assert errors == []
    assert rows[0]["gpu_name"] == "GeForce GTX 770"
    assert rows[0]["power.draw"] is None and rows[0]["utilization.gpu"] is None
    assert rows[0]["temperature.gpu"] == "52" and rows[0]["fan.speed"] == "52 %"


def test_a_gpu_with_unknown_memory_is_still_a_working_gpu():
    # The GB10 row above, in the fact's own four columns (no capture of exactly this query
    # on a GB10 is on hand): name and [N/A] memory as the real row has them.
    gb10 = "NVIDIA GB10, [N/A], 580.126.09, 0000000F:01:00.0"
    gpus, error = parse_nvidia_smi_query([gb10])
    assert error is None
    assert gpus == [
        {
            "name": "NVIDIA GB10",
            "memory_total_mib": None,
            "driver_version": "580.126.09",
            "pci_bus_id": "0000000F:01:00.0",
        }
    ]
    report = NvidiaGpus().process(["### pci", "### nvidia-smi", gb10, "### driver"])
    text = describe(report)
    assert text.startswith("1 NVIDIA GPU(s)") and "NVIDIA GB10 (memory unknown)" in text
    assert "not usable" not in text


def fact_output(pci: str, smi: list[str], driver: str) -> list[str]:
    return [
        "### pci",
        *lines(pci),
        "### nvidia-smi",
        *smi,
        "### driver",
        *(FIXTURES / driver).read_text().splitlines(),
    ]


def test_fact_with_driver_library_mismatch_still_sees_the_card():
    report = NvidiaGpus().process(
        fact_output(
            "lspci-nn-desktop-gtx1060.txt",
            lines("nvidia-smi-mismatch.txt"),
            "proc-driver-nvidia-version.txt",
        )
    )
    assert len(report["pci"]) == 1
    assert report["nvidia_smi"] == []
    assert report["driver_version"] == "565.57.01"
    assert "driver not usable (Failed to initialize NVML" in describe(report)


def test_fact_on_a_host_without_gpu():
    report = NvidiaGpus().process(
        ["### pci", *lines("lspci-nn-no-gpu.txt"), "### nvidia-smi", "### driver"]
    )
    assert report == {
        "pci": [],
        "nvidia_smi": [],
        "nvidia_smi_error": None,
        "driver_version": None,
        "module_flavour": None,
    }
    assert describe(report) == "no NVIDIA GPU (no PCI display device with vendor 10de)"


def test_fact_with_working_driver_describes_the_cards():
    report = NvidiaGpus().process(["### pci", "### nvidia-smi", *SMI_TWO_GPUS, "### driver"])
    assert describe(report).startswith("2 NVIDIA GPU(s)")


# --- device majors (/proc/devices) ---------------------------------------------------------


def test_majors_of_a_gpu_server_with_nvswitch():
    majors = parse_proc_devices(lines("proc-devices-nvidia.txt"))
    assert majors == {
        "nvidia-frontend": 195,
        "nvidia-nvlink": 234,
        "nvidia-caps": 235,
        "nvidia-uvm": 510,
        "nvidia-nvswitch": 511,
    }
    assert uvm_major(majors) == 510


def test_majors_of_a_legacy_driver_without_uvm():
    majors = parse_proc_devices(lines("proc-devices-legacy-195-nvidia-no-uvm.txt"))
    assert majors == {"nvidia": 195}
    assert uvm_major(majors) is None


def test_no_majors_without_a_driver_and_block_devices_ignored():
    assert parse_proc_devices(lines("proc-devices-no-gpu.txt")) == {}
    assert parse_proc_devices(["Block devices:", "195 nvidia-looking-block"]) == {}


# --- Secure Boot -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fixture, state",
    [
        ("mokutil-sb-state-enabled.txt", "enabled"),
        ("mokutil-sb-state-disabled-setupmode.txt", "disabled"),
        ("mokutil-sb-state-efi-unsupported.txt", "not-efi"),
        ("mokutil-sb-state-not-supported.txt", "not-efi"),
        ("mokutil-sb-state-no-efi.txt", "not-efi"),
    ],
)
def test_secure_boot_from_mokutil(fixture, state):
    assert parse_secure_boot(lines(fixture)) == state


def test_secure_boot_from_the_efi_variable_when_mokutil_is_missing():
    # 4 attribute bytes (6 0 0 0), then the value.
    assert parse_secure_boot(["efivar   6   0   0   0   1"]) == "enabled"
    assert parse_secure_boot(["efivar   6   0   0   0   0"]) == "disabled"
    assert parse_secure_boot(["no-efi"]) == "not-efi"
    assert parse_secure_boot([]) == "unknown"


# --- kernels -----------------------------------------------------------------------------


def test_kernels_in_a_container_with_debian_headers():
    report = Kernels().process(lines("kernels-container-with-debian-headers.txt"))
    assert report == {
        "running": "6.18.44-fc-v669",
        "installed": [],
        "with_headers": ["6.1.0-50-amd64"],
        "with_nvidia_module": [],
    }


def test_kernels_sorted_by_version_not_text():
    report = Kernels().process(
        [
            "### running",
            "6.1.0-9-amd64",
            "### images",
            "vmlinuz-6.1.0-10-amd64",
            "vmlinuz-6.1.0-9-amd64",
            "### headers",
            "6.1.0-10-amd64",
        ]
    )
    assert report["installed"] == ["6.1.0-9-amd64", "6.1.0-10-amd64"]
    assert report["running"] not in report["with_headers"]  # headers for the next boot only


def test_kernels_holding_the_nvidia_module_are_those_a_reboot_may_boot():
    report = Kernels().process(
        [
            "### running",
            "6.8.12-5-pve",
            "### images",
            "vmlinuz-6.8.12-5-pve",
            "vmlinuz-6.8.12-6-pve",
            "### headers",
            "6.8.12-5-pve",
            "6.8.12-6-pve",
            "### nvidia",
            "6.8.12-5-pve",
        ]
    )
    assert report["with_nvidia_module"] == ["6.8.12-5-pve"]  # the update's kernel lacks it


def test_the_kernels_fact_finds_a_dkms_module_however_it_is_compressed(tmp_path):
    """The fact's own command against a /lib/modules tree (the path rewritten into tmp_path):
    a DKMS module, plain or zstd-compressed, counts; a kernel with only headers does not."""
    import subprocess

    modules = tmp_path / "lib" / "modules"
    (modules / "6.1.0-28-amd64" / "updates" / "dkms").mkdir(parents=True)
    (modules / "6.1.0-28-amd64" / "updates" / "dkms" / "nvidia.ko").write_bytes(b"")
    (modules / "6.1.0-31-amd64" / "updates" / "dkms").mkdir(parents=True)
    (modules / "6.1.0-31-amd64" / "updates" / "dkms" / "nvidia.ko.zst").write_bytes(b"")
    (modules / "6.1.0-32-amd64" / "build").mkdir(parents=True)
    (modules / "6.1.0-32-amd64" / "build" / "Makefile").write_text("")
    command = Kernels().command().replace("/lib/modules", str(modules))
    output = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    report = Kernels().process(output.stdout.splitlines())
    assert report["with_nvidia_module"] == ["6.1.0-28-amd64", "6.1.0-31-amd64"]
    assert report["with_headers"] == ["6.1.0-32-amd64"]


def test_nvidia_smi_query_without_a_loaded_module():
    # Captured on a Debian 12 host with the driver packages and no module (exit status 9).
    gpus, error = parse_nvidia_smi_query(lines("nvidia-smi-query-no-module-debian12.txt"))
    assert gpus == []
    assert error is not None and error.startswith("NVIDIA-SMI has failed")
