"""Pictures of the bench and the plan, as PNG or SVG, drawn with matplotlib (an optional extra:
``pip install 'gpufleet[plot]'``).

    gpufleet bench inventory/lab.py --csv bench.csv --plot bench.svg
    gpufleet plan inventory/homelab.py --plot plan.svg
    gpufleet plot bench bench.csv bench.svg          # from a CSV written earlier
    gpufleet plot plan inventory/homelab.py plan.png

* :func:`plot_bench`: decode speed and time to first token against concurrency, each point the
  mean with its 95 % interval, and the planner's speed bound of each endpoint as a dashed line
  in the same colour (decoding can never beat it).
* :func:`plot_plan`: each host's GPU memory and system memory as stacked bars of what the plan
  puts there (each placement's weights, KV cache and runtime overhead), against the host's
  capacity (a black line); system memory starts with the reserve the planner keeps for the OS.

SVG text stays text (searchable, selectable, small), and every drawn element carries an id
(``bound-…``, ``seg-…``, ``capacity-…``) a test or a stylesheet can find.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from gpufleet.models import HostSpec
    from gpufleet.planner import HostPlan

INSTALL_HINT = "pip install 'gpufleet[plot]'"
FORMATS = (".png", ".svg")
COMPONENT_COLOURS = {"weights": "#4C72B0", "kv": "#DD8452", "overhead": "#8C8C8C"}
COMPONENT_LABELS = {"weights": "weights", "kv": "KV cache", "overhead": "runtime overhead"}
RESERVE_COLOUR = "#E5E5E5"
SERVICES_COLOUR = "#B5A1D6"


class PlotError(click.ClickException):
    """A picture that cannot be drawn; one line that says what to do."""


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas (no display, no pyplot state)."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(f"drawing pictures needs matplotlib: {INSTALL_HINT}") from None
    matplotlib.rcParams["svg.fonttype"] = "none"  # text as text, not as outlines
    matplotlib.rcParams["svg.hashsalt"] = "gpufleet"  # the same input gives the same file
    return Figure(figsize=(width, height), layout="constrained")


def _check_path(path: str | Path) -> Path:
    target = Path(path)
    if target.suffix.lower() not in FORMATS:
        raise PlotError(f"{target}: name a .png or a .svg file")
    return target


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"Date": None} if path.suffix.lower() == ".svg" else {}
    figure.savefig(path, dpi=150, metadata=metadata)
    return path


def element_id(*parts: object) -> str:
    """An SVG id from its parts: ``element_id("bound", "lab-gpu-1/llama.cpp")`` is
    ``bound-lab-gpu-1_llama.cpp``."""
    return "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", str(part)) for part in parts)


# --- bench ------------------------------------------------------------------------------------


def _number(value: object) -> float:
    """A CSV cell as a float; blank or missing is NaN."""
    if value is None or value == "":
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def series_name(row: Mapping[str, object]) -> str:
    """One line of the bench plot: an endpoint and the model asked there (a gateway serves
    several)."""
    return f"{row['endpoint']} · {row['model']}"


def bounds_from_rows(rows: Iterable[Mapping[str, object]]) -> dict[str, float]:
    """The planner's bound of each series, as the bench rows carry it."""
    found = {}
    for row in rows:
        bound = _number(row.get("planner_bound_tok_s"))
        if not math.isnan(bound):
            found[series_name(row)] = bound
    return found


def read_bench_csv(path: str | Path) -> list[dict[str, object]]:
    """The rows ``gpufleet bench --csv`` wrote."""
    with open(path, newline="") as source:
        return list(csv.DictReader(source))


