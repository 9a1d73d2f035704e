"""Jetson edge nodes: Jetson Linux, the NVIDIA runtime as Docker's default, tegrastats
metrics kept fresh and served by the node exporter."""

from gpufleet.roles.jetson import METRICS
from gpufleet.verify import assert_running, http_get


def applies_to(spec):
    return spec.os == "jetson-l4t"


def test_jetson_linux(target):
    release = target.host.file("/etc/nv_tegra_release")
    assert release.exists, "no /etc/nv_tegra_release: not Jetson Linux"


def test_docker_runs_containers_with_the_nvidia_runtime(target):
    assert_running(target, "docker")
    runtime = target.host.check_output("docker info --format '{{.DefaultRuntime}}'")
    assert runtime == "nvidia", f"Docker's default runtime is {runtime}"


def test_tegrastats_metrics_are_fresh_and_served(target):
    assert_running(target, "gpufleet-tegrastats")
    age = int(target.host.check_output(f"echo $(( $(date +%s) - $(stat -c %Y {METRICS}) ))"))
    assert age < 60, f"{METRICS} was last written {age} s ago"
    metrics = http_get(f"http://{target.address}:{target.spec.node_exporter_port}/metrics").text
    assert "gpufleet_tegra_gpu_load_percent" in metrics
