"""GPU nodes: Docker, the NVIDIA driver the inventory declares, the container toolkit, DCGM."""

import json

from gpufleet.catalogue import fleet_catalogue
from gpufleet.checks import gets_dcgm_exporter
from gpufleet.facts.gpu import parse_smi_csv
from gpufleet.verify import applies, gpus_differ, http_get


def applies_to(spec):
    return "gpu_nodes" in spec.groups


def _nvidia(spec):
    return spec.hardware.nvidia_gpu_count > 0


@applies(lambda spec: spec.docker.enabled)
def test_docker_runs(target):
    service = target.host.service("docker")
    assert service.is_running and service.is_enabled
    assert target.host.run("docker info --format '{{.ServerVersion}}'").rc == 0


@applies(_nvidia)
def test_nvidia_smi_sees_every_declared_gpu(target):
    nvidia = [a for a in target.spec.hardware.accelerators if a.kind == "nvidia"]
    declared = [a.model for a in nvidia for _ in range(a.count)]
    reply = target.host.run("nvidia-smi --query-gpu=name,pci.device_id --format=csv,noheader")
    assert reply.rc == 0, f"nvidia-smi failed: {(reply.stdout + reply.stderr).strip()[:120]}"
    rows, _ = parse_smi_csv(reply.stdout.splitlines(), ["name", "pci.device_id"])
    seen = [(row["name"] or "", row["pci.device_id"]) for row in rows]
    difference = gpus_differ(declared, seen, fleet_catalogue())
    assert difference is None, difference


@applies(lambda spec: _nvidia(spec) and spec.lxc_guest is None)
def test_nouveau_is_blacklisted(target):
    config = target.host.run("modprobe --showconfig").stdout
    assert "blacklist nouveau" in config


@applies(lambda spec: _nvidia(spec) and spec.docker.enabled and spec.container_toolkit.enabled)
def test_docker_has_the_nvidia_runtime(target):
    info = json.loads(target.host.check_output("docker info --format '{{json .}}'"))
    assert "nvidia" in info["Runtimes"], f"runtimes: {sorted(info['Runtimes'])}"


@applies(lambda spec: gets_dcgm_exporter(spec) and spec.docker.enabled)
def test_dcgm_exporter_serves_gpu_metrics(target):
    port = target.spec.dcgm_exporter.port
    reply = http_get(f"http://{target.address}:{port}/metrics", timeout=10)
    assert reply.status_code == 200
    assert "DCGM_FI_DEV_GPU_TEMP" in reply.text
