"""Every systemd unit gpufleet writes, rendered as its role renders it and rated by
``systemd-analyze security --offline=yes`` (systemd's own exposure score, 0 safe to 10 unsafe):
4.9 or below, a unit that opens a GPU or runs a container 6.9 or below. ``systemd-analyze
verify`` reads each one too, so that a misspelt setting, which systemd ignores, fails here."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpufleet import sandbox
from gpufleet.paths import render_template
from gpufleet.roles.baseline import NODE_EXPORTER_TEXTFILES

ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (apt install systemd)"
)

THRESHOLD = {"service": 4.9, "gpu": 6.9, "amd": 6.9, "container": 6.9}
"""The highest exposure each kind of unit may have."""
NOT_INSTALLED_HERE = (
    "is not executable",
    "Unit docker.service not found",
    "Unit ray.service not found",
)
"""What verify reports of this machine, not of the unit: the servers and Docker are not
installed where the tests run."""
EXPOSURE = re.compile(r"Overall exposure level for \S+: (?P<score>\d+\.\d+)")


@dataclass(frozen=True)
class Unit:
    name: str
    template: str
    kind: str
    variables: dict[str, object]


LLAMA_COMMAND = ["/usr/local/bin/llama-server", "--model", "/var/lib/llama.cpp/models/m.gguf"]
VLLM_COMMAND = ["/opt/vllm/bin/vllm", "serve", "Qwen/Qwen2.5-7B-Instruct", "--port", "8000"]
DOCKER_VLLM = ["/usr/bin/docker", "run", "--rm", "--name", "vllm", "vllm/vllm-openai:v0.9.2"]

UNITS = [
    Unit(
        "llama-server.service",
        "llamacpp/llama-server.service.j2",
        "service",
        dict(
            served="m",
            run_as="gpufleet",
            command=LLAMA_COMMAND,
            environment=[],
            cache_directory=None,
            memory_max="8G",
            env_file="/etc/gpufleet/llama-server.env",
            sandbox=sandbox.llama_server("none", LLAMA_COMMAND[2]),
        ),
    ),
    Unit(
        "llama-server.service",
        "llamacpp/llama-server.service.j2",
        "gpu",
        dict(
            served="m",
            run_as="gpufleet",
            command=[*LLAMA_COMMAND[:2], "/home/me/models/m.gguf"],
            environment=[],
            cache_directory=None,
            memory_max="8G",
            env_file=None,
            sandbox=sandbox.llama_server("nvidia", "/home/me/models/m.gguf", gpus=2),
        ),
    ),
    Unit(
        "llama-server.service",
        "llamacpp/llama-server.service.j2",
        "amd",
        dict(
            served="m",
            run_as="gpufleet",
            command=LLAMA_COMMAND,
            environment=[
                ("MESA_SHADER_CACHE_DIR", "/var/cache/llama-server"),
                ("GGML_VK_VISIBLE_DEVICES", "0"),
            ],
            cache_directory="llama-server",
            memory_max="8G",
            env_file=None,
            sandbox=sandbox.llama_server("amd", LLAMA_COMMAND[2]),
        ),
    ),
    Unit(
        "ollama.service",
        "ollama/ollama.service.j2",
        "service",
        dict(binary="/usr/local/bin/ollama", sandbox=sandbox.ollama("none", "/usr/share/ollama")),
    ),
    Unit(
        "ollama.service",
        "ollama/ollama.service.j2",
        "gpu",
        dict(binary="/usr/local/bin/ollama", sandbox=sandbox.ollama("nvidia", "/usr/share/ollama")),
    ),
    Unit(
        "ollama.service",
        "ollama/ollama.service.j2",
        "gpu",
        dict(binary="/usr/local/bin/ollama", sandbox=sandbox.ollama("amd", "/usr/share/ollama")),
    ),
    Unit(
        "vllm.service",
        "vllm/vllm.service.j2",
        "gpu",
        dict(
            served="qwen",
            run_as="gpufleet",
            env_file="/etc/gpufleet/vllm.env",
            command=VLLM_COMMAND,
            environment=[],
            ray=None,
            after_docker=False,
            memory_max="16G",
            sandbox=sandbox.vllm(False, "/var/lib/gpufleet", "/var/lib/vllm"),
        ),
    ),
    Unit(
        "vllm.service",
        "vllm/vllm.service.j2",
        "container",
        dict(
            served="qwen",
            run_as="root",
            env_file="/etc/gpufleet/vllm.env",
            command=DOCKER_VLLM,
            environment=[],
            ray=None,
            after_docker=True,
            memory_max=None,
            sandbox=sandbox.vllm(True, "/var/lib/gpufleet", "/var/lib/vllm"),
        ),
    ),
    Unit(
        "triton.service",
        "triton/triton.service.j2",
        "container",
        dict(
            image="nvcr.io/nvidia/tritonserver:25.01-py3",
            repository="/srv/triton/models",
            http_port=8000,
            grpc_port=8001,
            metrics_port=8002,
            memory="8G",
            sandbox=sandbox.docker_client(),
        ),
    ),
    Unit(
        "dcgm-exporter.service",
        "dcgm/dcgm-exporter.service.j2",
        "container",
        dict(
            image="nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-4.1.3-ubuntu22.04",
            address="127.0.0.1",
            port=9400,
            sandbox=sandbox.docker_client(),
        ),
    ),
    Unit(
        "gpufleet-tegrastats.service",
        "jetson/gpufleet-tegrastats.service.j2",
        "gpu",
        dict(
            script="/usr/local/lib/gpufleet/tegrastats.py",
            out=f"{NODE_EXPORTER_TEXTFILES}/gpufleet_tegra.prom",
            interval_ms=5000,
            sandbox=sandbox.tegrastats(NODE_EXPORTER_TEXTFILES),
        ),
    ),
    Unit(
        "litellm.service",
        "litellm/litellm.service.j2",
        "service",
        dict(
            run_as="litellm",
            env_file="/etc/litellm/litellm.env",
            home="/opt/litellm",
            venv="/opt/litellm/venv",
            config="/etc/litellm/config.yaml",
            address="0.0.0.0",
            port=4000,
            sandbox=sandbox.litellm("/opt/litellm"),
        ),
    ),
    *(
        Unit(
            f"{user}.service",
            "vault/server.service.j2",
            "service",
            dict(
                product=user,
                run_as=user,
                binary=binary,
                config=f"/etc/{user}/{user}.hcl",
                disable_mlock=not mlock,
                mlock_reason="" if mlock else "set in the inventory",
                sandbox=sandbox.vault(f"/var/lib/{user}", mlock),
            ),
        )
        for user, binary, mlock in (
            ("vault", "/usr/bin/vault", True),
            ("vault", "/usr/bin/vault", False),
            ("openbao", "/usr/local/bin/bao", False),
        )
    ),
    Unit(
        "vllm.service",
        "vllm/vllm.service.j2",
        "gpu",
        dict(
            served="qwen",
            run_as="gpufleet",
            env_file="/etc/gpufleet/vllm.env",
            command=[*VLLM_COMMAND, "--distributed-executor-backend", "ray"],
            environment=[("RAY_ADDRESS", "10.0.0.1:6379"), ("VLLM_PP_LAYER_PARTITION", "40,40")],
            ray={"env_file": "/etc/gpufleet/ray.env"},
            after_docker=False,
            memory_max="16G",
            sandbox=sandbox.vllm(False, "/var/lib/gpufleet", "/var/lib/vllm"),
        ),
    ),
    Unit(
        "ray.service",
        "vllm/ray.service.j2",
        "gpu",
        dict(
            role="head",
            held="stage 0: 40/80 layers of qwen2.5:72b",
            run_as="gpufleet",
            env_file="/etc/gpufleet/ray.env",
            environment=[("RAY_AUTH_MODE", "token"), ("VLLM_HOST_IP", "10.0.0.1")],
            memory_max="10G",
            command=["/opt/vllm/bin/ray", "start", "--block", "--head", "--port", "6379"],
            sandbox=sandbox.vllm(False, "/var/lib/gpufleet", "/var/lib/vllm"),
        ),
    ),
]
IDS = [f"{u.template.split('/')[0]}-{u.kind}-{i}" for i, u in enumerate(UNITS)]


def write_unit(unit: Unit, folder: Path) -> Path:
    path = folder / unit.name
    path.write_text(render_template(unit.template, **unit.variables))
    return path


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"SYSTEMD_LOG_TARGET": "console", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )


@pytest.mark.parametrize("unit", UNITS, ids=IDS)
def test_every_unit_is_sandboxed_below_its_threshold(unit, tmp_path):
    path = write_unit(unit, tmp_path)
    result = analyze("security", "--offline=yes", "--no-pager", str(path))
    found = EXPOSURE.search(result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found["score"]) <= THRESHOLD[unit.kind], result.stdout


@pytest.mark.parametrize("unit", UNITS, ids=IDS)
def test_every_unit_has_only_settings_systemd_knows(unit, tmp_path):
    path = write_unit(unit, tmp_path)
    result = analyze("verify", "--man=no", "--generators=no", str(path))
    problems = [
        line
        for line in result.stderr.splitlines()
        if line.startswith((str(path), f"{unit.name}:"))
        and not any(absent in line for absent in NOT_INSTALLED_HERE)
    ]
    assert problems == []


def service_lines(unit: Unit) -> list[str]:
    return render_template(unit.template, **unit.variables).splitlines()


def test_a_gpu_unit_opens_the_gpu_and_nothing_else():
    gpu = service_lines(UNITS[1])
    assert "PrivateDevices=no" in gpu and "DevicePolicy=closed" in gpu
    assert "DeviceAllow=char-nvidia-uvm rwm" in gpu
    # nvidia-uvm is loaded before the device list is looked up, its nodes made privileged.
    assert "After=modprobe@nvidia-uvm.service" in gpu
    assert f"ExecStartPre=-+{sandbox.NVIDIA_MODPROBE} -c0 -c1" in gpu
    assert f"ExecStartPre=-+{sandbox.NVIDIA_MODPROBE} -u -c0" in gpu
    # A model the inventory names below /home stays readable.
    assert "ProtectHome=read-only" in gpu
    cpu = service_lines(UNITS[0])
    assert "PrivateDevices=yes" in cpu and not [x for x in cpu if x.startswith("DeviceAllow")]
    assert "ProtectHome=yes" in cpu and "MemoryDenyWriteExecute=yes" in cpu


def test_writable_folders_are_exactly_each_services_data():
    writable = {
        (u.template, u.kind): next(
            (x for x in service_lines(u) if x.startswith("ReadWritePaths=")), None
        )
        for u in UNITS
    }
    assert writable["llamacpp/llama-server.service.j2", "service"] is None
    assert writable["ollama/ollama.service.j2", "gpu"] == "ReadWritePaths=/usr/share/ollama"
    assert writable["vllm/vllm.service.j2", "gpu"] == (
        "ReadWritePaths=-/var/lib/vllm /var/lib/gpufleet"
    )
    assert writable["litellm/litellm.service.j2", "service"] == "ReadWritePaths=/opt/litellm"
    assert writable["jetson/gpufleet-tegrastats.service.j2", "gpu"] == (
        f"ReadWritePaths={NODE_EXPORTER_TEXTFILES}"
    )
    assert writable["triton/triton.service.j2", "container"] is None


def test_vault_keeps_cap_ipc_lock_only_while_it_locks_memory():
    vaults = [u for u in UNITS if u.template == "vault/server.service.j2"]
    locking, unlocked, openbao = (service_lines(u) for u in vaults)
    assert "CapabilityBoundingSet=CAP_IPC_LOCK" in locking
    assert "AmbientCapabilities=CAP_IPC_LOCK" in locking
    assert "LimitMEMLOCK=infinity" in locking
    for lines in (unlocked, openbao):
        assert "CapabilityBoundingSet=" in lines
        assert not [x for x in lines if "CAP_IPC_LOCK" in x and not x.startswith("#")]
    assert "ReadWritePaths=/var/lib/openbao" in openbao


def test_a_docker_client_reaches_only_the_daemons_socket():
    lines = service_lines(UNITS[7])
    assert "RestrictAddressFamilies=AF_UNIX" in lines
    assert "PrivateNetwork=yes" in lines and "PrivateDevices=yes" in lines
    # Root's registry login (an NGC key) stays readable, for a pull at start.
    assert "ProtectHome=read-only" in lines