def plot_bench(
    rows: Sequence[Mapping[str, object]],
    bounds: Mapping[str, float | None] | None,
    path: str | Path,
) -> Path:
    """Decode speed and TTFT against concurrency, with 95 % intervals, one line per endpoint
    and model, and each one's planner bound (``bounds`` by series name or endpoint; None: the
    bounds the rows carry). Returns the file written."""
    target = _check_path(path)
    if not rows:
        raise PlotError("no bench rows to draw: every endpoint was skipped or failed")
    bounds = bounds_from_rows(rows) if bounds is None else bounds
    series: dict[str, list[Mapping[str, object]]] = {}
    for row in rows:
        series.setdefault(series_name(row), []).append(row)
    figure = _figure(11, 4.8)
    decode, ttft = figure.subplots(1, 2)
    cycle = [f"C{i}" for i in range(10)]
    levels: set[int] = set()
    labelled: set[float] = set()
    for number, (name, points) in enumerate(series.items()):
        colour = cycle[number % len(cycle)]
        points = sorted(points, key=lambda r: _number(r["concurrency"]))
        x = [_number(r["concurrency"]) for r in points]
        levels.update(int(v) for v in x if not math.isnan(v))

        def errors(column: str, points: list[Mapping[str, object]] = points) -> list[float]:
            return [0.0 if math.isnan(e := _number(r[column])) else e for r in points]

        line = decode.errorbar(
            x,
            [_number(r["decode_tok_s"]) for r in points],
            yerr=errors("decode_tok_s_ci95"),
            color=colour,
            marker="o",
            capsize=4,
            label=name,
        )
        line.lines[0].set_gid(element_id("decode", name))
        line = ttft.errorbar(
            x,
            [_number(r["ttft_s"]) for r in points],
            yerr=errors("ttft_ci95_s"),
            color=colour,
            marker="o",
            capsize=4,
        )
        line.lines[0].set_gid(element_id("ttft", name))
        endpoint = str(points[0]["endpoint"])
        bound = bounds.get(name, bounds.get(endpoint))
        if bound:
            drawn = decode.axhline(bound, color=colour, linestyle="--", linewidth=1.2)
            drawn.set_gid(element_id("bound", name))
            if bound in labelled:
                continue  # endpoints of one model on like hosts share a bound: one label
            labelled.add(bound)
            decode.annotate(
                f"bound {bound:g}",
                (1.0, bound),
                xycoords=("axes fraction", "data"),
                xytext=(-4, 3),
                textcoords="offset points",
                ha="right",
                fontsize=7,
                color=colour,
            )
    for axes, title, unit in (
        (decode, "decode speed (mean, 95 % interval)", "tokens/s per request"),
        (ttft, "time to first token (mean, 95 % interval)", "seconds"),
    ):
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("concurrent requests")
        axes.set_ylabel(unit)
        axes.set_xticks(sorted(levels))
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
    figure.legend(loc="outside lower center", ncols=2, fontsize=8, title="endpoint · model")
    figure.suptitle("gpufleet bench: measured against the planner's bound (dashed)", fontsize=11)
    return _save(figure, target)


# --- plan -------------------------------------------------------------------------------------


def placement_pieces(
    plan: HostPlan, indices: Collection[int] | None = None, held: bool = True
) -> list[tuple[int, str, str, float, float]]:
    """(placement index, model, component, GB on the GPU, GB in system memory) for each
    component (weights, KV cache, runtime overhead) of each placement the planner placed (of
    ``indices`` only, when given): the GPU's share is the one the planner gave it (the rest is
    what it puts in system memory, ``ram_gb``). A model split across hosts counts this host's
    share; the layers a host holds of other hosts' models (``held``) follow its own
    placements, numbered after them: their weights and KV cache, and a runtime's allowance."""
    from gpufleet.planner import RUNTIME_OVERHEAD_GB

    pieces = []
    for placement in plan.placements:
        if placement.problem or (indices is not None and placement.index not in indices):
            continue
        need = placement.need_gb
        gpu_share = (need - placement.ram_gb) / need if need > 0 else 0.0
        scale = 1.0
        if placement.rpc:
            here = placement.rpc[0]
            gpu_share = 1.0 if here.on_gpu else 0.0
            scale = here.layers / placement.layers if placement.layers else 0.0
        components = {
            "weights": placement.weights_gb * scale,
            "kv": placement.kv_gb * scale,
            "overhead": max(need - placement.weights_gb - placement.kv_gb, 0.0)
            / max(len(placement.rpc), 1),
        }
        for component, gb in components.items():
            pieces.append(
                (placement.index, placement.model, component, gb * gpu_share, gb * (1 - gpu_share))
            )
    if held:
        for number, part in enumerate(plan.rpc_parts, start=len(plan.placements)):
            layers_gb = part.need_gb - RUNTIME_OVERHEAD_GB
            label = f"{part.model} for {part.head}"
            for component, gb in (("weights", layers_gb), ("overhead", RUNTIME_OVERHEAD_GB)):
                on_gpu = gb if part.on_gpu else 0.0
                pieces.append((number, label, component, on_gpu, gb - on_gpu))
    return pieces


