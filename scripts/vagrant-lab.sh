#!/usr/bin/env bash
# Proves the Vagrantfile with the libvirt provider: builds a Debian 12 box locally (cached,
# keyed by this script), brings up one lab VM with `vagrant up`, converges the baseline on it
# with pyinfra twice (the second run must change nothing), runs `gpufleet verify` against it,
# and destroys it. Run as root from the repository, with the nspawn lab down (both use
# 10.200.0.0/24):
#
#   sudo bash scripts/vagrant-lab.sh [lab-gpu-1]
#
# The VM runs under QEMU's software emulation unless GPUFLEET_LIBVIRT_KVM=1 says KVM works.
set -euo pipefail
cd "$(dirname "$0")/.."
HOST="${1:-lab-gpu-1}"
BIN="${VENV:-.venv}/bin"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/gpufleet/vagrant"
RECIPE=$(sha256sum "$0" | cut -c1-16)
BOX="$CACHE/gpufleet-bookworm-$RECIPE.box"
export VAGRANT_HOME="$CACHE/home"
export GPUFLEET_BOX="gpufleet/bookworm-$RECIPE"
BOOT="/var/lib/libvirt/boot/gpufleet-bookworm-$RECIPE"
VAGRANT_INSECURE_KEY=https://raw.githubusercontent.com/hashicorp/vagrant/main/keys/vagrant.pub

need=()
command -v vagrant >/dev/null || need+=(vagrant)
[ -d /usr/share/vagrant-plugins/plugins.d ] && grep -rqs libvirt /usr/share/vagrant-plugins \
    || need+=(vagrant-libvirt)
command -v libvirtd >/dev/null || need+=(libvirt-daemon-system)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if "$BIN/gpufleet" lab status >/dev/null 2>&1 || ip link show gflab0 >/dev/null 2>&1; then
    echo "the nspawn lab is up and holds 10.200.0.0/24: run 'make lab-down' first" >&2
    exit 1
fi

# libvirt: where systemd runs it, it is already up; otherwise start the daemons by hand.
if ! virsh -c qemu:///system list >/dev/null 2>&1; then
    virtlogd -d
    libvirtd -d
    for _ in $(seq 50); do virsh -c qemu:///system list >/dev/null 2>&1 && break; sleep 0.2; done
fi
virsh -c qemu:///system pool-info default >/dev/null 2>&1 || {
    virsh -c qemu:///system pool-define-as default dir --target /var/lib/libvirt/images
    virsh -c qemu:///system pool-build default
    virsh -c qemu:///system pool-start default
}
# Software emulation unless told KVM works here (GPUFLEET_LIBVIRT_KVM=1).
[ -n "${GPUFLEET_LIBVIRT_KVM:-}" ] || export GPUFLEET_LIBVIRT_EMULATED=1

