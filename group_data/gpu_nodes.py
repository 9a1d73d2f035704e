"""Defaults for GPU nodes."""

# Debian ships the NVIDIA driver and firmware in contrib/non-free/non-free-firmware.
apt_components = ["main", "contrib", "non-free", "non-free-firmware"]
