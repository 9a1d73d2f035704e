"""gpufleet's command line.

The top-level group is :data:`main_group` (a ``click.Group``); :func:`main` runs it and
returns the exit code, which is what the ``gpufleet`` console script and the tests call.
Every subcommand that works on hosts takes ``--limit`` as pyinfra does (a host name, a group
name or a glob; repeated for a union; :mod:`gpufleet.selection`), every report takes
``--json`` (shapes in :mod:`gpufleet.outputs`, schemas in ``gpufleet/schemas``), and a user's
mistake ends in one message on stderr, never a traceback. docs/cli.md describes it all.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from gpufleet.options import limit_option
from gpufleet.plots import bench_plot_option, plan_plot_option, plot_command, render_plots

if TYPE_CHECKING:
    from pydantic import BaseModel
    from rich.console import Console
    from rich.table import Table

    from gpufleet.catalogue import Catalogue
    from gpufleet.models import HostSpec
    from gpufleet.outputs import OperationOut
    from gpufleet.preview import PlannedOperation
    from gpufleet.suggest import Strategy

DEFAULT_LAB_INVENTORY = "inventory/lab.py"

EXIT_FAILED = 1
"""A user error, a bad inventory, a failed check or benchmark."""
EXIT_USAGE = 2
"""The command line itself is wrong (click's usage errors)."""
EXIT_LAB_NOT_READY = 3
"""``lab status``: some lab host is not up."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT), as a shell reports a command it interrupted."""
EXIT_BROKEN_PIPE = 141
"""stdout was closed by its reader (``| head``): 128 + SIGPIPE, what the shell reports."""


class UserError(click.ClickException):
    """A mistake of the user's (a bad inventory, a missing file, no host selected): one line
    on stderr, exit code 1, no traceback."""

    exit_code = EXIT_FAILED

    def show(self, file: Any = None) -> None:
        click.echo(self.format_message(), err=True)


class _PipeClosed(Exception):
    """stdout's reader went away; raised past click so that :func:`main` ends quietly."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user's mistake raises (imported here: most commands need few of them)."""
    from gpufleet.inventory import InventoryError
    from gpufleet.lab import LabError
    from gpufleet.preview import MissingFact
    from gpufleet.selection import NoHostsSelected
    from gpufleet.suggest import WantsError
    from gpufleet.vault import VaultError

    return (
        InventoryError, NoHostsSelected, LabError, VaultError, MissingFact, WantsError, OSError,
    )  # fmt: skip


def _message(error: BaseException) -> str:
    """An error as one line where it has one problem; an inventory's several problems stay one
    per line, each naming host, field and fix."""
    problems = getattr(error, "problems", None)
    text = str(error)
    if problems is not None and len(problems) == 1:
        text = text.replace(":\n  - ", ": ", 1)
    return text.strip() or type(error).__name__


class FleetGroup(click.Group):
    """The top-level group: turns a user's mistake raised by any subcommand (those added from
    other modules too) into a :class:`UserError` naming the subcommand."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as error:
            raise _PipeClosed() from error
        except click.ClickException:
            raise
        except _user_errors() as error:
            where = f"gpufleet {ctx.invoked_subcommand}" if ctx.invoked_subcommand else "gpufleet"
            raise UserError(f"{where}: {_message(error)}") from error


def _package_version() -> str:
    try:
        return version("gpufleet")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


@click.group(
    cls=FleetGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(_package_version(), "-V", "--version", prog_name="gpufleet")
def main_group() -> None:
    """Provision a homelab AI fleet with pyinfra: check the inventory, plan, preview,
    verify and benchmark it.

    Commands that read only the inventory contact no host: validate, plan, engines, routes,
    firewall, preview, verify --list. See docs/cli.md.
    """


# --- shared options and output -------------------------------------------------------------

inventory_argument = click.argument("inventory", type=click.Path(dir_okay=False))


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (its schema: docs/cli.md)."
)


class GreedyOption(click.Option):
    """An option that also takes the values that follow it while ``belongs`` accepts them:
    ``--concurrency 1 4`` as well as ``--concurrency 1 --concurrency 4`` (the form the argparse
    command line had, kept for the scripts and docs that use it)."""

    def __init__(self, *args: Any, belongs: Callable[[str], bool], **kwargs: Any) -> None:
        kwargs["multiple"] = True
        super().__init__(*args, **kwargs)
        self.belongs = belongs

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        belongs = self.belongs
        for name in self.opts:
            parsed = getattr(parser, "_long_opt", {}).get(name) or getattr(
                parser, "_short_opt", {}
            ).get(name)
            if parsed is None:
                continue
            store = parsed.process

            def process(value: Any, state: Any, store: Callable[..., None] = store) -> None:
                store(value, state)
                while state.rargs and belongs(state.rargs[0]):
                    store(state.rargs.pop(0), state)

            parsed.process = process


def _is_count(text: str) -> bool:
    return text.isdigit()


def _is_suite(text: str) -> bool:
    from gpufleet.verify import suite_names

    return text in suite_names()


def _split(values: Iterable[str]) -> list[str]:
    """Values given repeated, space-greedy or comma-separated (``--suite a,b``), in order."""
    return [part for value in values for part in value.split(",") if part]


def _console(stderr: bool = False) -> Console:
    """A console for stdout (or stderr): colour only on a terminal and without ``NO_COLOR``
    (rich decides both); where output goes to a file or a pipe, lines are not wrapped at 80
    columns, so a table keeps one row a line."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    return Console(
        file=stream,
        markup=False,  # inventory text ("models[0]") is never read as rich markup
        emoji=False,
        highlight=False,
        # Not COLUMNS: it describes a terminal (test runners set it for their children too),
        # and a table in a file or a pipe is read by programs that want one row a line.
        width=None if terminal else 400,
    )


def _table(*columns: str, right: Sequence[str] = ()) -> Table:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left")
    return table


