"""testinfra: every unit gpufleet wrote on a lab host is sandboxed as systemd itself rates it
(``systemd-analyze security``, 0 safe to 10 unsafe): 4.9 or below, a unit that opens a GPU or
runs a container 6.9 or below; and the sandbox stops no server from running."""

from __future__ import annotations

import re

from .conftest import ssh

UNITS = (
    "llama-server",
    "ollama",
    "vllm",
    "triton",
    "dcgm-exporter",
    "gpufleet-tegrastats",
    "litellm",
    "vault",
    "openbao",
)
"""The units gpufleet writes (their templates: src/gpufleet/templates/*/*.service.j2)."""
THRESHOLD = {"service": 4.9, "gpu": 6.9, "container": 6.9}
EXPOSURE = re.compile(r"Overall exposure level for \S+: (?P<score>\d+\.\d+)")


def kind(unit_file: str) -> str:
    """A unit that keeps the host's devices opens a GPU; one that runs ``docker run`` is a
    container's client; every other one is a plain service."""
    lines = unit_file.splitlines()
    if "PrivateDevices=no" in lines:
        return "gpu"
    if any(line.startswith("ExecStart=/usr/bin/docker ") for line in lines):
        return "container"
    return "service"


def exec_start(unit_file: str) -> str:
    return next(line for line in unit_file.splitlines() if line.startswith("ExecStart="))


def test_every_unit_is_sandboxed_and_still_runs(lab_host):
    for unit in UNITS:
        path = lab_host.testinfra.file(f"/etc/systemd/system/{unit}.service")
        if not path.exists:
            continue
        content = path.content_string
        report = lab_host.testinfra.run(f"systemd-analyze security --no-pager {unit}.service")
        found = EXPOSURE.search(report.stdout)
        assert found, f"{unit}: {report.stdout}{report.stderr}"
        limit = THRESHOLD[kind(content)]
        assert float(found["score"]) <= limit, f"{unit}: {report.stdout}"
        # A server whose program is installed runs under its sandbox (Ollama and vLLM are
        # configured but not installed where the lab cannot fetch them).
        program = exec_start(content).removeprefix("ExecStart=").split()[0]
        if lab_host.testinfra.file(program).exists:
            service = lab_host.testinfra.service(unit)
            assert service.is_running, lab_host.testinfra.run(
                f"systemctl status --no-pager {unit}; journalctl -u {unit} -n 30 --no-pager"
            ).stdout


def test_the_lab_has_the_units_this_file_checks(lab_session):
    """The checks above are not vacuous: the lab runs an engine, the router and the store."""
    found = set()
    for host in lab_session.hosts:
        listing = ssh(str(host.address), "ls /etc/systemd/system").split()
        found |= {unit for unit in UNITS if f"{unit}.service" in listing}
    assert {"llama-server", "litellm"} <= found
    assert found & {"vault", "openbao"}
