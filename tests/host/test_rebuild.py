"""The hardware-swap flow (deploys/rebuild.py, `gpufleet rebuild`) on the lab."""


def test_dry_rebuild_shows_the_difference_and_changes_nothing(rebuild_session):
    dry = rebuild_session.dry
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "[lab-gpu-1]   hardware.ram_gb: inventory 4, host " in dry.stderr
    assert "re-planned: every placement stays where it was" in dry.stderr
    assert rebuild_session.dry_unchanged


def test_rebuild_redeploys_and_verifies_and_a_second_run_changes_nothing(rebuild_session):
    for run in (rebuild_session.first, rebuild_session.second):
        assert run.returncode == 0, run.stderr[-2000:]
        assert "llama-server answers http://127.0.0.1:8080/health" in run.stderr
        names = {op["name"] for op in run.report["results"]["operations"]}
        assert "Verify llama-server" in names
        # Included deploys name their operations after their file.
        assert "deploys/gpu_node.py | Docker and NVIDIA Container Toolkit | Run docker" in names
        assert "deploys/inference.py | llama.cpp | Run llama-server" in names
    assert rebuild_session.second.changed == []
    assert rebuild_session.second.report["results"]["totals"]["error"] == 0


def test_rebuild_refuses_a_host_whose_placements_no_longer_fit(rebuild_session):
    refused = rebuild_session.refused
    assert refused.returncode != 0
    assert "lab-pve-1: with the hardware it has now, the host's data does not hold" in (
        refused.stderr
    )
    assert "hardware.accelerators: inventory GTX 1650 x1, host no NVIDIA GPU" in refused.stderr
    assert "vllm needs an NVIDIA GPU" in refused.stderr
    assert rebuild_session.refused_unchanged  # stopped before any change
