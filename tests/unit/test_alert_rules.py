"""The alert rules, tested the way Prometheus evaluates them: ``promtool test rules`` on
synthetic series (tests/fixtures/prometheus/gpufleet.rules.test.yml), with the promtool of
Debian's prometheus package, the one the monitoring deploy installs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gpufleet.lab import cache_dir

ROOT = Path(__file__).parents[2]
RULES = ROOT / "templates/prometheus/gpufleet.rules.yml"
RULE_TESTS = ROOT / "tests/fixtures/prometheus/gpufleet.rules.test.yml"
SEED_003_EXPRESSION = "DCGM_FI_DEV_FB_USED / DCGM_FI_DEV_FB_FREE > 0.9"


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool from Debian 12's prometheus package, unpacked once into the cache."""
    if found := shutil.which("promtool"):
        return found
    folder = cache_dir() / "tools" / "prometheus-debian12"
    binary = folder / "usr/bin/promtool"
    if not binary.exists():
        download = folder.with_suffix(".download")
        download.mkdir(parents=True, exist_ok=True)
        fetch = ["apt-get", "download", "prometheus"]
        if subprocess.run(fetch, cwd=download, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], check=True)  # no package lists yet
            subprocess.run(fetch, cwd=download, check=True)
        [package] = download.glob("prometheus_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(package), str(folder)], check=True)
        shutil.rmtree(download)
    return str(binary)


def run_rule_tests(promtool: str, tests: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, cwd=tests.parent
    )


def test_every_rule_has_a_test_and_they_pass(promtool):
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    }
    assert alerts == tested
    result = run_rule_tests(promtool, RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_file_is_what_promtool_accepts(promtool):
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_the_tests_catch_seed_003s_vram_expression(promtool, tmp_path):
    wrong = RULES.read_text().replace(
        "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE) > 0.9",
        SEED_003_EXPRESSION,
    )
    assert SEED_003_EXPRESSION in wrong
    (tmp_path / "templates/prometheus").mkdir(parents=True)
    (tmp_path / "templates/prometheus/gpufleet.rules.yml").write_text(wrong)
    tests = tmp_path / "tests/fixtures/prometheus/gpufleet.rules.test.yml"
    tests.parent.mkdir(parents=True)
    tests.write_text(RULE_TESTS.read_text())
    result = run_rule_tests(promtool, tests)
    assert result.returncode != 0
    assert "GpuMemoryAlmostFull" in result.stdout + result.stderr
