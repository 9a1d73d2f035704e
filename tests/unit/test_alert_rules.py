"""The alert rules, tested the way Prometheus evaluates them: ``promtool test rules`` on
synthetic series (tests/fixtures/prometheus/gpufleet.rules.test.yml), with the promtool of
Debian's prometheus package, the one the monitoring deploy installs (tests/unit/conftest.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[2]
RULES = ROOT / "templates/prometheus/gpufleet.rules.yml"
RULE_TESTS = ROOT / "tests/fixtures/prometheus/gpufleet.rules.test.yml"
SEED_003_EXPRESSION = "DCGM_FI_DEV_FB_USED / DCGM_FI_DEV_FB_FREE > 0.9"


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
    assert "SUCCESS: 10 rules found" in result.stdout


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
