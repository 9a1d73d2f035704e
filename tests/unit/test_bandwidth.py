"""The MemoryBandwidth fact: its probe really runs (bounded in time and memory) with nothing
but python3, its outputs parse, and the planner, discovery and bench use what it measured."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from pydantic import ValidationError

from gpufleet import onboarding
from gpufleet.bench import Endpoint, measure
from gpufleet.catalogue import load_catalogue
from gpufleet.checks import check_host
from gpufleet.facts.bandwidth import (
    PROBE,
    MemoryBandwidth,
    parse_bandwidth,
    probe_command,
    slowest_gpu_gbs,
)
from gpufleet.hosts_file import read_hosts
from gpufleet.models import HostSpec, Measured
from gpufleet.planner import placement_cells, plan_host, plan_summary

ROOT = Path(__file__).parents[2]
RECORDED = ROOT / "tests/fixtures/bandwidth"
CATALOGUE = load_catalogue()
TODAY = date.today()


def recorded(name: str):
    return parse_bandwidth((RECORDED / f"{name}.txt").read_text().splitlines())


def probe(*arguments: int) -> tuple[dict, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, arguments)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("BANDWIDTH ")
    return json.loads(line.removeprefix("BANDWIDTH ")), time.monotonic() - started


# --- the probe --------------------------------------------------------------------------


def test_the_probe_reads_memory_with_every_cpu_and_reports_gb_per_s():
    report, _ = probe(20, 256, 2, 64)  # limit 20 s, 256 MB, 2 rounds
    assert report["ram_read_gbs"] > 0.5  # any machine reads 256 MB faster than 0.5 GB/s
    assert report["ram_bytes"] <= 256 << 20  # never more than asked
    assert report["workers"] >= 1
    assert 0 < report["cpu_share"] <= 1
    assert "ram_error" not in report and "note" not in report


def test_the_probe_stops_at_its_time_limit_and_still_reports():
    # 100000 rounds would take minutes; the limit of 1 s ends it with what it has.
    report, seconds = probe(1, 128, 100_000, 64)
    assert seconds < 10
    if report["ram_read_gbs"] is None:  # not one round in time (a very busy machine)
        assert report["note"] == "stopped after 1 s"
    else:  # the rounds it had give the figure, and it says so
        assert report["ram_note"].startswith("stopped after 1 s, best of ")


def test_the_probe_refuses_to_take_little_memory_for_a_figure():
    report, _ = probe(20, 64, 2, 64)  # 64 MB would sit in a large cache
    assert report["ram_read_gbs"] is None
    assert report["ram_note"] == "64 MB to read (asked); not probed"


def test_the_fact_command_runs_in_a_plain_shell_and_parses():
    command = MemoryBandwidth().command()
    assert command == probe_command()
    small = probe_command(ram_mb=128, rounds=1)
    result = subprocess.run(["sh", "-c", small], capture_output=True, text=True, timeout=60)
    reading = parse_bandwidth(result.stdout.splitlines())
    if reading["ram_read_gbs"] is None:  # this machine is busy: the reading says so
        assert reading["notes"][0].startswith("the host was busy")
    else:
        assert reading["ram_read_gbs"] > 0.5 and reading["notes"] == []
    assert reading["seconds"] is not None and reading["seconds"] < 30


@pytest.fixture(scope="module")
def fake_driver(tmp_path_factory):
    """A folder holding a stand-in libcuda.so.1 (tests/fixtures/bandwidth/fake_libcuda.c)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the stand-in driver library")
    folder = tmp_path_factory.mktemp("driver")
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-o", str(folder / "libcuda.so.1"),
         str(RECORDED / "fake_libcuda.c")],
        check=True,
    )  # fmt: skip
    return folder


def probe_gpus(fake_driver, **settings: str) -> dict:
    environment = {**os.environ, "LD_LIBRARY_PATH": str(fake_driver), **settings}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "20", "128", "2", "256"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=environment,
    )
    return json.loads(result.stdout.strip().splitlines()[-1].removeprefix("BANDWIDTH "))


def test_the_gpu_probe_times_copies_through_the_driver_library(fake_driver):
    report = probe_gpus(fake_driver, FAKE_CUDA_COUNT="2", FAKE_CUDA_GBS="100")
    assert [gpu["name"] for gpu in report["gpus"]] == ["Fake GPU 0", "Fake GPU 1"]
    for gpu in report["gpus"]:  # copies that take as long as 100 GB/s would: about 100
        assert 70 < gpu["copy_gbs"] <= 100.5
    assert "gpus_error" not in report
    full = probe_gpus(fake_driver, FAKE_CUDA_FREE_MB="300")
    assert full["gpus"][0]["copy_gbs"] is None
    assert full["gpus"][0]["note"] == "under 512 MB of GPU memory free; not probed"


