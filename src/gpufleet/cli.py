"""``gpufleet``: validate inventories and run the local lab.

gpufleet validate inventory/homelab.py      # contacts no host
gpufleet plan inventory/homelab.py          # where each model runs, memory, speed bound
gpufleet engines inventory/homelab.py       # each host's inference servers and flags
gpufleet routes inventory/homelab.py        # the router's model groups, fallbacks, gateway
gpufleet bench inventory/lab.py             # endpoint speeds with 95 % intervals, to CSV
gpufleet verify inventory/lab.py            # testinfra checks per host, table + JUnit XML
gpufleet rebuild HOST --inventory FILE [--dry]   # after a hardware swap
gpufleet firewall inventory/homelab.py     # where each port listens, who may reach it
gpufleet vault snapshot|restore INVENTORY FILE   # raft snapshot of the fleet's Vault
gpufleet lab up|status|down [inventory/lab.py]
gpufleet init [DIR]                          # a new fleet's folder
gpufleet discover ADDRESS... [--ssh-key FILE]   # read machines over SSH into hosts.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import click

from gpufleet import lab
from gpufleet.inventory import InventoryError, validate_file
from gpufleet.models import HostSpec

DEFAULT_LAB_INVENTORY = "inventory/lab.py"


def _validate(args: argparse.Namespace) -> int:
    for path in args.inventory:
        try:
            specs = validate_file(path)
        except InventoryError as error:
            print(error, file=sys.stderr)
            return 1
        groups = sorted({g for spec in specs.values() for g in spec.groups})
        print(f"{path}: {len(specs)} hosts valid (groups: {', '.join(groups)})")
    return 0


def _lab(args: argparse.Namespace) -> int:
    try:
        if args.action == "up":
            started = time.monotonic()
            hosts = lab.up(args.inventory)
            took = time.monotonic() - started
            for host in hosts:
                print(f"{host.name:<16} {host.address}  ssh ok")
            print(f"lab up: {len(hosts)} hosts in {took:.1f} s (key {lab.key_path()})")
        elif args.action == "status":
            state = lab.status(args.inventory)
            if args.json:
                print(json.dumps(state, indent=2))
            else:
                for name, flags in state.items():
                    print(
                        f"{name:<16} "
                        + "  ".join(f"{k}={'yes' if v else 'no'}" for k, v in flags.items())
                    )
            return 0 if all(all(f.values()) for f in state.values()) else 3
        else:
            left = lab.down()
            if left:
                print("lab down left behind: " + ", ".join(left), file=sys.stderr)
                return 1
            print("lab down: nothing left behind")
    except (lab.LabError, InventoryError) as error:
        print(f"gpufleet lab {args.action}: {error}", file=sys.stderr)
        return 1
    return 0


def _specs_or_report(inventory: str) -> dict[str, HostSpec] | None:
    """The inventory's validated hosts, or None once its problems are printed."""
    try:
        return validate_file(inventory)
    except InventoryError as error:
        print(error, file=sys.stderr)
        return None


def _plan(args: argparse.Namespace) -> int:
    from gpufleet.catalogue import load_catalogue
    from gpufleet.planner import format_plan, plan_host

    specs = _specs_or_report(args.inventory)
    if specs is None:
        return 1
    catalogue = load_catalogue()
    plans = [plan_host(spec, catalogue) for spec in specs.values() if spec.models]
    if args.json:
        print(json.dumps([plan.as_dict() for plan in plans], indent=2))
    elif not plans:
        print(f"{args.inventory}: no host serves a model yet; give one models: [...]")
    else:
        print("\n\n".join(format_plan(plan) for plan in plans))
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    import subprocess
    from pathlib import Path

    from gpufleet.paths import packaged_deploy

    pyinfra = str(Path(sys.executable).parent / "pyinfra")
    mode = ["--dry"] if args.dry else ["-y"]
    rebuild = packaged_deploy("deploys/rebuild.py")
    command = [pyinfra, "-v", args.inventory, rebuild, "--limit", args.host, *mode]
    return subprocess.run(command, check=False).returncode


def _engines(args: argparse.Namespace) -> int:
    from gpufleet.serving import describe

    specs = _specs_or_report(args.inventory)
    if specs is None:
        return 1
    names = args.limit or list(specs)
    unknown = [name for name in names if name not in specs]
    if unknown:
        print(f"no host {', '.join(unknown)} in {args.inventory}", file=sys.stderr)
        return 1
    print("\n".join(describe(specs[name]) for name in names))
    return 0


def _routes(args: argparse.Namespace) -> int:
    from gpufleet.routing import describe_routes

    specs = _specs_or_report(args.inventory)
    if specs is None:
        return 1
    print(describe_routes(specs) or f"{args.inventory}: no router or gateway host")
    return 0