def _print_table(table: Table, indent: int = 0, console: Console | None = None) -> None:
    """``table`` on stdout, indented; into a file or a pipe without the spaces rich pads the
    last column with, so that the lines end where their text does."""
    from rich.padding import Padding

    console = console or _console()
    shown = Padding(table, (0, 0, 0, indent), expand=False) if indent else table
    if console.is_terminal:
        console.print(shown)
        return
    with console.capture() as captured:
        console.print(shown)
    console.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def _emit_json(model: BaseModel) -> None:
    print(model.model_dump_json(indent=2))


def _warn(text: str) -> None:
    click.echo(text, err=True)


def _fail(text: str) -> NoReturn:
    raise UserError(text)


def selected_hosts(inventory: str, limit: Sequence[str]) -> tuple[dict[str, HostSpec], list[str]]:
    """The inventory's hosts (validated: a bad inventory stops here, before any host is
    contacted) and the names ``--limit`` selects, pyinfra's warning printed for a pattern
    that matches nothing."""
    from gpufleet.inventory import validate_file
    from gpufleet.selection import select_hosts

    specs = validate_file(inventory)
    selection = select_hosts(specs, limit, source=inventory)
    for warning in selection.warnings():
        _warn(warning)
    return specs, selection.names


# --- commands ------------------------------------------------------------------------------


@main_group.command(short_help="Check inventories; contacts no host.")
@click.argument("inventories", nargs=-1, required=True, metavar="INVENTORY...")
@json_option
def validate(inventories: tuple[str, ...], as_json: bool) -> int:
    """Validate each INVENTORY (with its group_data) and report every file: the valid ones
    with their hosts and groups, every bad one with all its problems. Exits 1 if any is bad."""
    from gpufleet.inventory import InventoryError, validate_file
    from gpufleet.outputs import ValidatedFile, ValidateOutput

    files = []
    for path in inventories:
        try:
            specs = validate_file(path)
        except InventoryError as error:
            files.append(
                ValidatedFile(
                    path=path,
                    valid=False,
                    hosts=[],
                    groups=[],
                    problems=[str(p) for p in error.problems],
                )
            )
            _warn(_message(error))
            continue
        groups = sorted({g for spec in specs.values() for g in spec.groups})
        files.append(
            ValidatedFile(path=path, valid=True, hosts=list(specs), groups=groups, problems=[])
        )
        if not as_json:
            print(f"{path}: {len(specs)} hosts valid (groups: {', '.join(groups)})")
    bad = [f.path for f in files if not f.valid]
    if as_json:
        _emit_json(ValidateOutput(files=files))
    if bad and len(files) > 1:
        _warn(f"{len(bad)} of {len(files)} inventories have problems: {', '.join(bad)}")
    return EXIT_FAILED if bad else 0


@main_group.command(short_help="Where each model runs, memory, speed bound; contacts no host.")
@inventory_argument
@limit_option()
@json_option
@plan_plot_option
@click.option(
    "--suggest",
    "wants_path",
    type=click.Path(dir_okay=False),
    metavar="WANTS",
    help="Propose placements for the aliases a YAML file wants (docs/planner.md), on the "
    "selected hosts (without --limit: the inference hosts); exits 1 if a want cannot be met.",
)
@click.option(
    "--strategy",
    type=click.Choice(["spread", "binpack"]),
    default="spread",
    show_default=True,
    help="With --suggest: of the hosts that can take a want, the one left with the most of "
    "its memory free (spread) or the least (binpack: large hosts kept for large models).",
)
@click.option(
    "--diff",
    "diff_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    metavar="FILE",
    help="With --suggest: write the proposal as a patch to the inventory ('-': stdout).",
)
def plan(
    inventory: str,
    limit: tuple[str, ...],
    as_json: bool,
    plot_path: str | None,
    wants_path: str | None,
    strategy: Strategy,
    diff_path: str | None,
) -> int:
    """The planner's decisions for every selected host with models: where each placement
    runs (GPU, partly, CPU), the memory it needs, and the bound on its decode speed.

    With --suggest WANTS, what it proposes instead: where each wanted alias should go."""
    from gpufleet.inventory import inventory_catalogue
    from gpufleet.outputs import PlanOutput
    from gpufleet.planner import (
        PLAN_COLUMNS,
        placement_cells,
        plan_host,
        plan_summary,
        rpc_part_line,
    )

    if diff_path and not wants_path:
        _fail("gpufleet plan: --diff writes what --suggest proposes; give --suggest WANTS")
    if diff_path == "-" and as_json:
        _fail("gpufleet plan: --json and --diff - both write to stdout; give --diff FILE")
    specs, names = selected_hosts(inventory, limit)
    catalogue = inventory_catalogue(inventory)
    if wants_path:
        hosts = names if limit else []
        return _suggest(
            inventory, specs, catalogue, hosts, wants_path, strategy, diff_path, as_json
        )
    plans = [
        plan
        for plan in (plan_host(specs[name], catalogue, specs) for name in names)
        if plan.placements or plan.rpc_parts
    ]
    render_plots(plot_path, specs=specs, hosts=[name for name in names if specs[name].models])
    if as_json:
        _emit_json(PlanOutput.model_validate([p.as_dict() for p in plans]))
        return 0
    console = _console()
    for number, host_plan in enumerate(plans):
        if number:
            console.print()
        console.print(plan_summary(host_plan))
        table = _table(*PLAN_COLUMNS, right=("context", "needs"))
        for placement in host_plan.placements:
            table.add_row(*placement_cells(placement))
        _print_table(table, indent=2, console=console)
        for part in host_plan.rpc_parts:
            console.print(f"  {rpc_part_line(part)}")
    if not plans:
        _warn(f"{inventory}: no selected host serves a model yet; give one models: [...]")
    return 0