# --- parsing ------------------------------------------------------------------------------


def test_a_captured_cpu_only_host_has_a_ram_figure_and_says_why_no_gpu():
    reading = recorded("two-core-vm")
    assert reading["ram_read_gbs"] == 31.3
    assert reading["gpus"] == [] and slowest_gpu_gbs(reading) is None
    assert reading["notes"] == [] and reading["gpu_notes"] == ["no libcuda (no NVIDIA driver)"]


def test_a_busy_host_gives_no_figure_since_it_would_bound_below_the_memory():
    reading = recorded("two-core-vm-busy")
    assert reading["ram_read_gbs"] is None
    [note] = reading["notes"]
    assert note.startswith("the host was busy: its readers ran ") and "measure it idle" in note
    assert onboarding.measured_data(reading, False)[0] is None


def test_a_host_without_python_gives_no_figure_and_says_so():
    reading = recorded("no-python")
    assert reading["ram_read_gbs"] is None and reading["notes"] == ["no python3 on the host"]
    garbled = parse_bandwidth(["BANDWIDTH {not json"])
    assert garbled["ram_read_gbs"] is None and garbled["notes"] == ["unreadable report"]


def test_an_unprobed_gpu_leaves_no_gpu_figure_since_it_may_be_the_slowest():
    reading = recorded("two-gpus-one-busy")
    assert reading["ram_read_gbs"] == 58.2
    assert [g["copy_gbs"] for g in reading["gpus"]] == [812.4, None]
    assert slowest_gpu_gbs(reading) is None
    assert reading["notes"] == []
    assert "GPU 1 (NVIDIA GeForce RTX 4060 Ti): under 512 MB" in reading["gpu_notes"][0]
    reading["gpus"][1]["copy_gbs"] = 250.1
    assert slowest_gpu_gbs(reading) == 250.1


# --- the host data ------------------------------------------------------------------------


def test_a_measurement_refuses_nonsense():
    assert Measured(ram_bandwidth_gbs=21.4, measured_on="2026-01-02").ram_bandwidth_gbs == 21.4
    for bad in (
        {"measured_on": TODAY},  # no figure
        {"ram_bandwidth_gbs": 0, "measured_on": TODAY},
        {"ram_bandwidth_gbs": 5000, "measured_on": TODAY},  # no RAM is read that fast
        {"gpu_bandwidth_gbs": 90_000, "measured_on": TODAY},
        {"ram_bandwidth_gbs": 20, "measured_on": TODAY + timedelta(days=2)},
        {"ram_bandwidth_gbs": 20, "measured_on": "yesterday"},
        {"ram_bandwidth_gbs": 20},
        {"ram_bandwidth_gbs": 20, "measured_on": TODAY, "by": "me"},
    ):
        with pytest.raises(ValidationError):
            Measured.model_validate(bad)


RTX_3090_DESKTOP = {
    "cpu": "Ryzen 7 5800X",
    "cores": 8,
    "ram_gb": 64,
    "accelerators": [{"kind": "nvidia", "model": "RTX 3090"}],
}
DRIVER = {"version": "535.261.03"}


def spec(hardware, models):
    groups = ("gpu_nodes",) if hardware["accelerators"][0]["kind"] == "nvidia" else ("edge",)
    return HostSpec(name="h", groups=groups, hardware=hardware, models=models, nvidia_driver=DRIVER)


def test_the_planner_prefers_measured_over_declared_over_estimated_and_says_which():
    model = [{"model": "llama3.1:70b", "engine": "llama.cpp", "source": "/m.gguf", "context": 4096}]
    estimated = plan_host(spec(RTX_3090_DESKTOP, model), CATALOGUE)
    declared = plan_host(spec({**RTX_3090_DESKTOP, "ram_bandwidth_gbs": 40}, model), CATALOGUE)
    measured_data = {"ram_bandwidth_gbs": 30.0, "gpu_bandwidth_gbs": 800.0, "measured_on": TODAY}
    measured = plan_host(
        spec({**RTX_3090_DESKTOP, "ram_bandwidth_gbs": 40, "measured": measured_data}, model),
        CATALOGUE,
    )
    assert (estimated.ram_bandwidth_gbs, estimated.ram_bandwidth_source) == (51.2, "estimated")
    assert (declared.ram_bandwidth_gbs, declared.ram_bandwidth_source) == (40, "declared")
    assert (measured.ram_bandwidth_gbs, measured.ram_bandwidth_source) == (30.0, "measured")
    assert (estimated.gpu_bandwidth_gbs, estimated.gpu_bandwidth_source) == (936, "catalogue")
    assert (measured.gpu_bandwidth_gbs, measured.gpu_bandwidth_source) == (800.0, "measured")
    # A 70B model spills to RAM: its bound follows the RAM figure, and the plan says whose.
    [slow], [slower] = declared.placements, measured.placements
    assert slow.where == slower.where == "partial"
    assert slower.bound_tok_s < slow.bound_tok_s
    assert slow.bound_source == "catalogue GPU, declared RAM"
    assert slower.bound_source == "measured"
    assert placement_cells(slower)[-1] == f"<= {slower.bound_tok_s:g} tok/s (measured)"
    assert "(800 GB/s measured), 64 GB RAM (30 GB/s measured)" in plan_summary(measured)


