"""GPU fact parsers against real captured outputs (tests/fixtures/gpu/SOURCES.md)."""

from pathlib import Path

import pytest

from gpufleet.facts.gpu import (
    NvidiaGpus,
    describe,
    parse_driver_version,
    parse_lspci,
    parse_nvidia_smi_query,
)

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
    assert report == {"pci": [], "nvidia_smi": [], "nvidia_smi_error": None, "driver_version": None}
    assert describe(report) == "no NVIDIA GPU (no PCI display device with vendor 10de)"


def test_fact_with_working_driver_describes_the_cards():
    report = NvidiaGpus().process(["### pci", "### nvidia-smi", *SMI_TWO_GPUS, "### driver"])
    assert describe(report).startswith("2 NVIDIA GPU(s)")