def _suggest(
    inventory: str,
    specs: dict[str, HostSpec],
    catalogue: Catalogue,
    limit: list[str],
    wants_path: str,
    strategy: Strategy,
    diff_path: str | None,
    as_json: bool,
) -> int:
    """``plan --suggest``: the solver's proposal as tables (or JSON) and, with --diff, a patch."""
    from dataclasses import asdict

    from gpufleet.inventory_edit import models_patch
    from gpufleet.outputs import SuggestOutput
    from gpufleet.suggest import load_wants, solve

    wants = load_wants(wants_path)
    suggestion = solve(specs, wants, catalogue, limit, strategy)
    patch = models_patch(inventory, {h: suggestion.specs[h].models for h in suggestion.changed})
    if diff_path == "-":
        sys.stdout.write(patch.diff)
    elif diff_path:
        Path(diff_path).write_text(patch.diff)
    code = EXIT_FAILED if suggestion.unmet or suggestion.problems else 0
    if as_json:
        _emit_json(
            SuggestOutput.model_validate(
                {
                    "placements": [asdict(d) for d in suggestion.decisions],
                    "unmet": [asdict(u) for u in suggestion.unmet],
                    "changed_hosts": suggestion.changed,
                    "skipped_hosts": [{"host": h, "why": w} for h, w in suggestion.skipped],
                    "kept": [{"alias": a, "host": h} for a, h in suggestion.kept],
                    "problems": suggestion.problems,
                    "diff": patch.diff,
                    "by_hand": patch.by_hand,
                }
            )
        )
        return code
    if diff_path == "-":
        return code  # the patch alone on stdout, to pipe into patch or git apply
    console = _console()
    placed = len(suggestion.decisions)
    console.print(f"{wants_path}: {len(wants)} wants, {placed} placements proposed")
    table = _table(
        "alias", "role", "host", "engine", "quant", "context", "where", "speed bound", "why",
        right=("context",),
    )  # fmt: skip
    for d in suggestion.decisions:
        where = d.where if d.where != "partial" else f"partial ({d.gpu_layers}/{d.layers})"
        bound = f"<= {d.bound_tok_s:g} tok/s" if d.bound_tok_s else "-"
        table.add_row(
            d.alias, d.role, d.host, d.engine, d.quant, str(d.context), where, bound, d.why
        )
    _print_table(table, indent=2, console=console)
    for host, why in suggestion.skipped:
        _warn(f"{host} takes no new model: {why}")
    if suggestion.unmet:
        console.print(f"\nNot met ({len(suggestion.unmet)}):")
        for u in suggestion.unmet:
            console.print(f"  {u.alias} ({u.model}), {u.role}: {u.why}")
    for alias, host in suggestion.kept:
        console.print(f"  {alias} stays on {host}, as the inventory has it")
    if suggestion.problems:
        console.print("\nWith this proposal the inventory would still have problems:")
        for problem in suggestion.problems:
            console.print(f"  - {problem}")
    for host, entry in patch.by_hand.items():
        console.print(
            f"\n{host}: its data is not a literal in {inventory}; set by hand:\n  {entry}"
        )
    if not suggestion.changed:
        console.print("\nThe inventory already places these wants so.")
    elif diff_path:
        console.print(
            f"\n{len(suggestion.changed)} hosts change; the patch is in {diff_path} "
            f"(apply it from this folder: patch -p1 < {diff_path})"
        )
    else:
        console.print(
            f"\n{len(suggestion.changed)} hosts change ({', '.join(suggestion.changed)}); "
            "--diff FILE writes the patch to the inventory"
        )
    return code


@main_group.command(short_help="Each host's inference servers and their flags; contacts no host.")
@inventory_argument
@limit_option()
@json_option
def engines(inventory: str, limit: tuple[str, ...], as_json: bool) -> int:
    """What each selected host's engines run: the server's command line, its environment
    (secrets as references) and the per-model parameters, as the deploys render them."""
    from gpufleet.engines import served_name
    from gpufleet.outputs import EngineOut, EnginesHost, EnginesOutput
    from gpufleet.planner import RPC_SERVER
    from gpufleet.serving import describe, engine_runs, rpc_server_run

    specs, names = selected_hosts(inventory, limit)
    if not as_json:
        print("\n".join(describe(specs[name], specs) for name in names))
        return 0
    hosts = []
    for name in names:
        spec = specs[name]
        runs = [
            EngineOut(
                engine=run.engine.name,
                port=run.engine.port(spec),
                served=[served_name(p.placement) for p in run.placements],
                memory_max_gb=run.memory_max_gb,
                environment=dict(run.rendered.environment),
                command=list(run.rendered.command),
                parameters={
                    served_name(p.placement): dict(p.rendered.parameters)
                    for p in run.placements
                    if p.rendered.parameters
                },
            )
            for run in engine_runs(spec, fleet=specs)
        ]
        worker = rpc_server_run(spec, specs)
        if worker is not None:
            runs.insert(
                0,
                EngineOut(
                    engine=RPC_SERVER,
                    port=spec.llamacpp.rpc_port,
                    served=[],
                    memory_max_gb=worker.memory_max_gb,
                    environment={},
                    command=list(worker.command),
                    parameters={},
                ),
            )
        hosts.append(EnginesHost(host=name, engines=runs))
    _emit_json(EnginesOutput(hosts=hosts))
    return 0