def _firewall(args: argparse.Namespace) -> int:
    from gpufleet.exposure import describe_exposures

    specs = _specs_or_report(args.inventory)
    if specs is None:
        return 1
    print(describe_exposures(specs))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gpufleet.bench import bench, endpoints, table
    from gpufleet.secrets import read_secret
    from gpufleet.vault import ca_file, fleet_vault

    specs = _specs_or_report(args.inventory)
    if specs is None:
        return 1
    gateway = next((s for s in specs.values() if "gateway" in s.groups), None)
    key = ca = None
    if gateway is not None and gateway.gateway.clients and not args.engines_only:
        client = args.client or sorted(gateway.gateway.clients)[0]
        key = read_secret(gateway.gateway.clients[client], fleet_vault(specs))
        ca = ca_file(gateway)
    found = endpoints(specs, key, ca)
    if args.limit:
        found = [e for e in found if e.host in args.limit]
    rows = bench(found, args.runs, args.concurrency, Path(args.csv))
    print(table(rows))
    print(f"{len(rows)} rows written to {args.csv}")
    return 0 if rows else 1


def _verify(args: argparse.Namespace) -> int:
    from gpufleet import verify

    try:
        chosen = verify.targets(args.inventory, args.limit or ())
        junit = None if args.list else args.junit_xml
        code, outcomes = verify.run(chosen, junit, args.list, args.suite or ())
    except InventoryError as error:
        print(error, file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"gpufleet verify: {error}", file=sys.stderr)
        return 1
    if args.list:
        for outcome in outcomes:
            print(f"{outcome.host:<20} {outcome.suite}: {outcome.check}")
        print(f"{len(outcomes)} checks on {len({o.host for o in outcomes})} hosts; none run")
        return 0 if code == 0 else 1
    print()
    print(verify.table(outcomes))
    print(f"JUnit XML: {args.junit_xml}")
    return 0 if code == 0 else 1


