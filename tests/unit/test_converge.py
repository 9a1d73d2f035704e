"""bench/converge.py's arithmetic and parsing: Ansible's recap, pyinfra's JSON, the session
counts, the tables; and its Ansible twin renders every template with what the bench's
inventory gives it."""

import importlib.util
import sys
from pathlib import Path

import jinja2
import pytest
import yaml

from gpufleet.inventory import validate_file
from gpufleet.roles.baseline import template_variables

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
    assert "| converged re-run | 1 | 2.0 s | - | - | 5.0 s | - | - | 2.5x |" in text
    assert "| converged re-run | 8 | 3.0 s | - | - | 10.0 s | - | - | 3.3x |" in text
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
    assert "| dry run, fresh | 1 | 1.5 s | - | - | fails | - | - | - |" in text
    assert "2.0 s" not in text


def test_a_run_of_gpufleet_alone_still_has_its_rows():
    timings = [converge.Timing("gpufleet", "converged re-run", 1, 1, 0.7, 0)]
    text = converge.median_table(timings, [1])
    assert "| converged re-run | 1 | 0.7 s | - | - | - | - | - | - |" in text


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


def test_sessions_of_a_run_leave_out_the_count_itself():
    before = converge.session_counts("10 1\n")
    after = converge.session_counts("52 4")
    assert converge.sessions_of_run(before, after) == (41, 3)


def scale_runs() -> list:
    """A converged re-run on 1, 8 and 32 hosts for both tools, with CPU and sessions."""
    runs = []
    for tool, wall, cpu, commands in (("gpufleet", 1.0, 1.0, 20), ("ansible", 5.0, 3.0, 14)):
        for hosts, factor in ((1, 1), (8, 2), (32, 4)):
            runs.append(
                converge.Timing(
                    tool,
                    "converged re-run",
                    hosts,
                    1,
                    wall * factor,
                    0,
                    cpu_seconds=cpu + 0.5 * (hosts - 1),
                    commands_per_host=commands,
                    transfers_per_host=0,
                )
            )
    runs.append(converge.Timing("gpufleet", "first converge", 1, 1, 6.0, 9, cpu_seconds=2.0))
    runs.append(converge.Timing("ansible", "first converge", 1, 1, 9.0, 9, cpu_seconds=4.0))
    runs.append(converge.Timing("apt-get", "first converge", 1, 1, 4.0, 0, cpu_seconds=0.1))
    return runs


def test_summary_gives_scale_cpu_per_extra_host_and_the_apt_get_ratio():
    summary = {(s.tool, s.case, s.hosts): s for s in converge.summarize(scale_runs())}
    ours = summary[("gpufleet", "converged re-run", 32)]
    assert ours.t_over_t1 == 4.0
    assert ours.cpu_seconds == 16.5
    assert ours.cpu_per_extra_host == 0.5  # (16.5 - 1.0) / 31
    assert ours.commands_per_host == 20
    assert summary[("ansible", "converged re-run", 8)].t_over_t1 == 2.0
    assert summary[("gpufleet", "converged re-run", 1)].cpu_per_extra_host is None
    assert summary[("gpufleet", "first converge", 1)].over_apt_get == 1.5
    assert summary[("ansible", "first converge", 1)].over_apt_get == 2.25
    assert summary[("gpufleet", "converged re-run", 8)].over_apt_get is None


def test_scale_table_shows_each_tool_and_host_count():
    text = converge.median_table(scale_runs(), [1, 8, 32])
    assert "| gpufleet | 32 | 4.0 s | 4.00 | 16.50 s | 0.500 s | 20 |" in text
    assert "| ansible | 8 | 10.0 s | 2.00 | 6.50 s | 0.500 s | 14 |" in text
    assert "| converged re-run | 32 | 4.0 s | 16.5 s | 20 | 20.0 s | 18.5 s | 14 | 5.0x |" in text
    assert "gpufleet 6.0 s, bare apt-get of the same packages 4.0 s: 1.50x" in text
    assert "ansible: T(32 hosts) / T(1 host) = 4.00" in text


def test_summary_csv_has_a_row_per_tool_case_and_host_count(tmp_path):
    path = tmp_path / "summary.csv"
    rows = converge.summarize(scale_runs())
    converge.write_csv(path, rows, [f.name for f in converge.fields(converge.Summary)])
    lines = path.read_text().splitlines()
    assert lines[0].startswith("tool,case,hosts,rounds,seconds,cpu_seconds,cpu_per_extra_host")
    assert len(lines) == 1 + 6 + 3


def _playbook_templates() -> list[tuple[str, dict]]:
    """(template name, the task's own vars) for each template task of the Ansible twin."""
    plays = yaml.safe_load((ROOT / "bench/ansible/baseline.yml").read_text())
    found = []
    for play in plays:
        for task in play["tasks"] + play.get("handlers", []):
            module = task.get("ansible.builtin.template") or task.get("template")
            if module:
                name = module["src"].removeprefix("{{ templates }}/")
                found.append((name, task.get("vars", {})))
    return found