@main_group.command(short_help="Router model groups, fallbacks, gateway routes; contacts no host.")
@inventory_argument
@limit_option("router and gateway hosts")
@json_option
def routes(inventory: str, limit: tuple[str, ...], as_json: bool) -> int:
    """Per router: each model group and its backends, the redundancy map, the fallback
    chains and the keys it reads (by reference); per gateway: its routes and clients."""
    from gpufleet.outputs import (
        GatewayOut,
        RedundancyRow,
        RouterOut,
        RoutesOutput,
        RouteTarget,
        UpstreamOut,
    )
    from gpufleet.routing import (
        describe_routes,
        fallbacks,
        gateway_upstreams,
        redundancy_map,
        router_config,
        router_hosts,
    )

    specs, names = selected_hosts(inventory, limit)
    shown = set(names)
    routers = [r for r in router_hosts(specs) if r.name in shown]
    gateways = [s for s in specs.values() if "gateway" in s.groups and s.name in shown]
    if not as_json:
        text = describe_routes(specs, only=shown)
        print(text or f"{inventory}: no router or gateway host selected")
        return 0
    router_out = []
    for router in routers:
        config = router_config(router, specs)
        groups: dict[str, list[RouteTarget]] = {}
        for entry in config.settings["model_list"]:
            params = entry["litellm_params"]
            groups.setdefault(entry["model_name"], []).append(
                RouteTarget(model=params["model"], api_base=params.get("api_base"))
            )
        chains = {
            n: list(t) for chain in fallbacks(specs, router.litellm) for n, t in chain.items()
        }
        router_out.append(
            RouterOut(
                host=router.name,
                port=router.litellm.port,
                model_groups=groups,
                redundancy=[
                    RedundancyRow(
                        alias=row.alias, ranks=[list(r) for r in row.ranks], then=list(row.then)
                    )
                    for row in redundancy_map(specs, router.litellm)
                ],
                fallbacks=chains,
                keys=dict(config.environment),
            )
        )
    gateway_out = [
        GatewayOut(
            host=gateway.name,
            https_port=gateway.gateway.https_port,
            upstreams=[
                UpstreamOut(name=u.name, route=u.route, servers=list(u.servers))
                for u in gateway_upstreams(gateway, specs)
            ],
            clients=dict(sorted(gateway.gateway.clients.items())),
        )
        for gateway in gateways
    ]
    _emit_json(RoutesOutput(routers=router_out, gateways=gateway_out))
    return 0


@main_group.command(short_help="Where each port listens, who may reach it; contacts no host.")
@inventory_argument
@limit_option()
@json_option
def firewall(inventory: str, limit: tuple[str, ...], as_json: bool) -> int:
    """Each selected host's gpufleet services: the address and ports they listen on and who
    the firewall lets reach them (decided with the whole fleet in view)."""
    from gpufleet.exposure import exposures, reach, reach_text
    from gpufleet.outputs import ExposureOut, FirewallHost, FirewallOutput

    specs, names = selected_hosts(inventory, limit)
    if as_json:
        hosts = [
            FirewallHost(
                host=name,
                firewall=specs[name].firewall.enabled,
                exposures=[
                    ExposureOut(
                        service=e.service,
                        address=e.address,
                        ports=list(e.ports),
                        port_range=list(e.port_range) if e.port_range else None,
                        reach=reach(specs[name], e),
                        sources=list(e.sources),
                        clients=list(e.clients),
                        authenticated=e.authenticated,
                    )
                    for e in exposures(specs[name], specs)
                ],
            )
            for name in names
        ]
        _emit_json(FirewallOutput(hosts=hosts))
        return 0
    table = _table("host", "service", "listens on", "ports", "who may reach it")
    for name in names:
        spec = specs[name]
        label = name if spec.firewall.enabled else f"{name} (firewall off)"
        for number, exposure in enumerate(exposures(spec, specs)):
            table.add_row(
                label if number == 0 else "",
                exposure.service,
                exposure.address,
                exposure.port_text,
                reach_text(spec, exposure),
            )
    _print_table(table)
    return 0


def _deploys_chosen(command: str, deploys: Sequence[str]) -> list[str]:
    """The deploy files named, or every packaged deploy (the inventory's folder need not hold
    a deploys/); a file that is not there is an error."""
    from gpufleet.paths import EVERY_DEPLOY, packaged_deploy

    chosen = list(deploys) or [packaged_deploy(deploy) for deploy in EVERY_DEPLOY]
    for deploy in chosen:
        if not Path(deploy).is_file():
            _fail(
                f"gpufleet {command}: no deploy file {deploy} (a --limit takes one pattern; "
                "repeat --limit for more)"
            )
    return chosen


def _operation_out(operation: PlannedOperation) -> OperationOut:
    """A planned operation as ``--json`` shows it."""
    from gpufleet.outputs import OperationOut

    return OperationOut(
        name=operation.name,
        changes=operation.changes,
        commands=operation.commands,
        uploads=sorted(operation.uploads),
        serial=operation.serial,
    )


@main_group.command(short_help="What deploys would change, from recorded facts; contacts no host.")
@inventory_argument
@click.argument("deploys", nargs=-1, metavar="[DEPLOY]...")
@limit_option()
@click.option("-v", "--verbose", is_flag=True, help="Every operation and its commands.")
@click.option("--summary", is_flag=True, help="One line per host.")
@click.option(
    "--record",
    metavar="PROFILE",
    help="Ask one real host (--limit) for its facts and save them as PROFILE (contacts it).",
)
@json_option
def preview(
    inventory: str,
    deploys: tuple[str, ...],
    limit: tuple[str, ...],
    verbose: bool,
    summary: bool,
    record: str | None,
    as_json: bool,
) -> int:
    """Plan DEPLOYs (default: every deploy) on the selected hosts as a dry run would, with
    facts from the recorded profile of each host's OS instead of the host itself."""
    from gpufleet.outputs import PreviewHost, PreviewOutput
    from gpufleet.preview import plan_each, profiles_for
    from gpufleet.preview import record as record_profile

    selected_hosts(inventory, limit)
    chosen = _deploys_chosen("preview", deploys)
    if record:
        print(f"recorded {record_profile(inventory, chosen, list(limit), record)}")
        return 0
    profiles = profiles_for(inventory, list(limit))
    try:
        planned, stopped = plan_each(
            inventory,
            chosen,
            lambda host, fact, arguments: profiles[host].answer(fact, arguments),
            list(limit),
        )
    except Exception as error:  # a deploy's own error: shown as a pyinfra run would stop
        _fail(f"gpufleet preview: {type(error).__name__}: {error}")
    code = EXIT_FAILED if stopped else 0  # as the real run would fail; the others still shown
    if as_json:
        hosts = [
            PreviewHost(
                host=host,
                profile=profiles[host].name,
                changing=sum(op.changes for op in operations),
                operations=[_operation_out(op) for op in operations],
            )
            for host, operations in planned.items()
        ]
        for host, why in stopped.items():
            _warn(f"gpufleet preview: {host} would stop: {why}")
        _emit_json(PreviewOutput(deploys=chosen, hosts=hosts, stopped=stopped))
        return code
    for host, operations in planned.items():
        changing = [op for op in operations if op.changes]
        print(
            f"{host} ({profiles[host].name}): {len(operations)} operations, "
            f"{len(changing)} would change"
        )
        for operation in () if summary else operations if verbose else changing:
            serial = " (one host at a time)" if operation.serial else ""
            print(f"  {'*' if operation.changes else ' '} {operation.name}{serial}")
            for command in operation.commands if verbose else ():
                print(f"      {command}")
    for host, why in stopped.items():
        print(f"{host} ({profiles[host].name}): would stop: {why}")
    return code


