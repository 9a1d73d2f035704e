#!/usr/bin/env bash
# Builds the Vagrant lab's box: a Debian 12 root file system with a kernel, booted directly by
# libvirt (no boot loader), with Vagrant's user and insecure key, DHCP on the first NIC and
# ifupdown for the private network Vagrant configures. Plain Debian, as debian/bookworm64 is:
# the deploys install everything else, so a converge in the lab is a converge on a fresh host.
#
#   bash scripts/vagrant-box.sh OUT_PREFIX
#
# writes OUT_PREFIX.box (metadata.json, Vagrantfile, box.img, uncompressed: a compressed box
# costs a minute to pack and another to unpack, on every cold run), OUT_PREFIX.vmlinuz and
# OUT_PREFIX.initrd. scripts/vagrant-lab.sh keys its cache by this file's checksum, so any
# change here builds a new box. BOOT_DIR (required) is where the box's Vagrantfile points
# libvirt for the kernel and initrd: QEMU runs as libvirt's user, which cannot read a cache
# under root's home.
set -euo pipefail
OUT="${1:?usage: vagrant-box.sh OUT_PREFIX}"
: "${BOOT_DIR:?BOOT_DIR must name the folder libvirt boots the kernel and initrd from}"
MIRROR="${GPUFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
VAGRANT_INSECURE_KEY=https://raw.githubusercontent.com/hashicorp/vagrant/main/keys/vagrant.pub

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Debian's vagrant package carries the insecure public key Vagrant logs in with first (and
# replaces by a fresh key at the first `vagrant up`).
pubkey=$(find /usr/share /usr/lib -path '*vagrant*/keys/vagrant.pub' 2>/dev/null | head -1)
if [ -z "$pubkey" ]; then
    curl -fsSL "$VAGRANT_INSECURE_KEY" -o "$work/vagrant.pub"
    pubkey="$work/vagrant.pub"
fi
mmdebstrap --quiet --variant=minbase \
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
    bookworm "$work/root" "$MIRROR"
mkfs.ext4 -q -F -L root -d "$work/root" "$work/disk.raw" 8G
qemu-img convert -O qcow2 "$work/disk.raw" "$work/box.img"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": 8}\n' > "$work/metadata.json"
cat > "$work/Vagrantfile" <<RUBY
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.kernel = "$BOOT_DIR/vmlinuz"
    lv.initrd = "$BOOT_DIR/initrd.img"
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
  end
end
RUBY
tar -C "$work" -cf "$OUT.box.part" metadata.json Vagrantfile box.img
cp "$work/vmlinuz" "$OUT.vmlinuz.part"
cp "$work/initrd.img" "$OUT.initrd.part"
mv "$OUT.vmlinuz.part" "$OUT.vmlinuz"
mv "$OUT.initrd.part" "$OUT.initrd"
mv "$OUT.box.part" "$OUT.box"