def _preview(args: argparse.Namespace) -> int:
    from gpufleet.paths import EVERY_DEPLOY, packaged_deploy
    from gpufleet.preview import plan, profiles_for, record

    if _specs_or_report(args.inventory) is None:
        return 1
    # The packaged deploys by default: the inventory's folder need not hold a deploys/.
    args.deploys = args.deploys or [packaged_deploy(deploy) for deploy in EVERY_DEPLOY]
    if args.record:
        print(f"recorded {record(args.inventory, args.deploys, args.limit or [], args.record)}")
        return 0
    try:
        profiles = profiles_for(args.inventory, args.limit)
        planned = plan(
            args.inventory,
            args.deploys,
            lambda host, fact, arguments: profiles[host].answer(fact, arguments),
            args.limit,
        )
    except Exception as error:  # a deploy's own error: shown as a pyinfra run would stop
        print(f"preview: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    for host, operations in planned.items():
        changing = [op for op in operations if op.changes]
        print(
            f"{host} ({profiles[host].name}): {len(operations)} operations, "
            f"{len(changing)} would change"
        )
        for operation in () if args.summary else operations if args.verbose else changing:
            print(f"  {'*' if operation.changes else ' '} {operation.name}")
            for command in operation.commands if args.verbose else ():
                print(f"      {command}")
    return 0


def _vault(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gpufleet.vault import (
        VaultError,
        restore_snapshot,
        take_snapshot,
        vault_host,
        write_private,
    )

    specs = _specs_or_report(args.inventory)
    if specs is None:
        return 1
    server = vault_host(specs)
    if server is None:
        print(f"gpufleet vault: {args.inventory} has no vault host", file=sys.stderr)
        return 1
    path = Path(args.file)
    try:
        if args.action == "snapshot":
            snapshot = take_snapshot(server)
            write_private(path, snapshot, replace=True)
            print(f"{path}: snapshot of {server.name}'s Vault, {len(snapshot)} bytes (0600)")
        else:
            restore_snapshot(server, path.read_bytes())
            service = "openbao" if server.vault.flavor == "openbao" else "vault"
            print(
                f"{server.name}: snapshot restored; restart {service} there, then run "
                "deploys/vault.py, which unseals it with the fleet's shares"
            )
    except (VaultError, OSError) as error:
        print(f"gpufleet vault: {error}", file=sys.stderr)
        return 1
    return 0


def _reference(args: argparse.Namespace) -> int:
    from gpufleet.reference import markdown

    print(markdown(), end="")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="gpufleet", description=__doc__.splitlines()[0])
    commands = top.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="validate inventories; contacts no host")
    validate.add_argument("inventory", nargs="+")
    validate.set_defaults(run=_validate)

    plan = commands.add_parser(
        "plan", help="where each model runs, memory used, speed bound; contacts no host"
    )
    plan.add_argument("inventory")
    plan.add_argument("--json", action="store_true", help="the plan as JSON")
    plan.set_defaults(run=_plan)

    rebuild = commands.add_parser(
        "rebuild", help="after a hardware swap: compare, re-plan, redeploy and verify one host"
    )
    rebuild.add_argument("host")
    rebuild.add_argument("--inventory", default="inventory/homelab.py")
    rebuild.add_argument("--dry", action="store_true", help="show everything, change nothing")
    rebuild.set_defaults(run=_rebuild)

    engines = commands.add_parser(
        "engines", help="each host's inference servers, flags and environment; contacts no host"
    )
    engines.add_argument("inventory")
    engines.add_argument("--limit", nargs="+", metavar="HOST", help="only these hosts")
    engines.set_defaults(run=_engines)
    routes = commands.add_parser(
        "routes", help="the router's model groups, fallbacks and the gateway; contacts no host"
    )
    routes.add_argument("inventory")
    routes.set_defaults(run=_routes)
    bench = commands.add_parser(
        "bench", help="TTFT, decode speed and latency of every endpoint, with 95 %% intervals"
    )
    bench.add_argument("inventory")
    bench.add_argument("--runs", type=int, default=5, help="rounds per concurrency level")
    bench.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    bench.add_argument("--csv", default="bench/results.csv", help="where the rows go")
    bench.add_argument("--limit", nargs="+", metavar="HOST", help="only these hosts' engines")
    bench.add_argument("--client", help="gateway client whose key to use (default: the first)")
    bench.add_argument("--engines-only", action="store_true", help="skip the gateway")
    bench.set_defaults(run=_bench)

    verify_command = commands.add_parser(
        "verify", help="run the testinfra suites against the inventory's hosts over SSH"
    )
    verify_command.add_argument("inventory")
    verify_command.add_argument("--limit", nargs="+", metavar="HOST", help="hosts or groups")
    verify_command.add_argument(
        "--suite",
        nargs="+",
        help="only these suites (baseline, edge, gpu_node, inference, platform)",
    )
    verify_command.add_argument(
        "--junit-xml", default="verify-results.xml", help="where the JUnit XML goes"
    )
    verify_command.add_argument(
        "--list", action="store_true", help="list the checks each host gets; contacts no host"
    )
    verify_command.set_defaults(run=_verify)

    preview = commands.add_parser(
        "preview",
        help="plan deploys on the inventory's hosts from recorded facts; contacts no host",
    )
    preview.add_argument("inventory")
    preview.add_argument("deploys", nargs="*", help="deploy files (default: every deploy)")
    preview.add_argument("--limit", nargs="+", metavar="HOST", help="hosts or groups")
    preview.add_argument("-v", "--verbose", action="store_true", help="every operation and command")
    preview.add_argument("--summary", action="store_true", help="one line per host")
    preview.add_argument(
        "--record", metavar="PROFILE", help="ask one real host (--limit) and save its facts"
    )
    preview.set_defaults(run=_preview)

    firewall = commands.add_parser(
        "firewall", help="each host's gpufleet ports: where they listen, who may reach them"
    )
    firewall.add_argument("inventory")
    firewall.set_defaults(run=_firewall)

    vault_command = commands.add_parser(
        "vault", help="snapshot the fleet's Vault to a file, or restore one into a blank Vault"
    )
    vault_command.add_argument("action", choices=["snapshot", "restore"])
    vault_command.add_argument("inventory")
    vault_command.add_argument("file", help="the snapshot (written 0600)")
    vault_command.set_defaults(run=_vault)

    reference = commands.add_parser("reference", help="host data reference as Markdown")
    reference.set_defaults(run=_reference)

    # Click commands: listed here, run by main() with their own options.
    for name, summary in ONBOARDING.items():
        commands.add_parser(name, help=summary, add_help=False)

    lab_command = commands.add_parser("lab", help="the local lab of nspawn hosts")
    lab_command.add_argument("action", choices=["up", "status", "down"])
    lab_command.add_argument("inventory", nargs="?", default=DEFAULT_LAB_INVENTORY)
    lab_command.add_argument("--json", action="store_true", help="status as JSON")
    lab_command.set_defaults(run=_lab)
    return top


ONBOARDING = {
    "init": "a new fleet's folder: inventory.py, hosts.yaml, group_data/, deploys/",
    "discover": "read machines over SSH (CPU, memory, GPUs) and write them into hosts.yaml",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ONBOARDING:
        from gpufleet.onboarding import discover_command, init_command

        command = init_command if argv[0] == "init" else discover_command
        try:
            command.main(argv[1:], prog_name=f"gpufleet {argv[0]}", standalone_mode=False)
        except click.exceptions.Exit as done:
            return int(done.exit_code)
        except click.ClickException as error:
            error.show()
            return error.exit_code
        except click.Abort:
            return 1
        return 0
    args = parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
