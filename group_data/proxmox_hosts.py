"""Defaults for Proxmox VE hosts."""

# The NVIDIA driver and its firmware are in Debian's contrib/non-free/non-free-firmware; a
# Proxmox VE host is Debian 12 underneath and gets them from the same archive (its own
# kernel headers come from the Proxmox VE repository, proxmox.repository).
apt_components = ["main", "contrib", "non-free", "non-free-firmware"]