def test_the_twin_renders_the_templates_the_role_renders():
    spec = validate_file(ROOT / "bench/inventory.py")["bench-1"]
    firewall_unit = "firewall/gpufleet-firewall.service.j2"  # the baseline's firewall step
    assert {name for name, _ in _playbook_templates()} == {*template_variables(spec), firewall_unit}


@pytest.mark.parametrize("name", [name for name, _ in _playbook_templates()])
def test_every_variable_a_twin_template_needs_comes_from_the_bench_inventory(name):
    """What the playbook's template task gets is the bench inventory's host variables, the
    facts the playbook gathers and the task's vars (rendered from those): each template
    renders with them, StrictUndefined, or a variable the role added is missing there."""
    specs = validate_file(ROOT / "bench/inventory.py")
    spec = specs["bench-1"]
    host_vars = converge.ansible_host_vars(spec, "10.200.0.31", "/lab/key", specs)
    facts = {"ansible_distribution_release": "bookworm"}  # setup: gather_subset min
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROOT / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    task_vars = dict(_playbook_templates())[name]
    context = {**facts, **host_vars}
    context |= {k: environment.from_string(v).render(context) for k, v in task_vars.items()}
    rendered = environment.get_template(name).render(context)
    for value in template_variables(spec).get(name, {"rules": host_vars["rules"]}).values():
        shown = " ".join(value) if isinstance(value, list) else str(value)
        assert shown in rendered


def test_a_template_variable_the_inventory_lacks_fails_the_render():
    """The check above can fail: the node exporter's template without textfile_directory
    (the variable once added to the role and not to the twin)."""
    specs = validate_file(ROOT / "bench/inventory.py")
    spec = specs["bench-1"]
    host_vars = converge.ansible_host_vars(spec, "10.200.0.31", "/lab/key", specs)
    del host_vars["textfile_directory"]
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROOT / "templates"), undefined=jinja2.StrictUndefined
    )
    with pytest.raises(jinja2.UndefinedError, match="textfile_directory"):
        environment.get_template("node_exporter/prometheus-node-exporter.j2").render(host_vars)


def test_ansible_host_vars_refuse_one_name_with_two_values(monkeypatch):
    specs = validate_file(ROOT / "bench/inventory.py")
    spec = specs["bench-1"]
    monkeypatch.setattr(
        converge,
        "template_variables",
        lambda spec: {"a.j2": {"listen": "1:2"}, "b.j2": {"listen": "3:4"}},
    )
    with pytest.raises(ValueError, match="variable listen"):
        converge.ansible_host_vars(spec, "10.200.0.31", "/lab/key", specs)


def _smoke_runs(bare_commands: float, masters: int) -> list:
    runs = [converge.Timing("gpufleet", case, 1, 1, 1.0, 0) for case in converge.CASES]
    runs += [
        converge.Timing("ansible", case, 1, 1, 5.0, 0, control_masters=masters)
        for case in converge.CASES
    ]
    runs.append(
        converge.Timing("apt-get", "first converge", 1, 1, 4.0, 0, True, 0.1, bare_commands)
    )
    return runs


def test_smoke_checks_the_count_and_the_control_masters_it_relies_on():
    bench = object.__new__(converge.Bench)  # no lab, no ansible-core install
    bench.timings = _smoke_runs(1, 1)
    bench.check_smoke()
    bench.timings = _smoke_runs(2, 1)
    with pytest.raises(SystemExit, match=r"bare apt-get counted \[2\] commands"):
        bench.check_smoke()
    bench.timings = _smoke_runs(1, 0)
    with pytest.raises(SystemExit, match="no SSH control master"):
        bench.check_smoke()
    bench.timings = _smoke_runs(1, 1)[1:]
    with pytest.raises(SystemExit, match="no run of gpufleet dry run, fresh"):
        bench.check_smoke()


def test_a_failed_playbook_shows_its_failed_tasks_not_only_the_recap():
    output = (
        "TASK [Write apt sources (deb822)] ****\n"
        'fatal: [bench-1]: FAILED! => {"msg": "\'textfile_directory\' is undefined"}\n'
        + "ok: [bench-2]\n" * 200
        + RECAP
    )
    shown = converge.ansible_failures(output)
    assert "TASK [Write apt sources (deb822)]" in shown
    assert "'textfile_directory' is undefined" in shown
    assert shown.rstrip().endswith("rescued=0")


def test_stage_spans_split_a_run_at_the_marks_it_wrote():
    marks = "started 100.05\nimported 100.30\nconnect 100.50\nprepare 100.60\n"
    marks += "execute 100.90\ndisconnect 101.00\nexit 101.05\n"
    spans = converge.stage_spans(100.0, marks)
    assert list(spans) == [name for name, _ in converge.STAGES]
    assert spans["deploys run, facts asked"] == pytest.approx(0.30)
    assert sum(spans.values()) == pytest.approx(1.05)
    # A run that stopped before executing has no spans past what it reached.
    partial = converge.stage_spans(100.0, "started 100.05\nimported 100.30\nexit 100.4\n")
    assert list(partial) == ["python starting", "imports", "disconnecting, exit"]
    assert converge.stage_line([spans, spans]).startswith("python starting 0.05 s, imports 0.25 s")
