"""A Jetson edge node: Jetson Linux as NVIDIA flashed it, its own container runtime, and its
GPU's metrics from tegrastats.

Runbook it replaces: check ``/etc/nv_tegra_release`` by eye, skip every desktop-GPU step (no
driver, no DKMS: the GPU driver is part of L4T), ``apt install nvidia-container``, point
Docker at the NVIDIA runtime, and watch ``tegrastats`` in a terminal. Here the release is a
fact that stops the deploy on anything that is not Jetson Linux, and tegrastats feeds
Prometheus through the node exporter.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import apt, files

from gpufleet import sandbox, tegrastats
from gpufleet.configs import NVIDIA_RUNTIME
from gpufleet.facts.jetson import JetsonRelease
from gpufleet.models import HostSpec
from gpufleet.operations import docker
from gpufleet.paths import template
from gpufleet.roles.baseline import NODE_EXPORTER_TEXTFILES
from gpufleet.roles.steps import run_service, run_unit

EXPORTER = "/usr/local/lib/gpufleet/tegrastats.py"
METRICS = f"{NODE_EXPORTER_TEXTFILES}/gpufleet_tegra.prom"
NVIDIA_DEFAULT_RUNTIME = {"runtimes": NVIDIA_RUNTIME, "default-runtime": "nvidia"}
"""On a Jetson every container wants the GPU (L4T's CUDA comes in through the runtime)."""


@deploy("Jetson edge node")
def jetson_node(spec: HostSpec) -> None:
    """
    Converge a Jetson: confirm Jetson Linux, set up its container runtime, export tegrastats.

    .. code:: python

        jetson_node(host_spec())
    """
    release = host.get_fact(JetsonRelease)
    if release is None:
        raise DeployError(
            f"{spec.name}: os is jetson-l4t but /etc/nv_tegra_release is missing: this is not "
            "Jetson Linux; flash JetPack (SDK Manager or the SD card image), or fix os"
        )
    jetpack = f"JetPack {release['jetpack']}" if release["jetpack"] else "JetPack unknown"
    host.noop(f"Jetson Linux R{release['l4t']} ({jetpack}): no discrete-GPU driver steps")

    # 1. Containers: NVIDIA's runtime from L4T's own apt repository, Docker from Ubuntu's.
    apt.packages(
        name="NVIDIA container runtime (L4T) and Docker",
        packages=["nvidia-container", "docker.io"],
        no_recommends=True,
    )
    daemon = docker.daemon_json(
        name="Docker uses the NVIDIA runtime by default", settings=NVIDIA_DEFAULT_RUNTIME
    )
    run_service("docker", daemon)

    # 2. GPU metrics: tegrastats through the node exporter's textfile collector.
    files.directory(name="Metrics folder", path=NODE_EXPORTER_TEXTFILES, mode="755")
    script = files.put(
        name="tegrastats exporter",
        src=tegrastats.__file__,
        dest=EXPORTER,
        mode="755",
    )
    unit = files.template(
        name="tegrastats exporter unit",
        src=template("jetson/gpufleet-tegrastats.service.j2"),
        dest="/etc/systemd/system/gpufleet-tegrastats.service",
        mode="644",
        script=EXPORTER,
        out=METRICS,
        interval_ms=5000,
        sandbox=sandbox.tegrastats(NODE_EXPORTER_TEXTFILES),
    )
    run_unit("gpufleet-tegrastats", unit, script)
