#!/usr/bin/env bash
# Installs what the control machine needs for the local lab (Debian/Ubuntu, as root).
set -euo pipefail
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v nft >/dev/null || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
command -v ssh >/dev/null || need+=(openssh-client)
command -v gpg >/dev/null || need+=(gnupg)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
# The arm64 lab host (inventory/lab_pi.py) runs under QEMU's user-mode emulation.
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v arch-test >/dev/null || need+=(arch-test)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