def test_a_jetson_measured_through_cuda_bounds_its_gpu_placements_with_that_figure():
    jetson = {
        "cpu": "Cortex-A78AE",
        "cores": 6,
        "ram_gb": 8,
        "accelerators": [{"kind": "jetson", "model": "Jetson Orin Nano Super"}],
    }
    model = [{"model": "llama3.2:1b"}]
    before = plan_host(spec(jetson, model), CATALOGUE)
    measured = {"gpu_bandwidth_gbs": 61.0, "measured_on": TODAY}
    after = plan_host(spec({**jetson, "measured": measured}, model), CATALOGUE)
    assert before.gpu_bandwidth_source == "catalogue"
    assert (after.gpu_bandwidth_gbs, after.gpu_bandwidth_source) == (61.0, "measured")
    assert after.placements[0].bound_tok_s < before.placements[0].bound_tok_s
    assert after.placements[0].bound_source == "measured"


def test_a_gpu_figure_above_the_parts_peak_or_without_a_gpu_is_a_problem():
    fast = {"gpu_bandwidth_gbs": 1500.0, "measured_on": TODAY}
    [problem] = check_host(spec({**RTX_3090_DESKTOP, "measured": fast}, []), CATALOGUE)
    assert problem.field == "hardware.measured.gpu_bandwidth_gbs"
    assert "above the 936 GB/s peak" in problem.message
    cpu_only = {"cpu": "x", "cores": 4, "ram_gb": 16, "measured": fast}
    cpu_host = HostSpec(name="c", groups=("cpu_nodes",), hardware=cpu_only)
    [problem] = check_host(cpu_host, CATALOGUE)
    assert "does not declare" in problem.message
    fine = {"gpu_bandwidth_gbs": 850.0, "measured_on": TODAY}
    assert check_host(spec({**RTX_3090_DESKTOP, "measured": fine}, []), CATALOGUE) == []


# --- discovery and gpufleet measure ---------------------------------------------------------


def test_discovery_writes_what_it_measured_and_why_a_figure_is_missing():
    measured, why_not = onboarding.measured_data(recorded("two-core-vm"), False, date(2026, 1, 2))
    assert measured == {"ram_bandwidth_gbs": 31.3, "measured_on": date(2026, 1, 2)}
    assert why_not == []  # no GPU declared: no driver is nothing to do
    _, why_not = onboarding.measured_data(recorded("two-core-vm"), True)
    assert why_not == ["bandwidth probe: no libcuda (no NVIDIA driver)"]
    assert onboarding.measured_data(recorded("no-python"), True)[1] == [
        "bandwidth probe: no python3 on the host"
    ]
    assert onboarding.measured_data(recorded("no-python"), False)[0] is None
    reading = recorded("two-gpus-one-busy")
    reading["gpus"][1]["copy_gbs"] = 250.1
    measured, _ = onboarding.measured_data(reading, True, date(2026, 1, 2))
    assert measured is not None and measured["gpu_bandwidth_gbs"] == 250.1
    text = onboarding.measured_lines("desk", measured)
    assert text.splitlines()[2] == (
        "    measured: {ram_bandwidth_gbs: 58.2, gpu_bandwidth_gbs: 250.1, measured_on: 2026-01-02}"
    )
    pasted = yaml.safe_load(text)["desk"]["hardware"]["measured"]
    assert Measured.model_validate(pasted).gpu_bandwidth_gbs == 250.1


