"""Edits of daemon.json and Proxmox container configs, on real copies of such files."""

import json
from pathlib import Path

import pytest

from gpufleet.configs import (
    NVIDIA_RUNTIME,
    ConfigError,
    merge_daemon_json,
    merge_lxc_conf,
    passthrough_lines,
    pve_dev_paths,
    render_daemon_json,
)

PVE = Path(__file__).parents[1] / "fixtures" / "proxmox"
MAJORS = {"nvidia-frontend": 195, "nvidia-uvm": 509}


def conf(name: str) -> str:
    return (PVE / name).read_text()


# --- daemon.json -------------------------------------------------------------------------


def test_daemon_json_keeps_the_users_keys_and_merges_nested_ones():
    current = json.dumps(
        {"data-root": "/srv/docker", "runtimes": {"crun": {"path": "/usr/bin/crun"}}}
    )
    merged = merge_daemon_json(current, {"runtimes": NVIDIA_RUNTIME})
    assert merged["data-root"] == "/srv/docker"
    assert set(merged["runtimes"]) == {"crun", "nvidia"}
    assert merged["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"


def test_daemon_json_merge_is_idempotent():
    once = render_daemon_json(
        merge_daemon_json('{"log-driver": "local"}', {"runtimes": NVIDIA_RUNTIME})
    )
    twice = render_daemon_json(merge_daemon_json(once, {"runtimes": NVIDIA_RUNTIME}))
    assert once == twice


def test_missing_or_empty_daemon_json_gets_only_our_keys():
    assert merge_daemon_json(None, {"runtimes": NVIDIA_RUNTIME}) == {"runtimes": NVIDIA_RUNTIME}
    assert merge_daemon_json("  \n", {"a": 1}) == {"a": 1}


@pytest.mark.parametrize("broken", ['{"log-driver": "local",}', '["not", "an", "object"]'])
def test_broken_daemon_json_is_refused_not_overwritten(broken):
    with pytest.raises(ConfigError, match="fix or remove it"):
        merge_daemon_json(broken, {"runtimes": NVIDIA_RUNTIME})


# --- Proxmox LXC configs -----------------------------------------------------------------


def test_passthrough_lines_use_the_hosts_uvm_major():
    lines = passthrough_lines([0], MAJORS, every_gpu=True)
    assert lines[:2] == [
        "lxc.cgroup2.devices.allow: c 195:* rwm",
        "lxc.cgroup2.devices.allow: c 509:* rwm",
    ]
    assert "lxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file" in lines
    assert lines[-1].startswith("lxc.mount.entry: /dev/nvidia-modeset ")


def test_passing_some_gpus_allows_only_their_minors():
    lines = passthrough_lines([1], {"nvidia": 195, "nvidia-uvm": 237}, every_gpu=False)
    allows = [line for line in lines if "devices.allow" in line]
    assert allows == [
        "lxc.cgroup2.devices.allow: c 195:1 rwm",
        "lxc.cgroup2.devices.allow: c 195:255 rwm",
        "lxc.cgroup2.devices.allow: c 195:254 rwm",
        "lxc.cgroup2.devices.allow: c 237:* rwm",
    ]
    assert not any("dev/nvidia0 " in line for line in lines)


def test_no_uvm_major_means_no_config_yet():
    with pytest.raises(ConfigError, match="nvidia-uvm"):
        passthrough_lines([0], {"nvidia-frontend": 195}, every_gpu=True)


def test_config_without_gpu_lines_gets_them_appended_and_keeps_everything():
    before = conf("pve-lxc-no-nvidia-intel-dev.conf")
    lines = passthrough_lines([0], MAJORS, every_gpu=True)
    after, notes = merge_lxc_conf(before, lines, MAJORS)
    assert after == before + "\n".join(lines) + "\n"
    assert "tags:  \n" in after  # trailing spaces are the user's
    assert notes == []
    assert merge_lxc_conf(after, lines, MAJORS) == (after, [])


def test_existing_gpu_lines_are_replaced_in_place_after_a_driver_changed_the_uvm_major():
    before = conf("pve-lxc-privileged-1gpu-uvm510.conf")
    majors = {"nvidia-frontend": 195, "nvidia-uvm": 509, "nvidia-caps": 235}
    lines = passthrough_lines([0], majors, every_gpu=True)
    after, notes = merge_lxc_conf(before, lines, majors)
    kept = after.splitlines()
    start = kept.index(lines[0])
    assert kept[start : start + len(lines)] == lines  # where the old GPU lines stood
    assert kept[0] == "#try running speedtest first then run the following"
    assert "lxc.cap.drop: " in kept  # trailing space kept
    # MIG capability mounts and the loop devices are the user's, untouched.
    assert sum("nvidia-caps/nvidia-cap" in line for line in kept) == 2
    assert sum("dev/loop" in line for line in kept) == 9
    # The old uvm major is not the driver's any more: flagged, not silently deleted.
    assert "lxc.cgroup2.devices.allow: c 510:* rwm" in kept
    assert len(notes) == 1 and "major 510" in notes[0]
    assert merge_lxc_conf(after, lines, majors)[0] == after


def test_per_minor_rules_and_custom_mount_sources_are_replaced():
    before = conf("pve-lxc-unprivileged-2gpu-partial.conf")
    majors = {"nvidia": 195, "nvidia-uvm": 511}
    after, _ = merge_lxc_conf(before, passthrough_lines([0, 1], majors, every_gpu=True), majors)
    assert "c 195:0 rwm" not in after and "/lxc/102010/devices/nvidia0" not in after
    assert "lxc.mount.entry: /dev/nvidia1 dev/nvidia1 none bind,optional,create=file" in after
    # The Coral TPUs (major 120) and the idmap stay.
    assert "lxc.cgroup2.devices.allow: c 120:0 rwm" in after
    assert after.count("lxc.idmap:") == 6


def test_snapshot_sections_are_never_edited():
    current = conf("pve-lxc-no-nvidia-intel-dev.conf")
    snapshot = "\n[before-gpu]\narch: amd64\nlxc.cgroup2.devices.allow: c 195:* rwm\n"
    after, _ = merge_lxc_conf(current + snapshot, passthrough_lines([0], MAJORS, True), MAJORS)
    main, _, tail = after.partition("[before-gpu]")
    assert "c 509:* rwm" in main
    assert tail == "\narch: amd64\nlxc.cgroup2.devices.allow: c 195:* rwm\n"
    assert main.endswith("create=file\n\n")  # the blank line before the section stays


def test_hand_written_lines_in_lxc_syntax_are_recognised():
    # The write-ups' form: "=" and a trailing "# comment", which LXC would read as the value.
    before = "arch: amd64\nlxc.cgroup2.devices.allow = c 195:* rwm  # /dev/nvidia0\n"
    after, _ = merge_lxc_conf(before, passthrough_lines([0], MAJORS, True), MAJORS)
    assert "# /dev/nvidia0" not in after
    assert after.count("c 195:* rwm") == 1


# --- Proxmox's own device entries (devN:, PVE 8.1+) ----------------------------------------


def test_dev_entries_of_a_real_config_are_read_with_their_options():
    # A Jellyfin container passing /dev/dri with gid options (strongtz/i915-sriov-dkms#308).
    lines = conf("pve-lxc-no-nvidia-intel-dev.conf").splitlines()
    assert pve_dev_paths(lines) == {"/dev/dri/card0", "/dev/dri/renderD128"}
    assert pve_dev_paths(["dev3: path=/dev/nvidia-uvm,mode=0666", "mp0: /dev/x,mp=/y"]) == {
        "/dev/nvidia-uvm"
    }


def test_devices_dev_entries_pass_are_not_passed_again():
    # The real config above, with the NVIDIA device entries as Proxmox writes them
    # (pct set -devN /dev/nvidiaX,gid=44) for every node our lines would mount.
    before = conf("pve-lxc-no-nvidia-intel-dev.conf") + "".join(
        f"dev{n}: /dev/{node},gid=44\n"
        for n, node in enumerate(
            ["nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"], start=2
        )
    )
    after, notes = merge_lxc_conf(before, passthrough_lines([0], MAJORS, True), MAJORS)
    assert after == before and notes == []
    # Only nvidia-modeset left to pass: its mount and the frontend rule, no uvm rule.
    partial = before.replace("dev6: /dev/nvidia-modeset,gid=44\n", "")
    after, _ = merge_lxc_conf(partial, passthrough_lines([0], MAJORS, True), MAJORS)
    added = [line for line in after.splitlines() if line.startswith("lxc.")]
    assert added == [
        "lxc.cgroup2.devices.allow: c 195:* rwm",
        "lxc.mount.entry: /dev/nvidia-modeset dev/nvidia-modeset none bind,optional,create=file",
    ]


def test_old_lxc_lines_for_devices_dev_entries_pass_are_removed():
    before = (
        "arch: amd64\ndev0: /dev/nvidia0\n" + "\n".join(passthrough_lines([0], MAJORS, True)) + "\n"
    )
    after, _ = merge_lxc_conf(before, passthrough_lines([0], MAJORS, True), MAJORS)
    assert "lxc.mount.entry: /dev/nvidia0 " not in after
    assert "lxc.mount.entry: /dev/nvidiactl dev/nvidiactl" in after
    assert after.count("lxc.cgroup2.devices.allow: c 195:* rwm") == 1
