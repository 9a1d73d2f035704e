"""The three promises of every deploy, proven on the lab: a dry run changes nothing, the
first run converges, a second run reports zero changes."""


def test_dry_run_finds_work_on_fresh_hosts_or_none_on_converged_ones(lab_session):
    dry = lab_session.dry
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert dry.report["results"] is None  # planned, not executed
    assert any(op["name"] == "Baseline | Install baseline packages" for op in dry.report["plan"])


def test_dry_run_leaves_every_host_byte_for_byte_unchanged(lab_session):
    assert lab_session.dry_unchanged == {h.name: True for h in lab_session.hosts}


def test_first_run_succeeds_on_every_host(lab_session):
    first = lab_session.first
    assert first.returncode == 0, first.stderr[-3000:]
    totals = first.report["results"]["totals"]
    assert totals["error"] == 0
    assert totals["hosts"] > 0


def test_second_run_reports_zero_changes(lab_session):
    second = lab_session.second
    assert second.returncode == 0, second.stderr[-3000:]
    totals = second.report["results"]["totals"]
    assert second.changed == []
    assert totals["success"] == 0 and totals["error"] == 0
    assert totals["no_change"] == totals["hosts"] > 0


def test_gpu_detection_reports_no_gpu_cleanly(lab_session):
    for run in (lab_session.first, lab_session.second):
        reports = [line for line in run.stderr.splitlines() if "noop: no NVIDIA GPU" in line]
        assert len(reports) == 1, run.stderr[-2000:]
        assert "[lab-gpu-1]" in reports[0]
        assert reports[0].endswith("no NVIDIA GPU (no PCI display device with vendor 10de)")
    assert "lab-infra-1 is not in gpu_nodes: GPU steps skipped" in lab_session.second.stderr
