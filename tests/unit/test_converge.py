"""bench/converge.py's arithmetic and parsing: Ansible's recap, pyinfra's JSON, the table."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
_spec = importlib.util.spec_from_file_location("converge", ROOT / "bench/converge.py")
assert _spec is not None and _spec.loader is not None
converge = importlib.util.module_from_spec(_spec)
sys.modules["converge"] = converge  # dataclasses look their module up there
_spec.loader.exec_module(converge)

RECAP = """
PLAY RECAP *********************************************************************
bench-1             : ok=12   changed=0    unreachable=0    failed=0    skipped=2    rescued=0
bench-2             : ok=12   changed=7    unreachable=0    failed=1    skipped=2    rescued=0
"""


def test_ansible_recap_sums_changes_and_breakage():
    assert converge.ansible_changes(RECAP) == (7, 1)
    assert converge.ansible_changes("no recap here") == (0, 0)


def test_pyinfra_json_counts_changed_hosts_per_operation():
    report = {
        "results": {
            "operations": [
                {"name": "a", "success": ["h1", "h2"], "error": []},
                {"name": "b", "success": [], "error": ["h2"]},
            ]
        }
    }
    assert converge.pyinfra_changes(report) == (2, 1)
    assert converge.pyinfra_changes({}) == (0, 0)


def test_table_reports_medians_and_ratios():
    timings = []
    for rnd, (ours, theirs) in enumerate([(1.0, 4.0), (2.0, 5.0), (9.0, 6.0)], start=1):
        timings.append(converge.Timing("gpufleet", "converged re-run", 1, rnd, ours, 0))
        timings.append(converge.Timing("ansible", "converged re-run", 1, rnd, theirs, 0))
        timings.append(converge.Timing("gpufleet", "converged re-run", 8, rnd, ours * 1.5, 0))
        timings.append(converge.Timing("ansible", "converged re-run", 8, rnd, theirs * 2, 0))
        timings.append(converge.Timing("gpufleet", "first converge", 1, rnd, 30.0, 9))
        timings.append(converge.Timing("apt-get", "first converge", 1, rnd, 25.0, 0))
    text = converge.median_table(timings, [1, 8])
    assert "| converged re-run | 1 | 2.0 s | 5.0 s | 2.5x |" in text
    assert "| converged re-run | 8 | 3.0 s | 10.0 s | 3.3x |" in text
    assert "first converge | 1 |" not in text  # no Ansible figure for it: no row
    assert "bare apt-get of the same packages 25.0 s: 1.20x" in text
    assert "gpufleet: T(8 hosts) / T(1 host) = 1.50" in text
    assert "ansible: T(8 hosts) / T(1 host) = 2.00" in text
    assert "(3 rounds, medians)" in text


def test_a_case_ansible_cannot_run_is_reported_as_failing_not_timed():
    timings = [
        converge.Timing("gpufleet", "dry run, fresh", 1, 1, 1.5, 0),
        converge.Timing("ansible", "dry run, fresh", 1, 1, 2.0, 0, ok=False),
    ]
    text = converge.median_table(timings, [1])
    assert "| dry run, fresh | 1 | 1.5 s | fails | - |" in text
    assert "2.0 s" not in text


def test_reached_hosts_come_from_the_results_not_the_plan():
    report = {
        "results": {
            "operations": [
                {"name": "a", "success": ["h1"], "no_change": ["h2"]},
                {"name": "b", "success": [], "no_change": ["h3"]},
            ]
        }
    }
    assert converge.reached(report) == {"h1", "h2", "h3"}
    assert converge.reached({"results": None}) == set()