def on_demand_engines() -> set[str]:
    """Engines that load models when asked and decide each one's GPU split then (Ollama)."""
    from gpufleet.engines import ENGINES

    return {engine.name for engine in ENGINES if engine.loads_on_demand}


def largest_loaded_sets(spec: HostSpec, plan: HostPlan) -> dict[str, list[int]]:
    """Per on-demand engine of the host, the placements (indices) of the largest set it may
    keep loaded at once, as the planner checks it: the biggest ``max_loaded`` by need."""
    from gpufleet.engines import serving
    from gpufleet.planner import largest_loaded

    return {
        engine.name: [p.index for p in largest_loaded(spec, plan, engine)]
        for engine in serving(spec)
        if engine.loads_on_demand
    }


def _stack(
    axes: Any,
    x: float,
    host: str,
    pieces: list[tuple[int, str, str, float]],
    base: float,
    where: str,
    label_from: float,
    alpha: float = 1.0,
) -> float:
    """Stack (index, model, component, GB) pieces on the bar at ``x`` from ``base``; returns
    the top. A model's name is written on its weights where they are tall enough to hold it."""
    for index, model, component, gb in pieces:
        if gb <= 0.005:
            continue
        bar = axes.bar(
            x,
            gb,
            bottom=base,
            color=COMPONENT_COLOURS[component],
            edgecolor="white",
            linewidth=0.6,
            alpha=alpha,
        )
        bar.patches[0].set_gid(element_id("seg", host, index, component, where))
        if component == "weights" and gb >= label_from:
            axes.text(x, base + gb / 2, model, ha="center", va="center", fontsize=6,
                      rotation=90, color="white" if alpha == 1.0 else "black",
                      clip_on=True)  # fmt: skip
        base += gb
    return base


def _capacity(axes: Any, x: float, gb: float, host: str, kind: str, label: str) -> None:
    line = axes.hlines(gb, x - 0.45, x + 0.45, colors="black", linewidth=2)
    line.set_gid(element_id("capacity", host, kind))
    axes.annotate(label, (x, gb), xytext=(0, 2), textcoords="offset points", ha="center",
                  fontsize=6)  # fmt: skip


