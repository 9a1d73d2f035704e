"""gpufleet's command line: --help and --version, --limit as pyinfra reads it, every --json
output against its shipped schema, one-line errors without a traceback, aligned tables,
rebuild's confirmation. Only commands that contact no host run on the shipped inventories."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from gpufleet import cli, outputs
from gpufleet.paths import packaged_deploy

ROOT = Path(__file__).resolve().parents[2]
INVENTORIES = [
    "inventory/homelab.py",
    "inventory/lab.py",
    "inventory/lab_pi.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "inventory/examples").glob("*.py")),
]
LAB = "inventory/lab.py"
HOMELAB = "inventory/homelab.py"


@pytest.fixture(autouse=True)
def _in_the_repository(monkeypatch):
    monkeypatch.chdir(ROOT)  # deploys/ and inventory/ as the commands name them


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def conforms(command: str, document: object) -> None:
    """``document`` is what the command's model allows and what its shipped schema says."""
    outputs.OUTPUTS[command].model_validate(document)
    jsonschema = pytest.importorskip("jsonschema")
    shipped = json.loads((outputs.SCHEMAS / f"{command}.json").read_text())
    jsonschema.validate(document, shipped, cls=jsonschema.Draft202012Validator)


# --- help, version, registration -------------------------------------------------------


def test_help_lists_every_subcommand_on_one_line_without_markup(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "``" not in out and "%%" not in out
    listing = out.split("Commands:\n", 1)[1].splitlines()
    for name in cli.main_group.commands:
        line = next(line for line in listing if line.split()[:1] == [name])
        following = listing[listing.index(line) + 1 :][:1]
        assert not following or following[0].split()[0] in cli.main_group.commands, (
            f"{name}'s help takes more than one line"
        )
        assert len(line.split(maxsplit=1)) == 2, f"{name} has no help"


def test_version_comes_from_the_installed_package(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.strip() == f"gpufleet, version {version('gpufleet')}"


def test_every_old_subcommand_is_still_there():
    names = set(cli.main_group.commands)
    assert {
        "validate", "plan", "rebuild", "engines", "routes", "bench", "verify", "preview",
        "firewall", "vault", "reference", "lab",
    } <= names  # fmt: skip
    assert set(cli.main_group.commands["lab"].commands) == {"up", "status", "down"}
    assert set(cli.main_group.commands["vault"].commands) == {"snapshot", "restore"}


# --- --limit ---------------------------------------------------------------------------


def test_preview_with_limit_before_the_deploy_keeps_the_deploy(capsys):
    """argparse's ``--limit`` took every word after it, so ``--limit pi5l deploys/common.py``
    previewed every deploy on a host called deploys/common.py."""
    code, out, err = run(
        capsys, "preview", HOMELAB, "--limit", "pi5l", "deploys/common.py", "--json"
    )
    assert code == 0, err
    shown = json.loads(out)
    assert shown["deploys"] == ["deploys/common.py"]
    assert [h["host"] for h in shown["hosts"]] == ["pi5l"]


def test_a_second_word_after_limit_is_not_a_host(capsys):
    code, _, err = run(capsys, "preview", HOMELAB, "--limit", "pi5l", "pi5-01", "--summary")
    assert code == 1
    assert "no deploy file pi5-01" in err and "repeat --limit" in err


def test_limit_is_repeatable_with_groups_and_globs(capsys):
    code, out, err = run(
        capsys, "plan", HOMELAB, "--limit", "router", "--limit", "ser*", "--limit", "nope", "--json"
    )
    assert code == 0
    hosts = [p["host"] for p in json.loads(out)]
    assert "ser9" in hosts and all(h == "ser9" or h.startswith("pi5") for h in hosts)
    assert err.strip() == "No host matches found for --limit pattern: nope"


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", LAB],
        ["engines", LAB],
        ["routes", LAB],
        ["firewall", LAB],
        ["preview", LAB, "deploys/common.py"],
        ["verify", LAB, "--list"],
        ["bench", LAB, "--engines-only"],
        ["rebuild", LAB],
    ],
)
def test_a_limit_that_selects_nothing_is_one_line_and_exit_1(capsys, argv, pyinfra_calls):
    if argv[0] == "rebuild":
        code, out, err = run(capsys, *argv, "lab-nothing-*", "--dry")
    else:
        code, out, err = run(capsys, *argv, "--limit", "lab-nothing-*")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gpufleet {argv[0]}: --limit lab-nothing-*")
    assert "lab-gpu-1" in lines[0] and "gpu_nodes" in lines[0]  # what there is to choose
    assert out == "" and pyinfra_calls == []


