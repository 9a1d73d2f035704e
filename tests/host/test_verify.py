"""gpufleet verify against the converged lab: the suites' table and JUnit XML, the checks the
lab cannot pass (no GPU, no Ollama or vLLM binary) failing and named, and a stopped service
caught."""

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .conftest import ROOT, SPECS, ssh, timed

GPUFLEET = str(Path(sys.executable).parent / "gpufleet")
CANNOT_PASS_HERE = {
    ("lab-gpu-1", "inference: ollama runs and answers"),
    ("lab-gpu-1", "inference: ollama has every placed model"),
    ("lab-pve-1", "gpu_node: nvidia smi sees every declared gpu"),
    ("lab-pve-1", "inference: vllm runs and answers"),
    ("lab-lxc-1", "gpu_node: nvidia smi sees every declared gpu"),
}
"""The lab has no GPU, and Ollama's and vLLM's binaries cannot be fetched here."""


def verify(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[tuple]]:
    junit = tmp_path / "verify.xml"
    with timed(" ".join(["gpufleet verify", *args]), 600):
        result = subprocess.run(
            [GPUFLEET, "verify", "inventory/lab.py", "--junit-xml", str(junit), *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=600,
            check=False,
        )
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        check, host = case.get("name", "").removesuffix("]").split("[")
        suite = case.get("classname", "").rsplit(".", 1)[-1].removeprefix("test_")
        label = f"{suite}: {check.removeprefix('test_').replace('_', ' ')}"
        failed = case.find("failure") is not None or case.find("error") is not None
        cases.append((host, label, failed))
    return result, cases


@pytest.fixture(scope="module")
def full_run(lab_session, tmp_path_factory):
    return verify(tmp_path_factory.mktemp("verify"))


def test_every_lab_host_gets_its_suites_in_the_table_and_the_xml(full_run):
    result, cases = full_run
    assert {host for host, _, _ in cases} == set(SPECS)
    for host in SPECS:
        assert (host, "baseline: reachable over ssh", False) in cases
        assert (host, "baseline: node exporter answers with this hosts metrics", False) in cases
        header = next(line for line in result.stdout.splitlines() if line.startswith(f"{host}:"))
        checks = [c for c in cases if c[0] == host]
        assert header.endswith(f"{len(checks)} checks")
    # The AMD iGPU stand-in gets its GPU's checks (the GTT one skips: no driver loads here).
    assert ("lab-amd-1", "amd_gpu: mesa vulkan driver is installed", False) in cases
    infra = {label for host, label, _ in cases if host == "lab-infra-1"}
    assert "platform: secret store is initialized and unsealed" in infra
    assert "platform: gateway answers over tls" in infra
    assert "inference: llama server serves its model" in infra
    assert not any(label.startswith("gpu_node:") for label in infra)  # not a GPU node


def test_only_what_the_lab_cannot_run_fails_and_the_run_says_so(full_run):
    result, cases = full_run
    failed = {(host, label) for host, label, failed in cases if failed}
    assert failed == CANNOT_PASS_HERE
    assert result.returncode == 1
    assert result.stdout.splitlines()[-2] == (
        "verify: 6 hosts, failing: lab-gpu-1, lab-pve-1, lab-lxc-1"
    )
    assert "  FAIL  inference: vllm runs and answers" in result.stdout
    assert "vllm is not running" in result.stdout
    assert len(cases) > 40


def test_a_stopped_service_is_caught_on_that_host_only(lab_session, tmp_path):
    ssh("10.200.0.11", "systemctl stop prometheus-node-exporter")
    try:
        result, cases = verify(tmp_path, "--limit", "lab-gpu-1")
    finally:
        ssh("10.200.0.11", "systemctl start prometheus-node-exporter")
    assert {host for host, _, _ in cases} == {"lab-gpu-1"}
    failed = {label for _, label, failed in cases if failed}
    assert failed == {
        "baseline: node exporter listens where the inventory says",
        "baseline: node exporter answers with this hosts metrics",
        "inference: ollama runs and answers",
        "inference: ollama has every placed model",
    }
    assert result.returncode == 1
