#!/usr/bin/env bash
# The Vagrant lab as CI runs it (`make vagrant-test`): builds a Debian 12 box locally (cached,
# keyed by scripts/vagrant-box.sh), brings up one VM of the Vagrantfile with vagrant-libvirt,
# converges deploys/gpu_node.py on it with pyinfra, runs it again and fails unless it changes
# nothing, runs `gpufleet verify` against it and destroys it. Whatever happens, on the way out
# it removes the VM, the box's volume in libvirt's pool, the networks Vagrant made, the kernel
# it booted, and stops the libvirt daemons it started. Run as root from the repository:
#
#   sudo bash scripts/vagrant-lab.sh [vm-gpu-1]
#
# The VM's network, 10.201.0.0/24, is not the nspawn lab's: either lab may be up meanwhile.
# The VM runs under QEMU's software emulation unless GPUFLEET_LIBVIRT_KVM=1 says KVM works.
# Every step has a time-out twice what it took on a cold 2-core machine (docs/vagrant.md).
set -euo pipefail
cd "$(dirname "$0")/.."
HOST="${1:-vm-gpu-1}"
INVENTORY=inventory/vagrant.py
BIN="${VENV:-.venv}/bin"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/gpufleet/vagrant"
RECIPE=$(sha256sum scripts/vagrant-box.sh | cut -c1-16)
BOX_NAME="bookworm-$RECIPE"
BOX="$CACHE/gpufleet-$BOX_NAME"
JUNIT_XML="${JUNIT_XML:-vagrant-verify-results.xml}"
export VAGRANT_HOME="$CACHE/home"
export VAGRANT_DEFAULT_PROVIDER=libvirt
# No calls home: this lab's box is local, and the machines CI runs on reach package mirrors only.
export VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_BOX_UPDATE_CHECK_DISABLE=1
export GPUFLEET_BOX="gpufleet/$BOX_NAME"
export BOOT_DIR="/var/lib/libvirt/boot/gpufleet-$BOX_NAME"
export PYINFRA_PROGRESS=off
VIRSH=(virsh -q -c qemu:///system)
NETWORKS=(gpufleet-vagrant gpufleet-vagrant-mgmt)

# Time-outs in seconds: twice the cold run measured on a 2-core Debian 12 machine (docs/vagrant.md).
T_INSTALL=240
T_BOX=480
T_UP=480
T_CONVERGE=900
T_RECONVERGE=240
T_VERIFY=240
T_DESTROY=180

started_at=$SECONDS
log() { echo "vagrant-lab: $*" >&2; }
# step NAME SECONDS COMMAND...: the command under a time-out, and how long it took.
step() {
    local name=$1 limit=$2 began=$SECONDS
    shift 2
    log "$name (time-out ${limit} s)"
    if ! timeout --kill-after=30 "$limit" "$@"; then
        log "$name FAILED after $((SECONDS - began)) s"
        return 1
    fi
    log "$name took $((SECONDS - began)) s"
}

[ "$(id -u)" = 0 ] || { echo "run as root: it installs packages and starts libvirt" >&2; exit 1; }

# 1. Host tools, from Debian.
need=()
command -v vagrant >/dev/null || need+=(vagrant)
ls /usr/share/rubygems-integration/all/gems 2>/dev/null | grep -q '^vagrant-libvirt-' \
    || need+=(vagrant-libvirt)
command -v libvirtd >/dev/null || need+=(libvirt-daemon-system)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
[ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
    install_tools() {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    }
    export -f install_tools
    step "install ${need[*]}" "$T_INSTALL" bash -c 'install_tools "$@"' _ "${need[@]}"
fi

# 2. libvirt: where systemd runs it, it is already up; otherwise start the daemons, and stop
#    them on the way out.
started_daemons=()
defined_pool=
ours=  # set once no VM of another run is in the way: from then on, cleanup removes the lab
forward_before=$(cat /proc/sys/net/ipv4/ip_forward)
# The VM, and what vagrant could not remove (a run killed half-way, a lost .vagrant folder).
remove_lab() {
    if [ -d .vagrant ] || "${VIRSH[@]}" list --all --name 2>/dev/null | grep -q '^gpufleet-'; then
        timeout "$T_DESTROY" vagrant destroy -f --no-tty >/dev/null 2>&1
    fi
    for domain in $("${VIRSH[@]}" list --all --name 2>/dev/null | grep '^gpufleet-'); do
        "${VIRSH[@]}" destroy "$domain" >/dev/null 2>&1
        "${VIRSH[@]}" undefine "$domain" --remove-all-storage >/dev/null 2>&1
    done
    for volume in $("${VIRSH[@]}" vol-list default 2>/dev/null | awk '{print $1}' | grep '^gpufleet-'); do
        "${VIRSH[@]}" vol-delete --pool default "$volume" >/dev/null 2>&1
    done
    for network in "${NETWORKS[@]}"; do
        "${VIRSH[@]}" net-destroy "$network" >/dev/null 2>&1
        "${VIRSH[@]}" net-undefine "$network" >/dev/null 2>&1
    done
    rm -rf "$BOOT_DIR" .vagrant/machines/"$HOST"
}
# A libvirtd that starts adds its (empty, once its networks are gone) LIBVIRT_* chains to
# iptables, and the iptables-nft tables holding them; a daemon this script started leaves none.
tables_before=$(nft list tables 2>/dev/null || true)
remove_libvirt_firewall() {
    local tool table chain
    for _ in $(seq 50); do pgrep -x libvirtd >/dev/null || break; sleep 0.2; done
    for tool in iptables ip6tables; do
        command -v "$tool" >/dev/null || continue
        for table in filter nat mangle; do
            "$tool" -t "$table" -S 2>/dev/null | grep -E '^-A [A-Z]+ -j LIBVIRT_' \
                | while read -r _ parent _ chain; do "$tool" -t "$table" -D "$parent" -j "$chain"; done
            for chain in $("$tool" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^LIBVIRT_/ {print $2}'); do
                "$tool" -t "$table" -F "$chain"
                "$tool" -t "$table" -X "$chain"
            done
        done
    done
    nft list tables 2>/dev/null | while read -r _ family table; do
        grep -qx "table $family $table" <<<"$tables_before" && continue
        # Made during this run: removed when no rule is left in it.
        nft list table "$family" "$table" | grep -qvE '^\s*(table|chain|type|\}|$)' \
            || nft delete table "$family" "$table"
    done
}
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    log "cleaning up"
    [ -z "$ours" ] || remove_lab
    if [ -n "$defined_pool" ]; then
        "${VIRSH[@]}" pool-destroy default >/dev/null 2>&1
        "${VIRSH[@]}" pool-undefine default >/dev/null 2>&1
    fi
    for daemon in "${started_daemons[@]}"; do
        pid=$(cat "/run/$daemon.pid" 2>/dev/null) && kill "$pid" 2>/dev/null
    done
    [ ${#started_daemons[@]} -eq 0 ] || remove_libvirt_firewall
    # libvirt turns forwarding on for its NAT networks; the nspawn lab needs it on while it runs.
    ip link show gflab0 >/dev/null 2>&1 || echo "$forward_before" >/proc/sys/net/ipv4/ip_forward
    log "done in $((SECONDS - started_at)) s, exit status $rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! "${VIRSH[@]}" list >/dev/null 2>&1; then
    for daemon in virtlogd libvirtd; do
        if ! pgrep -x "$daemon" >/dev/null; then
            "$daemon" -d
            started_daemons=("$daemon" "${started_daemons[@]}")
        fi
    done
    for _ in $(seq 100); do "${VIRSH[@]}" list >/dev/null 2>&1 && break; sleep 0.2; done
fi
if ! "${VIRSH[@]}" pool-info default >/dev/null 2>&1; then
    mkdir -p /var/lib/libvirt/images
    "${VIRSH[@]}" pool-define-as default dir --target /var/lib/libvirt/images >/dev/null
    "${VIRSH[@]}" pool-start default >/dev/null
    defined_pool=1
fi
"${VIRSH[@]}" pool-start default >/dev/null 2>&1 || true  # defined but inactive
if "${VIRSH[@]}" list --all --name | grep -q '^gpufleet-'; then
    echo "a Vagrant lab VM is already defined (virsh list --all): 'vagrant destroy -f' it first" >&2
    exit 1
fi
ours=1
# Software emulation unless told KVM works here (GPUFLEET_LIBVIRT_KVM=1).
[ -n "${GPUFLEET_LIBVIRT_KVM:-}" ] || export GPUFLEET_LIBVIRT_EMULATED=1

# 3. The box, built once per recipe; boxes of older recipes are removed from the cache.
mkdir -p "$CACHE"
if [ ! -f "$BOX.box" ]; then
    find "$CACHE" -maxdepth 1 -name 'gpufleet-bookworm-*' ! -name "gpufleet-$BOX_NAME.*" -delete
    step "build the box" "$T_BOX" bash scripts/vagrant-box.sh "$BOX"
fi
if ! vagrant box list 2>/dev/null | grep -q "^$GPUFLEET_BOX "; then
    for old in $(vagrant box list 2>/dev/null | awk '$1 ~ /^gpufleet\/bookworm-/ {print $1}'); do
        vagrant box remove -f --all "$old" >/dev/null
    done
    step "vagrant box add" "$T_BOX" vagrant box add --no-tty -f --name "$GPUFLEET_BOX" "$BOX.box"
fi
mkdir -p "$BOOT_DIR"
install -m 644 "$BOX.vmlinuz" "$BOOT_DIR/vmlinuz"
install -m 644 "$BOX.initrd" "$BOOT_DIR/initrd.img"

# 4. Up, converge, converge again (no change), verify; destroyed on the way out.
mkdir -p "$HOME/.local/state/gpufleet/lab"
[ -f "$HOME/.local/state/gpufleet/lab/id_ed25519" ] \
    || ssh-keygen -q -t ed25519 -N '' -f "$HOME/.local/state/gpufleet/lab/id_ed25519"
step "vagrant up $HOST" "$T_UP" vagrant up --no-tty "$HOST" --provider=libvirt
step "first converge of deploys/gpu_node.py" "$T_CONVERGE" \
    "$BIN/pyinfra" -y "$INVENTORY" deploys/gpu_node.py --limit "$HOST"
report=$(mktemp)
step "second converge of deploys/gpu_node.py" "$T_RECONVERGE" \
    "$BIN/pyinfra" -y --json "$INVENTORY" deploys/gpu_node.py --limit "$HOST" >"$report"
"$BIN/python" - "$report" <<'PY'
import json
import sys

report = json.load(open(sys.argv[1]))
changed = [
    f"{op['name']} on {h}" for op in report["results"]["operations"] for h in op["success"]
]
print(f"vagrant-lab: second converge: {len(changed)} changes")
for line in changed:
    print(f"  changed: {line}")
sys.exit(1 if changed else 0)
PY
rm -f "$report"
step "gpufleet verify" "$T_VERIFY" "$BIN/gpufleet" verify "$INVENTORY" --limit "$HOST" \
    --suite baseline gpu_node --junit-xml "$JUNIT_XML"
