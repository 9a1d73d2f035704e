"""The three promises of every deploy, proven on the lab: a dry run changes nothing, the
first run converges, a second run reports zero changes."""

import pytest

from .conftest import DEPLOY_GROUP, DEPLOYS, SPECS, pyinfra

each_deploy = pytest.mark.parametrize("deploy", DEPLOYS)


@each_deploy
def test_dry_run_plans_without_executing(lab_session, deploy):
    dry = lab_session.runs[deploy].dry
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert dry.report["results"] is None  # planned, not executed
    assert any(op["name"] == "Baseline | Install baseline packages" for op in dry.report["plan"])


def test_dry_run_on_fresh_hosts_plans_the_driver_and_the_passthrough(lab_session):
    planned = {op["name"] for op in lab_session.dry.report["plan"]}
    assert (
        "NVIDIA driver | Install NVIDIA driver 535.261.03 (proprietary kernel modules)" in planned
    )
    assert "Docker and NVIDIA Container Toolkit | Merge gpufleet's keys into daemon.json" in planned


@each_deploy
def test_dry_run_leaves_every_host_byte_for_byte_unchanged(lab_session, deploy):
    unchanged = lab_session.runs[deploy].dry_unchanged
    assert unchanged == {h.name: True for h in lab_session.hosts}


@each_deploy
def test_first_run_succeeds_on_every_host(lab_session, deploy):
    first = lab_session.runs[deploy].first
    assert first.returncode == 0, first.stderr[-3000:]
    totals = first.report["results"]["totals"]
    assert totals["error"] == 0
    reached = {h for op in first.report["results"]["operations"] for h in op["no_change"]}
    reached |= {h for op in first.report["results"]["operations"] for h in op["success"]}
    group = DEPLOY_GROUP.get(deploy)
    expected = {n for n, spec in SPECS.items() if group is None or group in spec.groups}
    assert reached == expected


@each_deploy
def test_second_run_reports_zero_changes(lab_session, deploy):
    second = lab_session.runs[deploy].second
    assert second.returncode == 0, second.stderr[-3000:]
    totals = second.report["results"]["totals"]
    assert second.changed == []
    assert totals["success"] == 0 and totals["error"] == 0
    assert totals["no_change"] == totals["hosts"] > 0


def test_gpu_detection_reports_no_gpu_cleanly(lab_session):
    for run in (lab_session.first, lab_session.second):
        reports = [line for line in run.stderr.splitlines() if "noop: no NVIDIA GPU (" in line]
        assert len(reports) == 3, run.stderr[-2000:]  # every GPU node: the lab has no GPU
        assert any(line.startswith("    [lab-gpu-1]") for line in reports)
    assert "lab-infra-1 is not in gpu_nodes: GPU steps skipped" in lab_session.second.stderr
    # Hosts that declare a GPU the bus does not show get a warning (a dead or swapped card).
    assert "inventory declares 1 NVIDIA GPU(s), the host shows 0" in lab_session.first.stderr


def test_the_whole_stack_in_one_run_changes_nothing_and_plans_the_baseline_once(lab_session):
    run = pyinfra(DEPLOYS[0], *DEPLOYS[1:], "-y")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.changed == []
    operations = run.report["results"]["operations"]
    baseline = [op for op in operations if op["name"] == "Baseline | Install baseline packages"]
    assert len(baseline) == 1 and sorted(baseline[0]["no_change"]) == sorted(SPECS)
    # Every deploy's own steps are there.
    assert any(op["name"].startswith("Prometheus |") for op in operations)
    assert any(op["name"].startswith("llama.cpp |") for op in operations)