def plot_plan(
    plans: Sequence[HostPlan],
    path: str | Path,
    services_gb: Mapping[str, float] | None = None,
    loaded_at_once: Mapping[str, Mapping[str, Collection[int]]] | None = None,
) -> Path:
    """Each host's GPU and system memory as the plan fills them, against its capacity.

    The GPU and RAM bars hold what the engines that keep their model loaded take (llama.cpp,
    vLLM: the plan's dedicated use). An engine that loads models on demand (Ollama) gets a
    bar of its own: the largest set of its models it may keep loaded at once (``loaded_at_
    once``: host -> engine -> placement indices; all of them when not given), against the
    VRAM and free system memory it splits them over when it loads them. ``services_gb``: GPU
    memory the host's declared services hold (host -> GB). Returns the file written."""
    from gpufleet.sizing import SYSTEM_RESERVE_GB

    target = _check_path(path)
    if not plans:
        raise PlotError("no host with a placement to draw")
    services_gb = services_gb or {}
    on_demand = on_demand_engines()
    bars = sum(2 + len({p.engine for p in plan.placements} & on_demand) for plan in plans)
    figure = _figure(max(7.0, 0.62 * bars + 1.5), 6)
    axes = figure.subplots()
    ticks: list[float] = []
    tick_labels: list[str] = []
    centres: list[float] = []
    host_labels: list[str] = []
    ceiling, x = 0.0, 0.0
    for plan in plans:
        first = x
        dedicated = {p.index for p in plan.placements if p.engine not in on_demand}
        pieces = placement_pieces(plan, dedicated)
        label_from = 0.3 * max(plan.vram_gb, plan.ram_gb, 1.0)  # room for a name
        gpu_base = services_gb.get(plan.host, 0.0)
        if gpu_base:
            bar = axes.bar(x, gpu_base, color=SERVICES_COLOUR, edgecolor="white")
            bar.patches[0].set_gid(element_id("services", plan.host))
        gpu_top = _stack(
            axes, x, plan.host, [(i, m, c, g) for i, m, c, g, _ in pieces], gpu_base, "gpu",
            label_from,
        )  # fmt: skip
        if plan.vram_gb:
            _capacity(axes, x, plan.vram_gb, plan.host, "gpu", f"{plan.vram_gb:g} GB")
        else:
            axes.text(x, 0.2, "no GPU", ha="center", va="bottom", fontsize=6, rotation=90)
        ticks.append(x)
        tick_labels.append("GPU")
        x += 1.0
        reserve = min(SYSTEM_RESERVE_GB, plan.ram_gb)
        bar = axes.bar(x, reserve, color=RESERVE_COLOUR, edgecolor="white", hatch="//")
        bar.patches[0].set_gid(element_id("reserve", plan.host))
        ram_top = _stack(
            axes, x, plan.host, [(i, m, c, r) for i, m, c, _, r in pieces], reserve, "ram",
            label_from,
        )  # fmt: skip
        _capacity(axes, x, plan.ram_gb, plan.host, "ram", f"{plan.ram_gb:g} GB")
        ticks.append(x)
        tick_labels.append("RAM")
        tops = [gpu_top, ram_top, plan.vram_gb, plan.ram_gb]
        free_ram = max(plan.ram_gb - SYSTEM_RESERVE_GB - plan.ram_used_gb, 0.0)
        for engine in sorted({p.engine for p in plan.placements} & on_demand):
            x += 1.0
            asked = (loaded_at_once or {}).get(plan.host, {}).get(engine)
            chosen = (
                set(asked)
                if asked is not None
                else {p.index for p in plan.placements if p.engine == engine}
            )
            chosen_pieces = placement_pieces(plan, chosen, held=False)
            whole = [(i, m, c, g + r) for i, m, c, g, r in chosen_pieces]
            top = _stack(axes, x, plan.host, whole, 0.0, engine, label_from, alpha=0.55)
            room = plan.vram_gb + free_ram
            _capacity(axes, x, room, plan.host, engine, f"{room:.0f} GB")
            ticks.append(x)
            tick_labels.append(f"{engine}\nat once")
            tops += [top, room]
        not_placed = sum(1 for p in plan.placements if p.problem)
        label = plan.host + (" (unified)" if plan.unified else "")
        if not_placed:
            label += f"\n{not_placed} not placed"
        centres.append((first + x) / 2)
        host_labels.append(label)
        ceiling = max(ceiling, *tops)
        x += 1.8
    axes.set_xticks(ticks, tick_labels, fontsize=7)
    hosts_axis = axes.secondary_xaxis(-0.09)
    hosts_axis.set_xticks(centres, host_labels, fontsize=8)
    hosts_axis.tick_params(length=0)
    hosts_axis.spines["bottom"].set_visible(False)
    axes.set_ylim(0, ceiling * 1.12)
    axes.set_xlim(-0.8, x - 1.0)
    axes.set_ylabel("GB")
    axes.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    handles = [
        Patch(color=COMPONENT_COLOURS[c], label=COMPONENT_LABELS[c]) for c in COMPONENT_COLOURS
    ]
    handles.append(Patch(facecolor=RESERVE_COLOUR, hatch="//", label="system reserve"))
    if any(services_gb.values()):
        handles.append(Patch(color=SERVICES_COLOUR, label="declared services"))
    handles.append(
        Patch(color=COMPONENT_COLOURS["weights"], alpha=0.55, label="loaded on demand (paler)")
    )
    figure.legend(
        handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8
    )
    figure.suptitle(
        "gpufleet plan: each host's memory as its placements fill it. Black lines: GPU memory, "
        "system memory, and for an engine that loads on demand the GPU + free system memory "
        "it splits its models over",
        fontsize=9,
        wrap=True,
    )
    return _save(figure, target)


