"""`gpufleet bench` against the lab's real servers: the llama.cpp servers directly and the
gateway, CSV rows with intervals, measured speed under the planner's physical bound."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from .conftest import LAB_INVENTORY, ROOT, timed

LIMIT = [
    arg for host in ("lab-gpu-1", "lab-pve-1", "lab-lxc-1", "lab-infra-1", "lab-cpu-1")
    for arg in ("--limit", host)
]  # fmt: skip
"""Every host but lab-amd-1, whose software Vulkan device decodes a few tokens a second:
a proof of the Vulkan path (tests/host/test_vulkan.py), not a speed worth its minutes here."""


def test_bench_measures_each_running_endpoint_with_intervals(lab_session, tmp_path):
    out = tmp_path / "bench.csv"
    gpufleet = str(Path(sys.executable).parent / "gpufleet")
    with timed("gpufleet bench", 600):
        result = subprocess.run(
            [gpufleet, "bench", str(LAB_INVENTORY), "--runs", "3", "--concurrency", "1", "2",
             "--csv", str(out), *LIMIT],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {(r["endpoint"], int(r["concurrency"])): r for r in csv.DictReader(out.open())}
    expected = {
        (endpoint, level)
        for endpoint in (
            "lab-gpu-1/llama.cpp",
            "lab-infra-1/llama.cpp",
            "lab-lxc-1/llama.cpp",
            "lab-cpu-1/llama.cpp",  # split with lab-gpu-1: bounded by both hosts' reads
            "lab-infra-1/gateway",
        )
        for level in (1, 2)
    }
    assert set(rows) == expected
    for (endpoint, level), row in rows.items():
        assert int(row["runs"]) == 3 * level
        speed, bound = float(row["decode_tok_s"]), float(row["planner_bound_tok_s"])
        assert 0 < speed <= bound, endpoint  # physics: no faster than memory bandwidth allows
        assert float(row["decode_tok_s_ci95"]) >= 0 and float(row["ttft_s"]) > 0
        assert row["quant"] == "Q4_K_M"
        # lab-lxc-1 declares a GTX 1650 (the gateway serves its alias too); the rest none.
        assert row["gpu"] == ("GTX 1650" if row["model"].endswith("-offload") else "CPU")
    # Configured but not runnable here: reported, not measured.
    assert "lab-gpu-1/ollama XS-LOC-FRE-gemma3-270m-ollama: not answering" in result.stderr
    assert "lab-pve-1/vllm XS-LOC-FRE-gemma3-270m-vllm: not answering" in result.stderr
    assert "lab-infra-1/gateway" in result.stdout  # the table