# 1. The box: a Debian 12 root file system with a kernel, booted directly (no boot loader),
#    with Vagrant's user and insecure key, DHCP on the first NIC, ifupdown for the second.
if [ ! -f "$BOX" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    pubkey=$(find /usr/share /usr/lib -path '*vagrant*/keys/vagrant.pub' 2>/dev/null | head -1)
    [ -n "$pubkey" ] || { curl -fsSL "$VAGRANT_INSECURE_KEY" -o "$work/vagrant.pub"; pubkey="$work/vagrant.pub"; }
    mmdebstrap --variant=minbase \
        --include=systemd-sysv,udev,dbus,openssh-server,sudo,python3,iproute2,ifupdown,isc-dhcp-client,ca-certificates,linux-image-amd64,initramfs-tools \
        --customize-hook='chroot "$1" useradd -m -s /bin/bash vagrant' \
        --customize-hook="install -d -m 700 \"\$1/home/vagrant/.ssh\" && install -m 600 $pubkey \"\$1/home/vagrant/.ssh/authorized_keys\"" \
        --customize-hook='chroot "$1" chown -R vagrant:vagrant /home/vagrant/.ssh' \
        --customize-hook='echo "vagrant ALL=(ALL) NOPASSWD: ALL" > "$1/etc/sudoers.d/vagrant"' \
        --customize-hook='printf "auto lo\niface lo inet loopback\nauto eth0\niface eth0 inet dhcp\n" > "$1/etc/network/interfaces"' \
        --customize-hook='echo "/dev/vda / ext4 defaults 0 1" > "$1/etc/fstab"' \
        --customize-hook='echo vagrant-box > "$1/etc/hostname"' \
        --customize-hook='printf "127.0.0.1 localhost\n::1 localhost ip6-localhost\n" > "$1/etc/hosts"' \
        --customize-hook='cp -L "$1/vmlinuz" "$1/initrd.img" '"$work/" \
        bookworm "$work/root" http://deb.debian.org/debian
    mkfs.ext4 -q -F -L root -d "$work/root" "$work/disk.raw" 4G
    qemu-img convert -O qcow2 "$work/disk.raw" "$work/box.img"
    printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": 4}\n' > "$work/metadata.json"
    # QEMU runs as libvirt's user, which cannot read the box folder under root's home: the
    # kernel and initrd are booted from libvirt's own boot folder (copied there below).
    cat > "$work/Vagrantfile" <<RUBY
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.kernel = "$BOOT/vmlinuz"
    lv.initrd = "$BOOT/initrd.img"
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
  end
end
RUBY
    mkdir -p "$CACHE"
    tar -C "$work" -czf "$BOX.part" metadata.json Vagrantfile box.img vmlinuz initrd.img
    mv "$BOX.part" "$BOX"
fi
vagrant box list 2>/dev/null | grep -q "^$GPUFLEET_BOX " || vagrant box add -f --name "$GPUFLEET_BOX" "$BOX"
if [ ! -f "$BOOT/initrd.img" ]; then
    mkdir -p "$BOOT"
    tar -C "$BOOT" -xzf "$BOX" vmlinuz initrd.img
    chmod 644 "$BOOT/vmlinuz" "$BOOT/initrd.img"
fi

# 2. Up, converge twice, verify, destroy.
mkdir -p "$HOME/.local/state/gpufleet/lab"
[ -f "$HOME/.local/state/gpufleet/lab/id_ed25519" ] \
    || ssh-keygen -q -t ed25519 -N '' -f "$HOME/.local/state/gpufleet/lab/id_ed25519"
cleanup() {
    vagrant destroy -f "$HOST" >/dev/null 2>&1 || true
    # The networks Vagrant made for 10.200.0.0/24 would shadow the nspawn lab's bridge.
    for net in $(virsh -c qemu:///system net-list --all --name); do
        if virsh -c qemu:///system net-dumpxml "$net" | grep -q "address='10.200.0.1'"; then
            virsh -c qemu:///system net-destroy "$net" >/dev/null 2>&1 || true
            virsh -c qemu:///system net-undefine "$net" >/dev/null 2>&1 || true
        fi
    done
}
trap cleanup EXIT
started=$(date +%s)
vagrant up "$HOST" --provider=libvirt
echo "vagrant up $HOST: $(( $(date +%s) - started )) s"
"$BIN/pyinfra" -y inventory/lab.py deploys/common.py --limit "$HOST"
second=$("$BIN/pyinfra" -y --json inventory/lab.py deploys/common.py --limit "$HOST")
changed=$(python3 -c 'import json,sys; r=json.loads(sys.stdin.read())["results"]["operations"]; print(sum(len(o["success"]) for o in r))' <<<"$second")
echo "second run: $changed changes"
[ "$changed" = 0 ]
"$BIN/gpufleet" verify inventory/lab.py --limit "$HOST" --suite baseline \
    --junit-xml "${JUNIT_XML:-$CACHE/verify.xml}"
