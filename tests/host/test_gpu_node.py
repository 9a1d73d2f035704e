"""testinfra: GPU nodes."""

import pytest


@pytest.mark.group("gpu_nodes")
def test_gpu_detection_agrees_with_the_pci_bus(lab_host):
    # The lab has no NVIDIA card: lspci (installed by the baseline) must agree with the
    # report the deploy gave.
    listing = lab_host.testinfra.check_output("lspci -Dnn")
    assert listing.strip()
    assert "[10de:" not in listing
    assert lab_host.testinfra.file("/proc/driver/nvidia/version").exists is False


@pytest.mark.group("gpu_nodes")
def test_gpu_nodes_get_the_non_free_components(lab_host):
    content = lab_host.testinfra.file("/etc/apt/sources.list.d/debian.sources").content_string
    assert "Components: main contrib non-free non-free-firmware\n" in content
    # apt really reads them: the non-free index was downloaded.
    lists = lab_host.testinfra.check_output("ls /var/lib/apt/lists")
    assert "_bookworm_non-free_binary-amd64_Packages" in lists
