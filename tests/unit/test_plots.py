"""The bench and plan pictures: written, valid PNG and SVG, and holding what they should."""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpufleet.bench import COLUMNS
from gpufleet.catalogue import load_catalogue
from gpufleet.engines.ollama import OLLAMA
from gpufleet.inventory import validate_file
from gpufleet.planner import plan_host
from gpufleet.plots import (
    PlotError,
    bounds_from_rows,
    element_id,
    largest_loaded_sets,
    plans_of,
    plot_bench,
    plot_command,
    plot_plan,
    read_bench_csv,
)

pytest.importorskip("matplotlib")

ROOT = Path(__file__).parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEGMENT = re.compile(r"^seg-(.+)-(\d+)-(weights|kv|overhead)-(\w+)$")


def _row(endpoint: str, model: str, concurrency: int, decode: float, bound: object) -> dict:
    return {
        "endpoint": endpoint, "host": endpoint.split("/")[0], "engine": endpoint.split("/")[1],
        "model": model, "gpu": "CPU", "quant": "Q8_0", "concurrency": concurrency, "runs": 4,
        "ttft_s": 0.05 * concurrency, "ttft_ci95_s": 0.01, "decode_tok_s": decode,
        "decode_tok_s_ci95": 2.5, "latency_s": 1.1, "latency_ci95_s": 0.1, "claimed_tok_s": "",
        "planner_bound_tok_s": bound, "measured_over_claimed": "",
    }  # fmt: skip


ROWS = [
    _row("lab-gpu-1/llama.cpp", "XS-LOC-FRE-gemma3-270m", 1, 41.2, 84.6),
    _row("lab-gpu-1/llama.cpp", "XS-LOC-FRE-gemma3-270m", 2, 30.7, 84.6),
    _row("lab-lxc-1/llama.cpp", "XS-LOC-FRE-gemma3-270m-offload", 1, 38.0, 120.3),
    _row("lab-lxc-1/llama.cpp", "XS-LOC-FRE-gemma3-270m-offload", 2, 27.9, 120.3),
    _row("lab-infra-1/gateway", "XS-LOC-FRE-gemma3-270m", 1, 35.5, ""),  # no bound: none drawn
]


def svg_ids(path: Path) -> list[str]:
    tree = ElementTree.parse(path)  # a valid XML document, or this raises
    assert tree.getroot().tag == "{http://www.w3.org/2000/svg}svg"
    return [e.get("id", "") for e in tree.iter() if e.get("id")]


def svg_text(path: Path) -> str:
    tree = ElementTree.parse(path)
    return " ".join(e.text or "" for e in tree.iter() if e.tag.endswith("text"))


def test_bench_svg_has_every_endpoint_and_one_bound_line_per_bounded_endpoint(tmp_path):
    written = plot_bench(ROWS, None, tmp_path / "bench.svg")
    ids = svg_ids(written)
    text = svg_text(written)
    for row in ROWS:
        assert row["endpoint"] in text
    bounds = sorted(i for i in ids if i.startswith("bound-"))
    assert bounds == [
        element_id("bound", "lab-gpu-1/llama.cpp · XS-LOC-FRE-gemma3-270m"),
        element_id("bound", "lab-lxc-1/llama.cpp · XS-LOC-FRE-gemma3-270m-offload"),
    ]
    assert "bound 84.6" in text and "bound 120.3" in text
    assert len([i for i in ids if i.startswith("decode-")]) == 3  # one line per series
    assert len([i for i in ids if i.startswith("ttft-")]) == 3


def test_bounds_given_by_endpoint_replace_the_rows_own(tmp_path):
    written = plot_bench(ROWS, {"lab-infra-1/gateway": 99.0}, tmp_path / "bench.svg")
    assert [i for i in svg_ids(written) if i.startswith("bound-")] == [
        element_id("bound", "lab-infra-1/gateway · XS-LOC-FRE-gemma3-270m")
    ]
    assert "bound 99" in svg_text(written)