@main_group.command(short_help="What deploys would change on the hosts now: drift (a dry run).")
@inventory_argument
@click.argument("deploys", nargs=-1, metavar="[DEPLOY]...")
@limit_option()
@click.option("-v", "--verbose", is_flag=True, help="The commands of each change too.")
@click.option(
    "--textfile",
    metavar="PATH",
    type=click.Path(dir_okay=False),
    help="Also write the result as Prometheus metrics (node_exporter's textfile collector).",
)
@click.option(
    "--push",
    is_flag=True,
    help="Also put those metrics on the inventory's monitoring hosts, for their Prometheus; "
    "the exit code then says whether they got there (drift is Prometheus's to report).",
)
@click.option(
    "--timer",
    type=click.Choice(["hourly", "daily"]),
    help="Check nothing now: write a systemd user timer that runs this check with --push "
    "on this machine, hourly or daily.",
)
@click.option(
    "--units",
    metavar="FOLDER",
    type=click.Path(file_okay=False),
    help="Where --timer writes its units (default: the user's systemd folder).",
)
@json_option
def drift(
    inventory: str,
    deploys: tuple[str, ...],
    limit: tuple[str, ...],
    verbose: bool,
    textfile: str | None,
    push: bool,
    timer: str | None,
    units: str | None,
    as_json: bool,
) -> int:
    """Plan DEPLOYs (default: every deploy) on the selected hosts with their real facts, as
    pyinfra --dry does, and report each operation that would change a host. Changes nothing
    on them. Exits 1 when any host would change or could not be checked, 0 when all are
    converged; with --push, 1 when the result could not be put on the monitoring hosts."""
    from gpufleet import drift as drift_module
    from gpufleet.outputs import DriftHost, DriftOutput

    specs, _ = selected_hosts(inventory, limit)  # a wrong inventory stops here, before any host
    monitoring = sorted(name for name, spec in specs.items() if "monitoring" in spec.groups)
    if (push or timer) and not monitoring:
        _fail(
            f"gpufleet drift: {inventory} has no monitoring host to push to; add one to its "
            "monitoring group, or write the metrics with --textfile"
        )
    chosen = _deploys_chosen("drift", deploys)
    if timer:
        if as_json or textfile:
            _fail("gpufleet drift --timer checks nothing now: leave out --json and --textfile")
        return _drift_timer(inventory, list(deploys), list(limit), timer, units)
    report = drift_module.drift(inventory, chosen, list(limit))
    metrics = drift_module.textfile(report)
    if textfile:
        drift_module.write_textfile(Path(textfile), metrics)
    drifted = any(entry.drifted for entry in report)
    code = EXIT_FAILED if drifted or any(entry.unchecked for entry in report) else 0
    if push:
        pushed = drift_module.push(inventory, monitoring, metrics)
        if pushed.returncode != 0:
            _warn(pushed.stdout[-3000:] + pushed.stderr[-3000:])
            _warn(f"gpufleet drift --push: the result did not reach {', '.join(monitoring)}")
            code = EXIT_FAILED
        else:
            code = 0
            _warn(f"gpufleet drift: the result is on {', '.join(monitoring)} for Prometheus")
    if as_json:
        hosts = [
            DriftHost(
                host=entry.host,
                drifted=entry.drifted,
                planned=entry.planned,
                unchecked=entry.unchecked,
                changing=[_operation_out(op) for op in entry.changing],
            )
            for entry in report
        ]
        _emit_json(DriftOutput(deploys=chosen, drifted=drifted, hosts=hosts))
        return code
    for entry in report:
        if entry.unchecked:
            print(f"{entry.host}: NOT CHECKED: {entry.unchecked}")
            continue
        state = f"{len(entry.changing)} would change" if entry.drifted else "no drift"
        print(f"{entry.host}: {entry.planned} operations, {state}")
        for operation in entry.changing:
            print(f"  * {operation.name}")
            for command in operation.commands if verbose else ():
                print(f"      {command}")
    return code


def _drift_timer(
    inventory: str, deploys: list[str], limit: list[str], schedule: str, units: str | None
) -> int:
    """Write the systemd user units that run this drift check with --push on ``schedule``
    from this folder, and say how to start them."""
    from gpufleet import drift as drift_module

    arguments = [
        str(Path(inventory).resolve()),
        *(str(Path(deploy).resolve()) for deploy in deploys),
        *(argument for pattern in limit for argument in ("--limit", pattern)),
        "--push",
    ]
    gpufleet = Path(sys.executable).parent / "gpufleet"  # this one, as rebuild runs pyinfra
    try:
        written = drift_module.timer_units(gpufleet.absolute(), arguments, Path.cwd(), schedule)
    except ValueError as error:
        _fail(f"gpufleet drift --timer: {error}")
    folder = Path(units) if units else _user_units()
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in written.items():
        (folder / name).write_text(text)
        print(f"wrote {folder / name}")
    timer = f"{drift_module.TIMER_NAME}.timer"
    print(
        "start it:\n"
        "  systemctl --user daemon-reload\n"
        f"  systemctl --user enable --now {timer}\n"
        "  loginctl enable-linger   # so that it runs while you are logged out\n"
        f"see it: systemctl --user list-timers {timer}; "
        f"journalctl --user -u {drift_module.TIMER_NAME}.service"
    )
    return 0