def test_verify_and_preview_select_as_pyinfra_does():
    from gpufleet.preview import profiles_for
    from gpufleet.verify import targets

    assert [t.name for t in targets(ROOT / LAB, ["lab-*-1", "router"])] == [
        "lab-gpu-1", "lab-pve-1", "lab-lxc-1", "lab-infra-1", "lab-cpu-1", "lab-amd-1",
    ]  # fmt: skip
    assert list(profiles_for(LAB, ["proxmox_hosts", "lab-lxc-*"])) == ["lab-pve-1", "lab-lxc-1"]


# --- --json and its schemas ------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(outputs.OUTPUTS))
def test_shipped_schema_is_the_models(command):
    shipped = (outputs.SCHEMAS / f"{command}.json").read_text()
    assert shipped == outputs.schema_text(command), "run: python -m gpufleet.outputs"


@pytest.mark.parametrize("inventory", INVENTORIES)
@pytest.mark.parametrize("command", ["validate", "plan", "engines", "routes", "firewall"])
def test_json_of_each_offline_command_matches_its_schema(capsys, command, inventory):
    code, out, err = run(capsys, command, inventory, "--json")
    assert code == 0, err
    document = json.loads(out)
    conforms(command, document)
    if command == "validate":
        assert document["files"][0]["valid"] is True


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_preview_json_matches_its_schema(capsys, inventory):
    code, out, err = run(capsys, "preview", inventory, "deploys/common.py", "--json")
    assert code == 0, err
    document = json.loads(out)
    conforms("preview", document)
    assert document["hosts"] and all(h["operations"] for h in document["hosts"])


def test_validate_json_reports_each_bad_file(capsys):
    bad = "tests/fixtures/bad_inventories/port_clash.py"
    code, out, _ = run(capsys, "validate", LAB, bad, "missing.py", "--json")
    assert code == 1
    document = json.loads(out)
    conforms("validate", document)
    assert [(f["path"], f["valid"]) for f in document["files"]] == [
        (LAB, True), (bad, False), ("missing.py", False),
    ]  # fmt: skip
    assert "port 9100 is already used" in document["files"][1]["problems"][0]


@pytest.mark.parametrize("inventory", [LAB, HOMELAB])
def test_verify_list_json_matches_its_schema_and_runs_nothing(capsys, inventory):
    code, out, err = run(capsys, "verify", inventory, "--list", "--json", "--limit", "gpu_nodes")
    assert code == 0, err
    document = json.loads(out)  # pytest's own lines went to stderr
    conforms("verify", document)
    assert document["ran"] is False and document["junit_xml"] is None
    assert document["checks"] and all(c["result"] is None for c in document["checks"])


def test_verify_suites_are_repeatable_or_listed_after_one_option(capsys):
    for argv in (["--suite", "baseline", "edge"], ["--suite", "baseline", "--suite", "edge"]):
        code, out, _ = run(capsys, "verify", LAB, *argv, "--list", "--json")
        assert code == 0
        assert {c["suite"] for c in json.loads(out)["checks"]} <= {"baseline", "edge"}
        assert "baseline" in {c["suite"] for c in json.loads(out)["checks"]}