# --- what the CLI calls -----------------------------------------------------------------------


def plans_of(
    specs: Mapping[str, HostSpec], names: Iterable[str] | None = None
) -> tuple[list[HostPlan], dict[str, float], dict[str, dict[str, list[int]]]]:
    """The plan of every host (or those named) with a placement, the GPU memory each host's
    declared services hold, and the largest set each on-demand engine may keep loaded."""
    from gpufleet.catalogue import fleet_catalogue
    from gpufleet.planner import gpu_memory, plan_host, services_vram_gb

    catalogue = fleet_catalogue()
    chosen = [specs[n] for n in names] if names is not None else list(specs.values())
    plans, services, at_once = [], {}, {}
    for spec in chosen:
        plan = plan_host(spec, catalogue, specs)
        if not plan.placements and not plan.rpc_parts:
            continue
        plans.append(plan)
        services[spec.name] = services_vram_gb(spec, gpu_memory(spec, catalogue)[0])
        at_once[spec.name] = largest_loaded_sets(spec, plan)
    return plans, services, at_once


def render_plots(
    path: str | Path | None,
    *,
    bench_rows: Sequence[Mapping[str, object]] | None = None,
    bounds: Mapping[str, float | None] | None = None,
    specs: Mapping[str, HostSpec] | None = None,
    hosts: Iterable[str] | None = None,
) -> Path | None:
    """What ``--plot FILE`` does after ``gpufleet bench`` (give ``bench_rows``) or ``gpufleet
    plan`` (give ``specs``, and ``hosts`` to draw only those); None when no FILE was given.
    Prints where the picture went."""
    if path is None:
        return None
    if bench_rows is not None:
        written = plot_bench(bench_rows, bounds, path)
    elif specs is not None:
        plans, services, at_once = plans_of(specs, hosts)
        written = plot_plan(plans, path, services, at_once)
    else:
        raise PlotError("nothing to draw: give bench rows or an inventory")
    click.echo(f"picture written to {written}", err=True)
    return written


def plot_option(what: str) -> Any:
    """``--plot FILE`` for a command that draws ``what`` (``bench``, ``plan``)."""
    drawn = {
        "bench": "decode speed and TTFT against concurrency, with the planner's bound",
        "plan": "each host's memory as the placements fill it",
    }[what]
    return click.option(
        "--plot",
        "plot_path",
        type=click.Path(dir_okay=False, writable=True),
        default=None,
        metavar="FILE",
        help=f"Also draw {drawn} into FILE (.png or .svg; needs {INSTALL_HINT}).",
    )


bench_plot_option = plot_option("bench")
plan_plot_option = plot_option("plan")


@click.group("plot")
def plot_command() -> None:
    """Draw the bench results or the plan as a PNG or SVG picture."""


@plot_command.command("bench")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("picture", type=click.Path(dir_okay=False))
def plot_bench_command(csv_file: str, picture: str) -> None:
    """Draw the rows `gpufleet bench --csv CSV_FILE` wrote into PICTURE (.png or .svg)."""
    render_plots(picture, bench_rows=read_bench_csv(csv_file))


@plot_command.command("plan")
@click.argument("inventory", type=click.Path(exists=True, dir_okay=False))
@click.argument("picture", type=click.Path(dir_okay=False))
@click.option("--limit", "limits", multiple=True, metavar="PATTERN", help="Only these hosts.")
def plot_plan_command(inventory: str, picture: str, limits: tuple[str, ...]) -> None:
    """Draw the plan of INVENTORY's hosts into PICTURE (.png or .svg); contacts no host."""
    from gpufleet.inventory import InventoryError, validate_file
    from gpufleet.selection import NoHostsSelected, select_hosts

    try:
        specs = validate_file(inventory)
        selection = select_hosts(specs, limits, source=inventory)
    except (InventoryError, NoHostsSelected) as error:
        raise click.ClickException(str(error)) from None
    for warning in selection.warnings():
        click.echo(warning, err=True)
    render_plots(picture, specs=specs, hosts=selection.names)