def _user_units() -> Path:
    """The user's own systemd unit folder (``$XDG_CONFIG_HOME/systemd/user``)."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user"


@main_group.command(short_help="Run the testinfra suites against the hosts over SSH.")
@inventory_argument
@limit_option()
@click.option(
    "--suite",
    "suites",
    cls=GreedyOption,
    belongs=_is_suite,
    metavar="NAME",
    help="Only these suites (baseline, edge, gpu_node, inference, platform); repeat, or "
    "list them after one --suite.",
)
@click.option(
    "--junit-xml",
    metavar="PATH",
    default="verify-results.xml",
    show_default=True,
    help="Where the JUnit XML goes.",
)
@click.option(
    "--list", "list_only", is_flag=True, help="List the checks each host gets; contacts no host."
)
@json_option
def verify(
    inventory: str,
    limit: tuple[str, ...],
    suites: tuple[str, ...],
    junit_xml: str,
    list_only: bool,
    as_json: bool,
) -> int:
    """Run the read-only checks of each suite on every selected host it applies to; print a
    table per host and write JUnit XML. Exits 1 if any check fails."""
    from gpufleet import verify as verifying
    from gpufleet.outputs import CheckOut, VerifyOutput

    selected_hosts(inventory, limit)
    chosen = verifying.targets(inventory, limit)
    junit = None if list_only else junit_xml
    # With --json, stdout is the JSON alone: pytest's own lines go to stderr.
    quiet = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    try:
        with quiet:
            code, outcomes = verifying.run(chosen, junit, list_only, _split(suites))
    except ValueError as error:  # an unknown suite
        _fail(f"gpufleet verify: {error}")
    if as_json:
        checks = [
            CheckOut(
                host=o.host,
                suite=o.suite,
                check=o.check,
                result=None if list_only else o.result,
                message=o.message,
            )
            for o in outcomes
        ]
        _emit_json(
            VerifyOutput(ran=not list_only, passed=code == 0, junit_xml=junit, checks=checks)
        )
        return 0 if code == 0 else EXIT_FAILED
    if list_only:
        table = _table("host", "suite", "check")
        for outcome in outcomes:
            table.add_row(outcome.host, outcome.suite, outcome.check)
        _print_table(table)
        print(f"{len(outcomes)} checks on {len({o.host for o in outcomes})} hosts; none run")
        return 0 if code == 0 else EXIT_FAILED
    print()
    print(verifying.table(outcomes))
    print(f"JUnit XML: {junit_xml}")
    return 0 if code == 0 else EXIT_FAILED


@main_group.command(short_help="Speed of every endpoint (TTFT, decode, latency) with 95 % CIs.")
@inventory_argument
@limit_option("hosts' engines")
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    metavar="N",
    default=5,
    show_default=True,
    help="Rounds per concurrency level.",
)
@click.option(
    "--concurrency",
    "levels",
    cls=GreedyOption,
    belongs=_is_count,
    metavar="N",
    help="Parallel requests per round; repeat or list several (default: 1 4).",
)
@click.option(
    "--csv",
    "csv_path",
    metavar="PATH",
    default="bench/results.csv",
    show_default=True,
    help="Where the rows go.",
)
@click.option(
    "--client", metavar="NAME", help="Gateway client whose key to use (default: the first)."
)
@click.option("--engines-only", is_flag=True, help="Skip the gateway.")
@json_option
@bench_plot_option
def bench(
    inventory: str,
    limit: tuple[str, ...],
    runs: int,
    levels: tuple[str, ...],
    csv_path: str,
    client: str | None,
    engines_only: bool,
    as_json: bool,
    plot_path: str | None,
) -> int:
    """Benchmark every OpenAI-compatible endpoint of the selected hosts (each engine, and
    the gateway) with streamed requests; write the rows to CSV and print a table."""
    from gpufleet.bench import bench as run_bench
    from gpufleet.bench import endpoints
    from gpufleet.secrets import read_secret
    from gpufleet.vault import ca_file, fleet_vault

    try:
        concurrency = [int(level) for level in _split(levels)] or [1, 4]
    except ValueError:
        _fail(f"gpufleet bench: --concurrency takes whole numbers, not {' '.join(levels)}")
    if min(concurrency) < 1:
        _fail("gpufleet bench: --concurrency must be at least 1")
    specs, names = selected_hosts(inventory, limit)
    gateway = next((s for s in specs.values() if "gateway" in s.groups), None)
    key = ca = None
    if gateway is not None and gateway.gateway.clients and not engines_only:
        if client is not None and client not in gateway.gateway.clients:
            known = ", ".join(sorted(gateway.gateway.clients))
            _fail(f"gpufleet bench: no gateway client {client} (clients: {known})")
        chosen_client = client or sorted(gateway.gateway.clients)[0]
        key = read_secret(gateway.gateway.clients[chosen_client], fleet_vault(specs))
        ca = ca_file(gateway)
    selected = set(names)
    found = [e for e in endpoints(specs, key, ca) if e.host in selected]
    with _bench_progress(len(found) * len(concurrency) * runs) as progress:
        rows = run_bench(found, runs, concurrency, Path(csv_path), progress)
    if rows:
        render_plots(plot_path, bench_rows=rows)
    if as_json:
        print_bench_json(rows, csv_path)
    else:
        print_bench_table(rows)
        print(f"{len(rows)} rows written to {csv_path}")
    return 0 if rows else EXIT_FAILED


@contextlib.contextmanager
def _bench_progress(total: int) -> Iterator[Callable[[str, int], None]]:
    """A progress bar of the benchmark's rounds on stderr where stderr is a terminal; else
    a line per round, as before."""
    from gpufleet.bench import log_round

    if not sys.stderr.isatty():
        yield log_round
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("bench", total=total)

        def advance(done: str, rounds: int) -> None:
            bar.update(task, advance=rounds, description=done)

        yield advance


def print_bench_table(rows: list[dict[str, object]]) -> None:
    """The benchmark's rows as an aligned table on stdout."""
    table = _table(
        "endpoint", "model", "conc", "TTFT s", "±", "decode tok/s", "± ", "claimed", "bound",
        "of bound", right=("conc", "TTFT s", "decode tok/s", "claimed", "bound", "of bound"),
    )  # fmt: skip
    for row in rows:
        table.add_row(
            *(
                str(row.get(key, ""))
                for key in (
                    "endpoint", "model", "concurrency", "ttft_s", "ttft_ci95_s", "decode_tok_s",
                    "decode_tok_s_ci95", "claimed_tok_s", "planner_bound_tok_s",
                    "measured_over_bound",
                )
            )
        )  # fmt: skip
    _print_table(table)