SYNTHETIC_ROWS: list[dict[str, object]] = [
    {
        "endpoint": "a-very-long-host-name-indeed/llama.cpp", "host": "a-very-long-host-name",
        "engine": "llama.cpp", "model": "XS-LOC-FRE-gemma3-270m", "gpu": "CPU",
        "quant": "Q4_K_M", "concurrency": 1, "runs": 1, "ttft_s": 0.0412,
        "ttft_ci95_s": float("nan"), "decode_tok_s": 81.5, "decode_tok_s_ci95": float("nan"),
        "latency_s": 0.61, "latency_ci95_s": float("nan"), "claimed_tok_s": "",
        "planner_bound_tok_s": "", "measured_over_claimed": "", "measured_over_bound": "",
    },
    {
        "endpoint": "gw/gateway", "host": "box", "engine": "ollama", "model": "m",
        "gpu": "RTX 4090", "quant": "Q4_K_M", "concurrency": 4, "runs": 20, "ttft_s": 0.2,
        "ttft_ci95_s": 0.01, "decode_tok_s": 40.25, "decode_tok_s_ci95": 1.5,
        "latency_s": 1.9, "latency_ci95_s": 0.1, "claimed_tok_s": 30.0,
        "planner_bound_tok_s": 95.1, "measured_over_claimed": 1.34,
        "measured_over_bound": 0.423,
    },
]  # fmt: skip


def test_bench_json_matches_its_schema_with_nan_and_empty_cells_as_null(capsys):
    cli.print_bench_json(SYNTHETIC_ROWS, "bench/x.csv")
    document = json.loads(capsys.readouterr().out)  # strict JSON: a NaN would not parse
    conforms("bench", document)
    first, second = document["rows"]
    assert first["ttft_ci95_s"] is None and first["claimed_tok_s"] is None
    assert second["measured_over_claimed"] == 1.34 and document["csv"] == "bench/x.csv"
    assert first["measured_over_bound"] is None and second["measured_over_bound"] == 0.423


def test_bench_table_columns_align_past_a_long_endpoint_name(capsys):
    cli.print_bench_table(SYNTHETIC_ROWS)
    lines = capsys.readouterr().out.splitlines()
    assert "\x1b[" not in "".join(lines)  # not a terminal: no colour
    starts = {
        line.index(token) for line, token in zip(lines, ["model", "XS-LOC", "m "], strict=True)
    }
    assert len(starts) == 1, lines


def test_concurrency_levels_take_the_old_and_the_repeated_form(capsys, monkeypatch):
    import gpufleet.bench

    seen = []
    monkeypatch.setattr(gpufleet.bench, "endpoints", lambda *a: [])

    def no_bench(found, runs, levels, csv_path, progress):
        seen.append(levels)
        return SYNTHETIC_ROWS

    monkeypatch.setattr(gpufleet.bench, "bench", no_bench)
    for argv in (["1", "2"], ["1", "--concurrency", "2"], ["1,2"]):
        code, _, _ = run(capsys, "bench", LAB, "--engines-only", "--concurrency", *argv)
        assert code == 0
    assert seen == [[1, 2]] * 3
    run(capsys, "bench", LAB, "--engines-only")
    assert seen[-1] == [1, 4]


# --- tables ----------------------------------------------------------------------------


def test_a_partial_placement_no_longer_runs_into_the_next_column(capsys):
    code, out, _ = run(capsys, "plan", HOMELAB, "--limit", "akshat-pc")
    assert code == 0
    assert "\x1b[" not in out
    rows = [line for line in out.splitlines() if " ollama " in line]
    partial = [line for line in rows if "layers on GPU)" in line]
    assert partial
    for line in partial:
        assert re.search(r"layers on GPU\)\s{2,}<= ", line), line
    bound_at = {line.index("<= ") for line in rows}
    assert len(bound_at) == 1, "the speed bound column starts in one place"
    assert all(line == line.rstrip() for line in out.splitlines())