def test_discover_and_measure_write_hardware_measured_the_inventory_accepts(tmp_path, monkeypatch):
    from gpufleet.facts.machine import parse_machine
    from gpufleet.inventory import validate_file

    runner = CliRunner()
    assert runner.invoke(onboarding.init_command, [str(tmp_path)]).exit_code == 0
    desk = parse_machine((ROOT / "tests/fixtures/discover/pi5.txt").read_text().splitlines())
    desk["bandwidth"] = recorded("two-core-vm")
    asked = []

    def read_machines(hosts, measure=False):
        asked.append(measure)
        return dict.fromkeys(hosts, desk)

    monkeypatch.setattr(onboarding, "read_machines", read_machines)
    inventory = str(tmp_path / "inventory.py")
    result = runner.invoke(onboarding.discover_command, ["192.168.1.21", "--inventory", inventory])
    assert result.exit_code == 0, result.output
    assert asked == [True]
    assert "to do: bandwidth" not in result.output
    [entry] = read_hosts(tmp_path / "hosts.yaml").values()
    assert entry["hardware"]["measured"] == {"ram_bandwidth_gbs": 31.3, "measured_on": TODAY}
    monkeypatch.chdir(tmp_path)
    [host] = validate_file("inventory.py").values()
    assert host.hardware.measured is not None
    assert plan_host(host, CATALOGUE).ram_bandwidth_source == "measured"

    # gpufleet measure: the host again, through the fact alone, written with --write.
    again = recorded("two-core-vm")
    again["ram_read_gbs"] = 29.0
    seen = {}

    def read_facts(hosts, facts):
        seen.update(hosts)
        return {name: [again] for name in hosts}

    monkeypatch.setattr(onboarding, "read_facts", read_facts)
    printed = runner.invoke(onboarding.measure_command, ["inventory.py"])
    assert printed.exit_code == 0, printed.output
    assert f"measured: {{ram_bandwidth_gbs: 29.0, measured_on: {TODAY}}}" in printed.output
    assert (
        read_hosts(tmp_path / "hosts.yaml")[host.name]["hardware"]["measured"]["ram_bandwidth_gbs"]
        == 31.3
    )  # without --write nothing changes
    assert seen[host.name]["ssh_hostname"] == "192.168.1.21"
    written = runner.invoke(onboarding.measure_command, ["inventory.py", "--write"])
    assert written.exit_code == 0, written.output
    assert f"{host.name}: RAM read 29.0 GB/s" in written.output
    measured = read_hosts(tmp_path / "hosts.yaml")[host.name]["hardware"]["measured"]
    assert measured == {"ram_bandwidth_gbs": 29.0, "measured_on": TODAY}


def test_measure_prints_the_host_data_for_hosts_of_a_python_inventory(monkeypatch, tmp_path):
    monkeypatch.setattr(
        onboarding,
        "read_facts",
        lambda hosts, facts: {name: [recorded("two-core-vm")] for name in hosts},
    )
    result = CliRunner().invoke(
        onboarding.measure_command, [str(ROOT / "inventory/lab.py"), "--limit", "lab-gpu-1"]
    )
    assert result.exit_code == 0, result.output
    assert "lab-gpu-1: RAM read 31.3 GB/s" in result.output
    assert f"    measured: {{ram_bandwidth_gbs: 31.3, measured_on: {TODAY}}}" in result.output
    unreachable = CliRunner()
    monkeypatch.setattr(
        onboarding, "read_facts", lambda hosts, facts: dict.fromkeys(hosts, "could not connect")
    )
    failed = unreachable.invoke(
        onboarding.measure_command, [str(ROOT / "inventory/lab.py"), "--limit", "lab-gpu-1"]
    )
    assert failed.exit_code == 1 and "lab-gpu-1: could not connect" in failed.output


# --- bench ----------------------------------------------------------------------------------


def test_bench_reports_measured_speed_over_the_bound(monkeypatch):
    from gpufleet import bench

    endpoint = Endpoint(
        name="h/llama.cpp", host="h", engine="llama.cpp", base_url="http://x/v1", model="m",
        gpu="CPU", quant="Q4_K_M", claimed_tok_s=None, bound_tok_s=120.0,
    )  # fmt: skip
    monkeypatch.setattr(bench, "one_run", lambda e: bench.Run(0.1, 48, 30.0, 1.7))
    row = measure(endpoint, 2, 1, progress=lambda done, rounds: None)
    assert row["measured_over_bound"] == 0.25
    assert row["measured_over_claimed"] == ""
    unbounded = measure(
        Endpoint(**{**endpoint.__dict__, "bound_tok_s": None}), 1, 1, lambda done, rounds: None
    )
    assert unbounded["measured_over_bound"] == ""
    assert list(row) == bench.COLUMNS