def print_bench_json(rows: list[dict[str, object]], csv_path: str) -> None:
    """The benchmark's rows as ``bench --json`` prints them (schema: schemas/bench.json)."""
    from gpufleet.outputs import BenchOutput, bench_row

    _emit_json(BenchOutput(csv=csv_path, rows=[bench_row(row) for row in rows]))


@main_group.command(short_help="After a hardware swap: compare, re-plan, redeploy, verify a host.")
@inventory_argument
@click.argument("host")
@click.option("--dry", is_flag=True, help="Show everything, change nothing (never asks).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before changing the host.")
def rebuild(inventory: str, host: str, dry: bool, yes: bool) -> int:
    """Read HOST's GPUs, cores and memory, show how they differ from INVENTORY and which
    placements move, refuse what no longer fits, redeploy with the hardware found and check
    its servers answer (deploys/rebuild.py through pyinfra, --limit HOST)."""
    _, names = selected_hosts(inventory, [host])
    if not dry and not yes:
        try:
            agreed = click.confirm(
                f"Rebuild {', '.join(names)} of {inventory}: redeploy with the hardware found "
                "(its servers restart)?",
                default=False,
                err=True,
            )
        except click.Abort:  # no answer (stdin closed)
            agreed = False
        if not agreed:
            _warn("gpufleet rebuild: nothing changed (--dry shows what it would do, -y skips this)")
            return EXIT_FAILED
    pyinfra = str(Path(sys.executable).parent / "pyinfra")
    mode = ["--dry"] if dry else ["-y"]
    from gpufleet.paths import packaged_deploy

    rebuild_deploy = packaged_deploy("deploys/rebuild.py")
    return run_pyinfra([pyinfra, "-v", inventory, rebuild_deploy, "--limit", host, *mode])


def run_pyinfra(command: list[str]) -> int:
    """Run pyinfra as its own process; its exit code. (Named, so that a test can stand in
    for it: once an inventory is loaded, gevent has replaced ``subprocess.run`` itself.)"""
    import subprocess

    return subprocess.run(command, check=False).returncode


@main_group.group(short_help="Snapshot the fleet's Vault to a file, or restore one.")
def vault() -> None:
    """A raft snapshot of the fleet's Vault (or OpenBao), and its restore into a blank one."""


def _vault_server(inventory: str) -> Any:
    from gpufleet.inventory import validate_file
    from gpufleet.vault import vault_host

    server = vault_host(validate_file(inventory))
    if server is None:
        _fail(f"gpufleet vault: {inventory} has no vault host")
    return server


@vault.command(short_help="Write a raft snapshot of the fleet's Vault to FILE (0600).")
@inventory_argument
@click.argument("file", type=click.Path(dir_okay=False))
def snapshot(inventory: str, file: str) -> int:
    """Take a raft snapshot of the fleet's Vault and write it to FILE, mode 0600."""
    from gpufleet.vault import take_snapshot, write_private

    server = _vault_server(inventory)
    path = Path(file)
    data = take_snapshot(server)
    write_private(path, data, replace=True)
    print(f"{path}: snapshot of {server.name}'s Vault, {len(data)} bytes (0600)")
    return 0


@vault.command(short_help="Restore a snapshot FILE into the fleet's blank Vault.")
@inventory_argument
@click.argument("file", type=click.Path(dir_okay=False))
def restore(inventory: str, file: str) -> int:
    """Restore the snapshot in FILE into the fleet's (blank, freshly started) Vault."""
    from gpufleet.vault import restore_snapshot

    server = _vault_server(inventory)
    restore_snapshot(server, Path(file).read_bytes())
    service = "openbao" if server.vault.flavor == "openbao" else "vault"
    print(
        f"{server.name}: snapshot restored; restart {service} there, then run "
        "deploys/vault.py, which unseals it with the fleet's shares"
    )
    return 0


@main_group.group(short_help="An offline bundle of the fleet's downloads: export, import.")
def bundle() -> None:
    """Everything an inventory's fleet downloads (models, engine files, wheels), fetched and
    checked on a machine that reaches the internet, for a fleet that does not."""


@bundle.command(
    name="export", short_help="Fetch what INVENTORY downloads into DEST, each file checked."
)
@inventory_argument
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--pip-index", metavar="URL", help="A PyPI mirror for the wheels.")
def bundle_export(inventory: str, dest: str, pip_index: str | None) -> int:
    """Fetch every GGUF file, Ollama model, pinned engine file and locked wheel INVENTORY's
    fleet downloads into DEST, each checked against its sha256 (or digest, or lock hash),
    and list them in DEST/bundle.json. What DEST holds already, and right, is kept."""
    from gpufleet.bundle import export
    from gpufleet.inventory import validate_file

    specs = validate_file(inventory)
    console = _console(stderr=True)
    artifacts = export(specs, Path(dest), lambda step: console.print(step), pip_index)
    table = _table("kind", "what", "for")
    for artifact in artifacts:
        table.add_row(artifact.kind, artifact.name, ", ".join(artifact.used_by))
    _print_table(table)
    print(f"{dest}: {len(artifacts)} artifacts, checked; carry the folder to the fleet")
    return 0


