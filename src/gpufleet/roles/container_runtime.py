"""Docker and the NVIDIA Container Toolkit: containers that get GPUs with ``--gpus all``.

Runbook it replaces: install Docker; add NVIDIA's libnvidia-container repository with its key
in a keyring and ``signed-by`` (and remove what older instructions left, which makes apt fail
with "Conflicting values set for option Signed-By"); install the toolkit at a held version;
register the ``nvidia`` runtime in daemon.json without losing the user's keys; keep the
containers' GPUs across ``systemctl daemon-reload`` (NVIDIA's /dev/char workaround); restart
Docker only when daemon.json changed.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from gpufleet.configs import NVIDIA_RUNTIME
from gpufleet.facts.gpu import detected_gpus
from gpufleet.models import HostSpec
from gpufleet.operations import docker
from gpufleet.paths import template
from gpufleet.roles.steps import KEY_TOOLS, run_service, signing_key

KEYRINGS = "/etc/apt/keyrings"
TOOLKIT_KEYRING = f"{KEYRINGS}/nvidia-container-toolkit.asc"
TOOLKIT_LIST = "/etc/apt/sources.list.d/nvidia-container-toolkit.list"
STALE_TOOLKIT_FILES = (
    "/etc/apt/sources.list.d/nvidia-docker.list",
    "/etc/apt/sources.list.d/libnvidia-container.list",
    "/etc/apt/sources.list.d/nvidia-container-runtime.list",
    "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg",
    "/etc/apt/trusted.gpg.d/nvidia-container-toolkit-keyring.gpg",
)
"""What NVIDIA's older install instructions left: the same repository without ``signed-by``
(or signed by another keyring file) next to ours makes every ``apt-get update`` fail."""
TOOLKIT_PACKAGES = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)
DEV_CHAR_RULE = "/etc/udev/rules.d/71-nvidia-dev-char.rules"
NVIDIA_CTK = "/usr/bin/nvidia-ctk"
DOCKER_KEYRING = f"{KEYRINGS}/docker.asc"
DOCKER_CE_PACKAGES = [
    "docker-ce",
    "docker-ce-cli",
    "containerd.io",
    "docker-buildx-plugin",
    "docker-compose-plugin",
]


def docker_engine(spec: HostSpec) -> None:
    if spec.docker.source == "docker":
        distribution = host.get_fact(LinuxDistribution)
        distro = (distribution["name"] or "debian").lower()
        files.directory(name="apt keyrings folder", path=KEYRINGS, mode="755")
        key = signing_key(
            "Docker",
            f"{spec.docker.repo_url}/{distro}/gpg",
            DOCKER_KEYRING,
            spec.docker.key_fingerprint,
        )
        source = files.template(
            name="Docker's apt repository",
            src=template("docker/docker.list.j2"),
            dest="/etc/apt/sources.list.d/docker.list",
            mode="644",
            arch="arm64" if spec.arch == "aarch64" else "amd64",
            keyring=DOCKER_KEYRING,
            repo_url=spec.docker.repo_url,
            distro=distro,
            suite=distribution["release_meta"].get("VERSION_CODENAME", ""),
        )
        apt.update(name="Refresh apt lists for Docker", _if=any_changed(key, source))
        apt.packages(name="Install Docker CE", packages=DOCKER_CE_PACKAGES, no_recommends=True)
    else:
        apt.packages(
            name="Install Docker (docker.io)",
            packages=["docker.io", *KEY_TOOLS],
            no_recommends=True,
        )


def container_toolkit(spec: HostSpec) -> bool:
    """Repository, key and packages of the toolkit; True when the ``nvidia`` runtime is set."""
    toolkit = spec.container_toolkit
    gpus = detected_gpus()
    if not toolkit.enabled:
        host.noop("container_toolkit.enabled is false: NVIDIA Container Toolkit skipped")
        return False
    if not gpus["pci"] and not spec.nvidia_driver.force:
        host.noop("no NVIDIA GPU detected: NVIDIA Container Toolkit skipped")
        return False
    stale = [
        files.file(name=f"Remove stale {path}", path=path, present=False)
        for path in STALE_TOOLKIT_FILES
    ]
    files.directory(name="apt keyrings folder", path=KEYRINGS, mode="755")
    key = signing_key(
        "NVIDIA Container Toolkit", toolkit.key_url, TOOLKIT_KEYRING, toolkit.key_fingerprint
    )
    source = files.template(
        name="NVIDIA Container Toolkit apt repository",
        src=template("docker/nvidia-container-toolkit.list.j2"),
        dest=TOOLKIT_LIST,
        mode="644",
        keyring=TOOLKIT_KEYRING,
        repo_url=toolkit.repo_url,
    )
    apt.update(
        name="Refresh apt lists for the NVIDIA Container Toolkit",
        _if=any_changed(key, source, *stale),
    )
    if toolkit.install_packages:
        apt.packages(
            name=f"Install NVIDIA Container Toolkit {toolkit.version}",
            packages=[f"{package}={toolkit.version}" for package in TOOLKIT_PACKAGES],
            no_recommends=True,
        )
        keep_gpus_across_daemon_reload(spec)
    else:
        host.noop(
            f"container_toolkit.install_packages is false: {toolkit.repo_url} is set up, "
            "the packages are not installed"
        )
    return True


def systemd_cgroups(daemon: dict[str, object]) -> bool:
    """Whether Docker manages its containers' cgroups through systemd: its default on a
    cgroup v2 host (every release gpufleet deploys), unless daemon.json asks for cgroupfs."""
    options = daemon.get("exec-opts", [])
    return "native.cgroupdriver=cgroupfs" not in (options if isinstance(options, list) else [])


def keep_gpus_across_daemon_reload(spec: HostSpec) -> None:
    """NVIDIA's workaround for containers that lose their GPUs on ``systemctl daemon-reload``
    where systemd manages their cgroups (nvidia-docker issue 1730, the toolkit's
    troubleshooting guide): /dev/char links to the device nodes, made now and by a udev rule
    each time the driver binds."""
    if not systemd_cgroups(dict(spec.docker.daemon)):
        host.noop("Docker's cgroups are cgroupfs: the /dev/char links are not needed")
        return
    rule = files.template(
        name="Keep containers' GPUs across daemon-reload (udev rule for /dev/char links)",
        src=template("docker/71-nvidia-dev-char.rules.j2"),
        dest=DEV_CHAR_RULE,
        mode="644",
        nvidia_ctk=NVIDIA_CTK,
    )
    if detected_gpus()["driver_version"]:
        server.shell(
            name="Link the NVIDIA device nodes in /dev/char",
            commands=[f"{NVIDIA_CTK} system create-dev-char-symlinks --create-all"],
            _if=rule.did_change,
        )
    else:
        host.noop("NVIDIA module not loaded: the udev rule makes the /dev/char links when it is")


@deploy("Docker and NVIDIA Container Toolkit")
def container_runtime(spec: HostSpec) -> None:
    """
    Docker, and on GPU hosts the NVIDIA Container Toolkit with Docker's ``nvidia`` runtime.

    .. code:: python

        container_runtime(host_spec())
    """
    if not spec.docker.enabled:
        host.noop("docker.enabled is false: Docker and the container toolkit skipped")
        return
    docker_engine(spec)
    settings = dict(spec.docker.daemon)
    if container_toolkit(spec):
        settings = {**settings, "runtimes": {**NVIDIA_RUNTIME}}
    if settings:
        config = docker.daemon_json(
            name="Merge gpufleet's keys into daemon.json", settings=settings
        )
        run_service("docker", config)
    else:
        systemd.service(name="Run docker", service="docker", running=True, enabled=True)