def test_bench_png_is_a_png_from_the_csv_bench_writes(tmp_path):
    import csv

    from PIL import Image

    table = tmp_path / "bench.csv"
    with open(table, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(ROWS)
    rows = read_bench_csv(table)
    assert bounds_from_rows(rows)["lab-gpu-1/llama.cpp · XS-LOC-FRE-gemma3-270m"] == 84.6
    result = CliRunner().invoke(plot_command, ["bench", str(table), str(tmp_path / "b.png")])
    assert result.exit_code == 0, result.output
    data = (tmp_path / "b.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(tmp_path / "b.png") as image:
        image.verify()
        assert image.size[0] > 1000 and image.size[1] > 500


def test_plan_svg_has_one_bar_piece_per_placement_component_and_each_host(tmp_path):
    specs = validate_file(ROOT / "inventory/lab.py")
    plans, services, at_once = plans_of(specs)
    written = plot_plan(plans, tmp_path / "plan.svg", services, at_once)
    ids = svg_ids(written)
    text = svg_text(written)
    for plan in plans:
        assert plan.host in text
    # Each placement the plan places is drawn (lab-gpu-1's Ollama model in its own bar).
    pieces = [m.groups() for i in ids if (m := SEGMENT.match(i))]
    placed = {(element_id(p.host), q.index) for p in plans for q in p.placements if not q.problem}
    # lab-gpu-1 holds layers of lab-cpu-1's model too: drawn after its own placements.
    held = {
        (element_id(p.host), len(p.placements) + n) for p in plans for n in range(len(p.rpc_parts))
    }
    assert held == {(element_id("lab-gpu-1"), 2)}
    assert {(host, int(index)) for host, index, _, _ in pieces} == placed | held
    split = [
        q
        for p in plans
        for q in p.placements
        if q.engine != "ollama" and not q.rpc and 0 < q.ram_gb < q.need_gb
    ]
    assert [q.model for q in split] == ["gemma3:270m"]  # lab-lxc-1's, 6 of 18 layers on the GPU
    weights = [piece for piece in pieces if piece[2] == "weights"]
    # A model split between GPU and RAM has weights in both bars.
    assert len(weights) == len(placed) + len(held) + len(split)
    # lab-lxc-1's GPU holds Jellyfin's 3.6 GB first; every host has its capacity lines.
    assert element_id("services", "lab-lxc-1") in ids
    for plan in plans:
        assert element_id("capacity", plan.host, "ram") in ids
    assert element_id("capacity", "lab-gpu-1", "ollama") in ids
    assert element_id("capacity", "lab-gpu-1", "gpu") not in ids  # no GPU there


def test_only_the_largest_set_an_on_demand_engine_keeps_loaded_is_drawn(tmp_path):
    specs = validate_file(ROOT / "inventory/homelab.py")
    spec = specs["akshat-pc"]
    plan = plan_host(spec, load_catalogue())
    at_once = largest_loaded_sets(spec, plan)
    ollama = [p for p in plan.placements if p.engine == "ollama" and not p.problem]
    keeps = OLLAMA.max_loaded(spec)  # the host's ollama.max_loaded_models
    assert len(at_once["ollama"]) == keeps < len(ollama)
    biggest = sorted(ollama, key=lambda p: p.need_gb, reverse=True)[:keeps]
    assert set(at_once["ollama"]) == {p.index for p in biggest}
    written = plot_plan([plan], tmp_path / "one.svg", None, {"akshat-pc": at_once})
    drawn = {int(m.group(2)) for i in svg_ids(written) if (m := SEGMENT.match(i))}
    assert drawn == set(at_once["ollama"])


def test_a_missing_matplotlib_is_one_line_that_says_what_to_install(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotError) as raised:
        plot_bench(ROWS, None, tmp_path / "bench.svg")
    assert raised.value.message == (
        "drawing pictures needs matplotlib: pip install 'gpufleet[plot]'"
    )
    assert not (tmp_path / "bench.svg").exists()


def test_a_picture_name_without_png_or_svg_is_refused(tmp_path):
    with pytest.raises(PlotError, match=r"name a \.png or a \.svg file"):
        plot_bench(ROWS, None, tmp_path / "bench.pdf")
    result = CliRunner().invoke(plot_command, ["plan", str(ROOT / "inventory/homelab.py"), "x.jpg"])
    assert result.exit_code == 1 and "name a .png or a .svg file" in result.output