@bundle.command(
    name="import", short_help="Check BUNDLE against its manifest and INVENTORY's needs."
)
@click.argument("bundle_dir", metavar="BUNDLE", type=click.Path(file_okay=False, exists=True))
@inventory_argument
def bundle_import(bundle_dir: str, inventory: str) -> int:
    """Check every file of BUNDLE against its bundle.json and that it holds everything
    INVENTORY's fleet downloads; then say what to set so the fleet takes it from its model
    cache. Contacts no host."""
    from gpufleet.bundle import bundle_settings, verify
    from gpufleet.inventory import validate_file

    specs = validate_file(inventory)
    root = Path(bundle_dir).resolve()
    findings = verify(root, specs)
    if findings:
        for finding in findings:
            _warn(f"{finding.path}: {finding.problem}")
        _fail(
            f"gpufleet bundle import: {root}: {len(findings)} problem(s); export it again "
            "(gpufleet bundle export INVENTORY DEST keeps what is right)"
        )
    print(f"{root}: every file checked, and it holds all {inventory} downloads.")
    print("Set in the inventory, then run deploys/inference.py (the cache first):")
    for host, setting in bundle_settings(root, specs):
        print(f"  {host}: {setting}")
    return 0


@main_group.command(short_help="The host data reference as Markdown.")
def reference() -> int:
    """Every host-data key with its type, default and meaning, as Markdown (the README's)."""
    from gpufleet.reference import markdown

    print(markdown(), end="")
    return 0


@main_group.group(short_help="The local lab of systemd-nspawn hosts (up, status, down).")
def lab() -> None:
    """A local lab of real Debian hosts (systemd-nspawn) for the deploys and tests; needs
    root on Linux."""


lab_inventory_argument = click.argument(
    "inventory", default=DEFAULT_LAB_INVENTORY, required=False, type=click.Path(dir_okay=False)
)


@lab.command(short_help="Build and boot the lab's hosts.")
@lab_inventory_argument
def up(inventory: str) -> int:
    """Make and boot every host of INVENTORY (default inventory/lab.py). The first run builds
    a base root and downloads about 300 MB; its steps show on stderr."""
    from gpufleet import lab as lab_module

    started = time.monotonic()
    with _steps("lab up") as step:
        hosts = lab_module.up(inventory, progress=step)
    took = time.monotonic() - started
    for host in hosts:
        print(f"{host.name:<16} {host.address}  ssh ok")
    print(f"lab up: {len(hosts)} hosts in {took:.1f} s (key {lab_module.key_path()})")
    return 0


@contextlib.contextmanager
def _steps(title: str) -> Iterator[Callable[[str], None]]:
    """Each step of a long task on stderr: a spinner with the step on a terminal, a line per
    step otherwise (a log keeps them)."""
    if not sys.stderr.isatty():
        yield lambda step: _warn(f"{title}: {step}")
        return
    console = _console(stderr=True)
    with console.status(title) as status:
        started = [time.monotonic()]
        last: list[str] = []

        def show(step: str) -> None:
            if last:
                console.print(f"  {last[0]} ({time.monotonic() - started[0]:.1f} s)")
            last[:] = [step]
            started[0] = time.monotonic()
            status.update(f"{title}: {step}")

        yield show
        show("done")  # the last step, with its time


@lab.command(short_help="Namespace, process and SSH of each lab host.")
@lab_inventory_argument
@click.option("--json", "as_json", is_flag=True, help="Print {host: {namespace, running, ssh}}.")
def status(inventory: str, as_json: bool) -> int:
    """Per lab host: its network namespace, its container and SSH. Exits 3 unless all are up."""
    from gpufleet import lab as lab_module

    state = lab_module.status(inventory)
    if as_json:
        print(json.dumps(state, indent=2))
    else:
        table = _table("host", *next(iter(state.values()), {}).keys())
        for name, flags in state.items():
            table.add_row(name, *("yes" if up else "no" for up in flags.values()))
        _print_table(table)
    return 0 if all(all(f.values()) for f in state.values()) else EXIT_LAB_NOT_READY


@lab.command(short_help="Stop every lab host and remove what the lab made.")
def down() -> int:
    """Stop every lab host and remove its namespaces, links and NAT rules."""
    from gpufleet import lab as lab_module

    left = lab_module.down()
    if left:
        _warn("lab down left behind: " + ", ".join(left))
        return EXIT_FAILED
    print("lab down: nothing left behind")
    return 0


# --- commands from other modules -----------------------------------------------------------
# A subcommand written elsewhere is a click command registered here, after the built-in ones:
#     from gpufleet.some_module import some_command
#     main_group.add_command(some_command)            # gpufleet some-command ...
# It returns its exit code (an int, or None for 0); a user's mistake it raises (an
# InventoryError, NoHostsSelected, OSError ...) is reported by FleetGroup as one line.
from gpufleet.onboarding import discover_command, init_command, measure_command  # noqa: E402
from gpufleet.status import status_command  # noqa: E402 (registered after the built-ins)

main_group.add_command(init_command, "init")
main_group.add_command(discover_command, "discover")
main_group.add_command(measure_command, "measure")
main_group.add_command(status_command, "status")
main_group.add_command(plot_command, "plot")


# --- running it ----------------------------------------------------------------------------


def _stdout_to_devnull() -> None:
    """After the reader of stdout went away: what is still buffered goes nowhere, so that
    Python's flush at exit does not report the broken pipe."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    try:
        result = main_group.main(
            args=list(argv) if argv is not None else None,
            prog_name="gpufleet",
            standalone_mode=False,
        )
        sys.stdout.flush()
    except click.ClickException as error:  # UserError, and click's usage errors
        error.show()
        return error.exit_code
    except click.Abort as error:  # click's form of Ctrl-C
        if error.__cause__ is None and error.__context__ is None:
            _warn("gpufleet: aborted")
            return EXIT_FAILED
        _warn("gpufleet: interrupted")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        _warn("gpufleet: interrupted")
        return EXIT_INTERRUPTED
    except (_PipeClosed, BrokenPipeError):
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
