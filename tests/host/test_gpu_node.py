"""testinfra: GPU nodes: detection, the NVIDIA driver, Docker and the container toolkit."""

import json

import pytest

from gpufleet.lab import MIRROR_URL

from .conftest import USER_DAEMON_JSON

DRIVER = "535.261.03"


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


# --- the host without a GPU: everything GPU-specific skipped, said once each ---------------


@pytest.mark.hosts("lab-gpu-1")
def test_no_gpu_means_no_driver_and_no_toolkit(lab_host, lab_session):
    assert not lab_host.testinfra.package("nvidia-kernel-dkms").is_installed
    assert not lab_host.testinfra.file("/etc/modprobe.d/gpufleet-blacklist-nouveau.conf").exists
    assert not lab_host.testinfra.file(
        "/etc/apt/sources.list.d/nvidia-container-toolkit.list"
    ).exists
    for run in (lab_session.first, lab_session.second):
        lines = [line for line in run.stderr.splitlines() if line.startswith("    [lab-gpu-1]")]
        assert sum("no NVIDIA GPU detected: driver not installed" in line for line in lines) == 1
        assert (
            sum(
                "no NVIDIA GPU detected: NVIDIA Container Toolkit skipped" in line for line in lines
            )
            == 1
        )


@pytest.mark.hosts("lab-gpu-1", "lab-pve-1")
def test_docker_really_runs(lab_host):
    assert lab_host.testinfra.service("docker").is_running
    assert lab_host.testinfra.service("docker").is_enabled
    server = lab_host.testinfra.check_output("docker version --format '{{.Server.Version}}'")
    assert server.startswith("20.10.")  # Debian 12's docker.io, not a stub


# --- the forced driver host: Debian's driver, really built by DKMS --------------------------


@pytest.mark.hosts("lab-pve-1")
def test_driver_packages_at_the_held_version(lab_host):
    for package in ("nvidia-kernel-dkms", "nvidia-smi", "libcuda1", "firmware-nvidia-gsp"):
        installed = lab_host.testinfra.package(package)
        assert installed.is_installed, package
        assert installed.version.startswith(f"{DRIVER}-"), (package, installed.version)
    pin = lab_host.testinfra.file("/etc/apt/preferences.d/gpufleet-nvidia-driver").content_string
    assert f"Pin: version {DRIVER}-*\n" in pin
    assert "Pin-Priority: 1001\n" in pin
    # apt itself now holds the driver there, whatever newer version a mirror offers.
    policy = lab_host.testinfra.check_output("apt-cache policy nvidia-kernel-dkms")
    assert f"Candidate: {DRIVER}-" in policy


@pytest.mark.hosts("lab-pve-1")
def test_module_built_by_dkms_for_the_installed_kernel(lab_host):
    status = lab_host.testinfra.check_output("dkms status")
    assert f"nvidia-current/{DRIVER}" in status and ": installed" in status
    kernel = status.split(",")[1].strip()
    module = f"/lib/modules/{kernel}/updates/dkms/nvidia-current.ko"
    assert lab_host.testinfra.file(module).exists
    # The headers it was built against are Debian's, and match that kernel.
    assert lab_host.testinfra.package(f"linux-headers-{kernel}").is_installed


@pytest.mark.hosts("lab-pve-1")
def test_nouveau_blacklisted_and_module_options_written(lab_host):
    blacklist = lab_host.testinfra.file("/etc/modprobe.d/gpufleet-blacklist-nouveau.conf")
    assert "blacklist nouveau\n" in blacklist.content_string
    assert "options nouveau modeset=0\n" in blacklist.content_string
    options = lab_host.testinfra.file("/etc/modprobe.d/gpufleet-nvidia.conf")
    assert "options nvidia-drm modeset=1\n" in options.content_string
    # modprobe reads them as configuration.
    config = lab_host.testinfra.check_output("modprobe --showconfig")
    assert "blacklist nouveau" in config
    assert "options nvidia_drm modeset=1" in config  # modprobe writes module names with _


@pytest.mark.hosts("lab-pve-1")
def test_persistence_daemon_enabled(lab_host):
    assert lab_host.testinfra.service("nvidia-persistenced").is_enabled


@pytest.mark.hosts("lab-pve-1")
def test_reboot_required_reported_once_and_never_done(lab_host, lab_session):
    def warnings(run):
        return [line for line in run.stderr.splitlines() if "REBOOT REQUIRED" in line]

    first = warnings(lab_session.first)
    assert len(first) == 1 and "[lab-pve-1]" in first[0]
    assert "NVIDIA driver 535.261.03 installed, loaded module: none" in first[0]
    assert warnings(lab_session.second) == []
    assert "reboot still pending" in lab_session.second.stderr
    flag = lab_host.testinfra.file("/run/reboot-required")
    assert flag.exists
    # Never an unasked reboot: the host has been up since before the first run.
    uptime = float(lab_host.testinfra.check_output("cut -d' ' -f1 /proc/uptime"))
    assert uptime > lab_session.first.seconds


# --- Docker and the container toolkit on the forced host -----------------------------------


@pytest.mark.hosts("lab-pve-1")
def test_daemon_json_merged_keeping_the_users_keys(lab_host):
    merged = json.loads(lab_host.testinfra.file("/etc/docker/daemon.json").content_string)
    user = json.loads(USER_DAEMON_JSON)
    assert merged == {
        **user,
        "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}},
    }
    # dockerd loaded it: the nvidia runtime is registered, the user's log driver in force.
    info = lab_host.testinfra.check_output("docker info --format '{{json .}}'")
    assert "nvidia" in json.loads(info)["Runtimes"]
    assert json.loads(info)["LoggingDriver"] == "json-file"


@pytest.mark.hosts("lab-pve-1")
def test_toolkit_repository_and_key_are_exact(lab_host):
    listing = lab_host.testinfra.file("/etc/apt/sources.list.d/nvidia-container-toolkit.list")
    assert listing.mode == 0o644
    assert listing.content_string.splitlines()[-1] == (
        "deb [signed-by=/etc/apt/keyrings/nvidia-container-toolkit.asc] "
        f"{MIRROR_URL}/libnvidia-container/stable/deb/$(ARCH) /"
    )
    key = lab_host.testinfra.file("/etc/apt/keyrings/nvidia-container-toolkit.asc")
    served = lab_host.testinfra.check_output(f"curl -fsS {MIRROR_URL}/libnvidia-container/gpgkey")
    assert key.content_string.strip() == served.strip()
    # The stale list is gone, so apt no longer sees two Signed-By values for one repository,
    # and apt verified the mirror's signature with that key.
    assert not lab_host.testinfra.file("/etc/apt/sources.list.d/nvidia-docker.list").exists
    update = lab_host.testinfra.run("apt-get update")
    assert update.rc == 0, update.stderr
    assert "Conflicting values" not in update.stderr and "NO_PUBKEY" not in update.stderr
    assert lab_host.testinfra.file(
        "/var/lib/apt/lists/10.200.0.1:8380_libnvidia-container_stable_deb_amd64_InRelease"
    ).exists