def test_no_color_and_a_pipe_give_plain_text(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    assert cli._console().no_color
    assert cli._console().color_system is None  # stdout is captured here, not a terminal


# --- errors ----------------------------------------------------------------------------

BROKEN = "tests/fixtures/broken_inventories/syntax_error.py"
BAD = "tests/fixtures/bad_inventories/port_clash.py"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["validate", "no/such.py"], "no such inventory file"),
        (["plan", BROKEN], "syntax_error.py:5: Python syntax error"),
        (["engines", BAD], "port 9100 is already used"),
        (["routes", "no/such.py"], "no such inventory file"),
        (["firewall", BROKEN], "syntax_error.py:5: Python syntax error"),
        (["preview", BAD, "deploys/common.py"], "port 9100 is already used"),
        (["verify", "no/such.py", "--list"], "no such inventory file"),
        (["bench", BROKEN], "syntax_error.py:5: Python syntax error"),
        (["rebuild", BAD, "box", "--dry"], "port 9100 is already used"),  # stops before pyinfra
        (["vault", "snapshot", "no/such.py", "out.snap"], "no such inventory file"),
        (["preview", LAB, "deploys/no_such_deploy.py"], "no deploy file"),
        (["verify", LAB, "--list", "--suite", "nope"], "no suite nope"),
    ],
)
def test_a_user_error_is_one_line_on_stderr_without_a_traceback(argv, expected):
    result = subprocess.run(
        [sys.executable, "-m", "gpufleet.cli", *argv],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert lines[0].startswith(f"gpufleet {argv[0]}: ") or argv[0] == "validate"


def test_ctrl_c_exits_130_without_a_traceback(capsys, monkeypatch):
    import gpufleet.inventory

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(gpufleet.inventory, "validate_file", interrupted)
    code, _, err = run(capsys, "plan", LAB)
    assert code == 130
    assert "interrupted" in err and "Traceback" not in err


def test_a_closed_pipe_ends_quietly():
    """``gpufleet preview --json ... | head -1``: the reader goes after one line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gpufleet.cli", "preview", HOMELAB, "deploys/common.py", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().strip() == b"{"
    process.stdout.close()  # more than a pipe's buffer is still to come
    error = process.stderr.read().decode()
    assert process.wait(timeout=120) == cli.EXIT_BROKEN_PIPE
    assert "Traceback" not in error and "BrokenPipe" not in error and "Exception" not in error


def test_usage_errors_exit_2(capsys):
    code, _, err = run(capsys, "plan")
    assert code == 2 and "Missing argument 'INVENTORY'" in err


# --- rebuild ---------------------------------------------------------------------------

NOWHERE = """cpu_nodes = [
    ("box", {"ssh_hostname": "192.0.2.10", "hardware": {"cores": 4, "ram_gb": 16}}),
]
"""
"""One host at a documentation address (TEST-NET-1): should pyinfra ever really run, it
reaches nothing."""


@pytest.fixture
def nowhere(tmp_path) -> str:
    inventory = tmp_path / "nowhere.py"
    inventory.write_text(NOWHERE)
    return str(inventory)


@pytest.fixture
def pyinfra_calls(monkeypatch) -> list[list[str]]:
    """pyinfra's runs, recorded instead of made."""
    calls: list[list[str]] = []

    def recorded(command: list[str]) -> int:
        calls.append(command)
        return 0

    monkeypatch.setattr(cli, "run_pyinfra", recorded)
    return calls


def test_rebuild_asks_before_it_changes_anything(capsys, monkeypatch, pyinfra_calls, nowhere):
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    code, _, err = run(capsys, "rebuild", nowhere, "box")
    assert code == 1 and pyinfra_calls == []
    assert f"Rebuild box of {nowhere}" in err and "nothing changed" in err
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # no answer at all: no
    assert run(capsys, "rebuild", nowhere, "box")[0] == 1 and pyinfra_calls == []
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    assert run(capsys, "rebuild", nowhere, "box")[0] == 0
    pyinfra = str(Path(sys.executable).parent / "pyinfra")
    rebuild_deploy = packaged_deploy("deploys/rebuild.py")
    assert pyinfra_calls == [[pyinfra, "-v", nowhere, rebuild_deploy, "--limit", "box", "-y"]]


@pytest.mark.parametrize(("flag", "mode"), [("--yes", "-y"), ("-y", "-y"), ("--dry", "--dry")])
def test_rebuild_with_yes_or_dry_does_not_ask(
    capsys, monkeypatch, pyinfra_calls, nowhere, flag, mode
):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = run(capsys, "rebuild", nowhere, "box", flag)
    assert code == 0 and "Rebuild" not in err
    assert len(pyinfra_calls) == 1
    assert pyinfra_calls[0][-3:] == ["--limit", "box", mode]


# --- progress --------------------------------------------------------------------------


def test_lab_up_tells_its_steps_to_whoever_asks(monkeypatch):
    from gpufleet import lab

    heard: list[str] = []
    with lab._reporting_to(heard.append):
        lab._report("base root for x86_64")
    lab._report("not heard: nobody asked")
    assert heard == ["base root for x86_64"]


def test_bench_accounts_for_every_round_even_of_an_endpoint_given_up(tmp_path, monkeypatch):
    import gpufleet.bench as bench

    endpoint = bench.Endpoint("h/e", "h", "e", "http://x/v1", "m", "CPU", "Q4", None, None)
    monkeypatch.setattr(bench, "reachable", lambda e: e.name == "h/e")
    monkeypatch.setattr(bench, "one_run", lambda e: bench.Run(0.1, 10, 50.0, 0.3))
    rounds: list[int] = []
    down = bench.Endpoint("g/e", "g", "e", "http://y/v1", "m", "CPU", "Q4", None, None)
    rows = bench.bench(
        [endpoint, down], 3, [1, 2], tmp_path / "r.csv", lambda _, n: rounds.append(n)
    )
    assert len(rows) == 2
    assert sum(rounds) == 2 * 2 * 3 and rounds[-1] == 6
    assert not math.isnan(float(str(rows[0]["ttft_ci95_s"])))


def test_a_host_the_deploys_would_stop_on_hides_none_of_the_others(capsys):
    # Three hosts of this example serve a GGUF file no fresh host has: each would stop, and
    # the Proxmox host that does not is still planned in full.
    example = "inventory/examples/proxmox_desktop.py"
    code, out, err = run(capsys, "preview", example, "--json")
    assert code == 1
    assert "gpufleet preview: xps15 would stop: DeployError" in err
    document = json.loads(out)
    conforms("preview", document)
    assert sorted(document["stopped"]) == ["jetson-orin-nano", "schlimers-server", "xps15"]
    assert "Llama-3.2-1B-Instruct-Q4_K_M.gguf is not on the host" in document["stopped"]["xps15"]
    assert [h["host"] for h in document["hosts"]] == ["proxmox-homelab"]
    assert document["hosts"][0]["changing"] > 0
    code, out, _ = run(capsys, "preview", example, "--summary")
    assert code == 1
    assert "proxmox-homelab (proxmox8-amd64+1xNVIDIA): " in out
    assert "xps15 (proxmox8-amd64+1xNVIDIA): would stop: DeployError: xps15: models:" in out


def test_a_table_into_a_pipe_keeps_one_row_a_line_whatever_columns_says():
    # Test runners and some shells export COLUMNS=80 to children whose output is a pipe.
    environment = {**os.environ, "COLUMNS": "40", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "gpufleet.cli", "plan", "inventory/homelab.py"],
        cwd=ROOT, env=environment, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "qwen2.5-coder:32b" in line]
    assert rows and all("ollama" in row and "tok/s" in row for row in rows)
