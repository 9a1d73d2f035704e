"""A new fleet from an empty folder: ``gpufleet init`` writes the folder, ``gpufleet discover``
reads machines over SSH and writes them into its hosts.yaml.

    mkdir ~/fleet && cd ~/fleet
    gpufleet init
    gpufleet discover 192.168.1.20 --ssh-key ~/.ssh/id_ed25519
    gpufleet validate inventory.py && gpufleet preview inventory.py
    pyinfra inventory.py deploys/gpu_node.py --dry
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from ipaddress import IPv4Address, IPv4Network, ip_address
from pathlib import Path
from typing import Any

import click

from gpufleet.catalogue import Catalogue, load_catalogue
from gpufleet.facts.bandwidth import BandwidthReading, slowest_gpu_gbs
from gpufleet.facts.machine import MachineReport, SeenGpu
from gpufleet.hosts_file import HOSTS_FILE, hosts_path, merge_host, read_hosts, write_hosts
from gpufleet.options import limit_option

INVENTORY = '''\
"""This fleet's inventory, for pyinfra and gpufleet alike.

The hosts are in hosts.yaml beside this file: `gpufleet discover ADDRESS` adds one. Settings
for every host of a group go in group_data/<group>.py (group_data/all.py: every host).

    gpufleet validate inventory.py                  # contacts no host
    gpufleet preview inventory.py                   # what the deploys would do; contacts none
    pyinfra inventory.py deploys/gpu_node.py --dry  # asks the hosts, changes nothing
"""

from gpufleet.hosts_file import inventory_groups
from gpufleet.inventory import check_inventory

# Every group hosts.yaml names (gpu_nodes, cpu_nodes ...), as pyinfra reads groups: names
# in this file holding a list of hosts.
globals().update(inventory_groups(__file__))

check_inventory(__file__)
'''

GROUP_DATA_ALL = '''\
"""Settings for every host of this fleet. A group's file beside this one (gpu_nodes.py,
cpu_nodes.py ...) overrides them for its hosts, and a host's own data in hosts.yaml overrides
both. `gpufleet reference` describes every key; the values below are the defaults."""

# Debian mirror (a local mirror or apt cache saves every host the download):
# apt_mirror = "http://deb.debian.org/debian"

# Time servers (a LAN time server, if the network has one):
# ntp_servers = ["0.debian.pool.ntp.org", "1.debian.pool.ntp.org"]

# The account gpufleet's services run as:
# service_user = "gpufleet"

# Where this machine keeps the fleet's certificate authority:
# fleet_ca_dir = "~/.config/gpufleet/ca"

# Addresses that may reach every service, e.g. the machine you run gpufleet from:
# firewall = {"admin_sources": ["192.168.1.10/32"]}

# Tailscale on every host (its auth key from the secret store):
# tailscale = {"enabled": True, "auth_key": "vault:kv/gpufleet/tailscale#auth_key"}
'''

CATALOGUE = """\
# Accelerators and models this fleet has that gpufleet's own catalogue does not know.
# `gpufleet discover` names a GPU it cannot identify by what the host calls it: declare that
# part here (its kind, memory and bandwidth) under the same name. For example:
#
# accelerators:
#   RTX 4060 Ti:
#     kind: nvidia
#     vram_gb: [16]
#     bandwidth_gbs: 288
#     pci_device_ids: ["2805"]
#
# models:
#   my-model:7b:
#     params_b: 7.6
#     active_params_b: 7.6
#     layers: 28
#     kv_heads: 4
#     head_dim: 128
#     context: 32768
#     kind: chat
accelerators: {}
models: {}
"""

HOSTS = "hosts: {}\n"


def starter_files() -> dict[str, str]:
    """What ``gpufleet init`` writes, by path in the fleet's folder."""
    from gpufleet import deploys
    from gpufleet.hosts_file import HEADER

    files = {
        "inventory.py": INVENTORY,
        HOSTS_FILE: HEADER + HOSTS,
        "group_data/all.py": GROUP_DATA_ALL,
        "catalogue.yaml": CATALOGUE,
    }
    files |= {f"deploys/{name}.py": deploys.thin_file(name) for name in deploys.NAMES}
    return files


def init_fleet(folder: Path, force: bool = False) -> list[Path]:
    """Write the starter files into ``folder``; refuses (writing nothing) where any exists,
    unless ``force``. Returns the files written."""
    files = {folder / name: text for name, text in starter_files().items()}
    existing = [path for path in files if path.exists()]
    if existing and not force:
        listed = ", ".join(str(path.relative_to(folder)) for path in existing)
        raise click.ClickException(
            f"{folder}: {listed} already there; nothing written (--force overwrites them)"
        )
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(files)


@click.command(
    "init", short_help="Start a fleet folder: inventory, hosts.yaml, group_data, deploys."
)
@click.argument("folder", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="overwrite files that are already there")
def init_command(folder: Path, force: bool) -> None:
    """Start a fleet in FOLDER (default: here): inventory.py, hosts.yaml, group_data/,
    catalogue.yaml and deploys/."""
    written = init_fleet(folder, force)
    for path in written:
        click.echo(f"wrote {path}")
    where = "" if folder == Path(".") else f"  cd {folder}\n"
    click.echo(
        f"\nNext: add your machines, e.g.\n{where}"
        "  gpufleet discover 192.168.1.20 --ssh-key ~/.ssh/id_ed25519\n"
        "then: gpufleet validate inventory.py; gpufleet preview inventory.py"
    )


# --- discover ---------------------------------------------------------------------------

OS_FAMILIES = {"debian": "debian", "ubuntu": "ubuntu", "raspbian": "raspios", "macos": "macos"}
"""``/etc/os-release`` IDs gpufleet deploys to, as the inventory's ``os`` names them."""
ARCHITECTURES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
TAILNET = IPv4Network("100.64.0.0/10")


@dataclass
class Discovered:
    """One machine as discovery writes it: its host data, the groups it suggests, and what
    the user has to do by hand."""

    entry: dict[str, Any]
    groups: list[str]
    summary: str
    todo: list[str] = field(default_factory=list)


def _gib(mib: int | None) -> float | None:
    """Memory as vendors state it: a card nvidia-smi gives 24564 MiB is sold as 24 GB."""
    return round(mib / 1024, 1) if mib else None


def accelerators_of(
    gpus: list[SeenGpu], catalogue: Catalogue
) -> tuple[list[dict[str, Any]], list[str]]:
    """Host data for the GPUs seen, named as the catalogue knows them (by PCI id first, then
    by name), and what the user must do for those it does not know."""
    counted: Counter[tuple[str, str, float | None]] = Counter()
    todo = []
    for gpu in gpus:
        entry = _identify(gpu, catalogue)
        if entry is not None:
            counted[(entry.kind, entry.name, None)] += 1
            continue
        vram = _gib(gpu["vram_mib"])
        pci = f" [PCI {gpu['pci_device_id']}]" if gpu["pci_device_id"] else ""
        if gpu["vendor"] == "amd" and not DISCRETE_AMD.search(gpu["name"]):
            todo.append(f"{gpu['name']}{pci}: {_amd_left_out(gpu['name'])}")
            continue
        kind = {"nvidia": "nvidia", "amd": "amd_gpu", "apple": "apple_metal", "jetson": "jetson"}[
            gpu["vendor"]
        ]
        counted[(kind, gpu["name"], vram)] += 1
        todo.append(
            f"{gpu['name']}{pci}: not in gpufleet's catalogue; declare it under that name in "
            "catalogue.yaml (accelerators:), or change hardware.accelerators in hosts.yaml to "
            "a part the catalogue knows"
        )
    accelerators = []
    for (kind, model, vram), count in counted.items():
        accelerator: dict[str, Any] = {"kind": kind, "model": model}
        if count > 1:
            accelerator["count"] = count
        if vram:
            accelerator["vram_gb"] = vram
        accelerators.append(accelerator)
    return accelerators, todo


def _identify(gpu: SeenGpu, catalogue: Catalogue) -> Any:
    if gpu["vendor"] == "nvidia":
        return catalogue.identify(gpu["name"], gpu["pci_device_id"])
    if gpu["vendor"] == "apple":
        return catalogue.accelerator(gpu["name"].removeprefix("Apple").strip())
    if gpu["vendor"] == "jetson":
        board = gpu["name"]
        if "Orin Nano" in board:
            return catalogue.accelerator(
                "Jetson Orin Nano Super" if "Super" in board else "Jetson Orin Nano"
            )
        return None
    # AMD: by name, where exactly one catalogue part is named and lspci does not list
    # several parts sharing the device ("Radeon 8050S / Radeon 8060S"). A name inside a
    # longer one it also names is not another part ("Radeon RX 7900 XT" in "... XTX").
    if "/" in gpu["name"]:
        return None
    named = {
        name: e
        for name, e in catalogue.accelerators.items()
        if re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", gpu["name"])
    }
    return next(iter(named.values())) if len(named) == 1 else None


DISCRETE_AMD = re.compile(r"\bRX\b|Instinct|Radeon Pro|\bW\d{4}\b|\bMI\d{2,3}")
"""How AMD names its discrete cards (Radeon RX 7900 XTX, Radeon Pro W7900, Instinct MI300X);
its integrated GPUs are Radeon Graphics, Radeon 780M, Radeon 8060S and codenames."""


def _amd_left_out(name: str) -> str:
    """Why an AMD integrated GPU the catalogue does not name is left out of the host's data:
    gpufleet cannot plan for it without knowing the part (its memory is the system's, and
    most are too small to be worth a model). A discrete card is declared as it is seen."""
    return (
        "an AMD integrated GPU the catalogue does not name; left out. To run models on it, "
        "declare it in catalogue.yaml (accelerators:, kind: amd_igpu) and add it to the "
        "host's hardware.accelerators in hosts.yaml"
    )


def host_name(report: MachineReport, address: str) -> str:
    """An inventory name from the machine's host name (or its address)."""
    name = re.sub(r"[^a-z0-9-]+", "-", (report["hostname"] or address).lower()).strip("-")
    return name[:63] or re.sub(r"[^a-z0-9]+", "-", address).strip("-")


def discovered(
    report: MachineReport,
    address: str,
    connection: dict[str, Any],
    catalogue: Catalogue,
) -> Discovered:
    """Host data and suggested groups for one machine's report."""
    todo: list[str] = []
    accelerators, unknown = accelerators_of(report["gpus"], catalogue)
    todo += unknown
    entry: dict[str, Any] = dict(connection)
    if _is_lan_address(address):
        entry["lan_address"] = address
    os_family = _os_family(report)
    if os_family is None:
        todo.append(
            f"{report['os_name'] or 'its system'}: not a system gpufleet deploys to (Debian, "
            "Ubuntu, Raspberry Pi OS, Proxmox VE, Jetson Linux, macOS); 'os' left out"
        )
    elif os_family != "debian":
        entry["os"] = os_family
    arch = ARCHITECTURES.get(report["machine"])
    if arch is None:
        todo.append(f"architecture {report['machine']!r}: gpufleet knows x86_64 and aarch64")
    elif arch != "x86_64":
        entry["arch"] = arch
    hardware: dict[str, Any] = {"cpu": report["cpu"], "cores": max(report["cores"], 1)}
    hardware["ram_gb"] = report["ram_gb"]
    hardware["accelerators"] = accelerators
    reading = report.get("bandwidth")
    if reading is not None:
        measured, why_not = measured_data(reading, any(a["kind"] == "nvidia" for a in accelerators))
        if measured:
            hardware["measured"] = measured
        todo += why_not
    entry["hardware"] = hardware
    kinds = {a["kind"] for a in accelerators}
    if "nvidia" in kinds and os_family not in ("macos", "jetson-l4t"):
        if report["nvidia_driver"]:
            # The driver it runs: deploys hold it there rather than change it.
            entry["nvidia_driver"] = {"version": report["nvidia_driver"]}
        else:
            todo.append(
                "no NVIDIA driver yet: set nvidia_driver.version in hosts.yaml (gpufleet "
                "validate names the version Debian ships for the cards)"
            )
    if "nvidia" in kinds:
        groups = ["gpu_nodes"] + (["proxmox_hosts"] if os_family == "proxmox" else [])
    elif "jetson" in kinds:
        groups = ["edge"]
    else:
        groups = ["cpu_nodes"]
    cards = (
        ", ".join(f"{a.get('count', 1)}x {a['model']}" for a in accelerators)
        or "no GPU gpufleet uses"
    )
    summary = (
        f"{report['os_name'] or report['system']}, {report['machine']}, "
        f"{report['cpu'] or 'CPU unknown'}, {hardware['cores']} cores, "
        f"{report['ram_gb']} GB RAM, {cards}"
    )
    return Discovered(entry, groups, summary, todo)


def measured_data(
    reading: BandwidthReading, has_gpu: bool, today: date | None = None
) -> tuple[dict[str, Any] | None, list[str]]:
    """``hardware.measured`` from a MemoryBandwidth reading (None without a figure), and why
    a figure is missing. The GPU's is written only where every NVIDIA GPU was measured (the
    planner bounds by the slowest)."""
    measured: dict[str, Any] = {}
    if reading["ram_read_gbs"]:
        measured["ram_bandwidth_gbs"] = reading["ram_read_gbs"]
    gpu = slowest_gpu_gbs(reading)
    if gpu and has_gpu:
        measured["gpu_bandwidth_gbs"] = gpu
    notes = [*reading["notes"], *(reading["gpu_notes"] if has_gpu else [])]
    why_not = [f"bandwidth probe: {note}" for note in dict.fromkeys(notes)]
    if not measured:
        return None, why_not
    measured["measured_on"] = today or date.today()
    return measured, why_not


def _os_family(report: MachineReport) -> str | None:
    if report["tegra"]:
        return "jetson-l4t"
    if report["proxmox"]:
        return "proxmox"
    if report["os_id"] == "debian" and "Raspberry Pi" in report["board"]:
        return "raspios"
    return OS_FAMILIES.get(report["os_id"])


def _is_lan_address(address: str) -> bool:
    try:
        parsed = ip_address(address)
    except ValueError:
        return False
    return isinstance(parsed, IPv4Address) and parsed.is_private and parsed not in TAILNET


def connection_data(
    address: str, ssh_user: str, ssh_key: str | None, ssh_port: int
) -> dict[str, Any]:
    """pyinfra's SSH keys for one host, as hosts.yaml keeps them."""
    data: dict[str, Any] = {"ssh_hostname": address, "ssh_user": ssh_user}
    if ssh_key:
        # Absolute: the inventory is read from wherever pyinfra runs.
        data["ssh_key"] = str(Path(ssh_key).expanduser().resolve())
    if ssh_port != 22:
        data["ssh_port"] = ssh_port
    return data


def read_machines(
    hosts: dict[str, dict[str, Any]], measure: bool = False
) -> dict[str, MachineReport | str]:
    """Connect to each host (name -> pyinfra SSH data) with pyinfra and read its
    :class:`~gpufleet.facts.machine.Machine` fact (and, with ``measure``, its
    :class:`~gpufleet.facts.bandwidth.MemoryBandwidth` into the report's ``bandwidth``): the
    report, or why it could not be read."""
    from gpufleet.facts.bandwidth import MemoryBandwidth
    from gpufleet.facts.machine import Machine

    facts: list[type[Any]] = [Machine, MemoryBandwidth] if measure else [Machine]
    results: dict[str, MachineReport | str] = {}
    for name, found in read_facts(hosts, facts).items():
        if isinstance(found, str):
            results[name] = found
            continue
        report: MachineReport = found[0]
        if measure:
            report["bandwidth"] = found[1]
        results[name] = report
    return results


def read_facts(
    hosts: dict[str, dict[str, Any]], facts: Iterable[type[Any]]
) -> dict[str, list[Any] | str]:
    """Connect to each host (name -> pyinfra SSH data) with pyinfra and read ``facts`` in
    order, one connection per host: their values, or why they could not be read."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.context import ctx_config, ctx_inventory, ctx_state

    inventory = Inventory((list(hosts.items()), {}))
    config = Config(CONNECT_TIMEOUT=15, FAIL_PERCENT=100)
    state = State(inventory, config)
    results: dict[str, list[Any] | str] = {}
    with ctx_state.use(state), ctx_inventory.use(inventory), ctx_config.use(config):
        try:
            connect_all(state)
        except PyinfraError as error:
            return {name: f"could not connect: {error}" for name in hosts}
        for host in inventory:
            if not host.connected:
                results[host.name] = "could not connect over SSH (see the log above)"
                continue
            try:
                results[host.name] = [host.get_fact(fact) for fact in facts]
            except PyinfraError as error:
                results[host.name] = f"could not read it: {error}"
            finally:
                host.disconnect()
    return results


@click.command(
    "discover", short_help="Read machines over SSH (CPU, RAM, GPUs, OS) into hosts.yaml."
)
@click.argument("addresses", nargs=-1, required=True)
@click.option("--ssh-user", default="root", show_default=True, help="account to log in as")
@click.option(
    "--ssh-key",
    type=click.Path(exists=True, dir_okay=False),
    help="private key to log in with (default: your SSH agent and ~/.ssh keys)",
)
@click.option("--ssh-port", type=int, default=22, show_default=True)
@click.option("--name", "names", multiple=True, help="inventory name of each address, in order")
@click.option(
    "--inventory",
    default="inventory.py",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="the fleet's inventory; hosts.yaml beside it is written",
)
@click.option(
    "--group",
    "groups",
    multiple=True,
    help="put the hosts in this group (repeat for more) instead of the suggested ones",
)
@click.option(
    "--measure/--no-measure",
    default=True,
    show_default=True,
    help="measure memory bandwidth (a bounded probe of a few seconds) into hardware.measured",
)
def discover_command(
    addresses: tuple[str, ...],
    ssh_user: str,
    ssh_key: str | None,
    ssh_port: int,
    names: tuple[str, ...],
    inventory: Path,
    groups: tuple[str, ...],
    measure: bool,
) -> None:
    """Read each machine at ADDRESS over SSH (system, CPU, cores, memory, GPUs, and the
    memory bandwidth it reaches) and write it into the hosts.yaml beside the inventory: a host
    already there is updated. Suggests gpu_nodes for a machine with an NVIDIA GPU, edge for a
    Jetson, cpu_nodes otherwise."""
    if names and len(names) != len(addresses):
        raise click.UsageError(f"{len(names)} --name for {len(addresses)} addresses")
    from gpufleet.models import HOST_GROUPS

    unknown = [group for group in groups if group not in HOST_GROUPS]
    if unknown:
        raise click.UsageError(f"no group {unknown[0]!r}; gpufleet's groups: {HOST_GROUPS}")
    path = hosts_path(inventory)
    if not path.parent.is_dir():
        raise click.ClickException(f"{path.parent}: no such folder (run gpufleet init there)")
    hosts = read_hosts(path)  # refuses a broken file before any host is contacted
    connections = {
        address: connection_data(address, ssh_user, ssh_key, ssh_port) for address in addresses
    }
    reports = read_machines(connections, measure=measure)
    catalogue = load_catalogue()
    failed = []
    for i, address in enumerate(addresses):
        report = reports[address]
        if isinstance(report, str):
            failed.append(f"{address}: {report}")
            continue
        found = discovered(report, address, connections[address], catalogue)
        name = names[i] if names else host_name(report, address)
        name, action = merge_host(hosts, name, found.entry, found.groups, list(groups))
        click.echo(f"{name} ({address}): {found.summary}")
        click.echo(f"  {action} in {path.name}, groups: {', '.join(hosts[name]['groups'])}")
        for line in found.todo:
            click.echo(f"  to do: {line}")
    if len(failed) < len(addresses):
        write_hosts(path, hosts)
        click.echo(f"wrote {path}; next: gpufleet validate {inventory}")
    if failed:
        raise click.ClickException("\n".join(failed))


# --- measure ----------------------------------------------------------------------------


def measured_lines(name: str, measured: dict[str, Any]) -> str:
    """The host data to paste for one host's measurement (as hosts.yaml or a Python
    inventory's host data would hold it)."""
    figures = ", ".join(
        f"{key}: {value}" for key, value in measured.items() if key != "measured_on"
    )
    return (
        f"{name}:\n  hardware:\n    measured: {{{figures}, measured_on: {measured['measured_on']}}}"
    )


def write_measured(hosts: dict[str, dict[str, Any]], name: str, measured: dict[str, Any]) -> None:
    """Put one host's measurement into its hosts.yaml entry (in place of an older one)."""
    hardware = hosts[name].setdefault("hardware", {})
    hardware["measured"] = measured


@click.command(
    "measure", short_help="Measure hosts' memory bandwidth for the planner (a short probe)."
)
@click.argument("inventory", type=click.Path(exists=True, dir_okay=False))
@limit_option()
@click.option(
    "--write",
    is_flag=True,
    help="write the figures into hosts.yaml beside the inventory (for the hosts it holds)",
)
def measure_command(inventory: str, limit: tuple[str, ...], write: bool) -> None:
    """Run a short, bounded memory-bandwidth probe on each selected host of INVENTORY (all
    CPUs reading system memory; each NVIDIA GPU copying within its memory, through the
    driver) and print the figures with the host data that makes the planner use them
    (``hardware.measured``). With --write, hosts that live in hosts.yaml get it written
    there; for the others, paste what is printed into their data. Measure an idle host: a
    busy one measures lower."""
    from gpufleet.connector_data import ssh_data
    from gpufleet.facts.bandwidth import MemoryBandwidth
    from gpufleet.inventory import load_inventory, validate_file
    from gpufleet.selection import select_hosts

    specs = validate_file(inventory)  # a broken inventory stops here, before any host
    selection = select_hosts(specs, limit, source=inventory)
    for warning in selection.warnings():
        click.echo(warning, err=True)
    pyinfra_hosts = {host.name: host for host in load_inventory(inventory)}
    connections = {
        name: ssh_data(pyinfra_hosts[name].data.dict()) or {"ssh_hostname": name}
        for name in selection.names
    }
    readings = read_facts(connections, [MemoryBandwidth])
    path = hosts_path(inventory)
    in_file = read_hosts(path) if write else {}
    written, failed = [], []
    for name in selection.names:
        found = readings[name]
        if isinstance(found, str):
            failed.append(f"{name}: {found}")
            continue
        reading: BandwidthReading = found[0]
        measured, why_not = measured_data(reading, specs[name].hardware.nvidia_gpu_count > 0)
        gpus = ", ".join(
            f"GPU {g['index']} {g['name']} {g['copy_gbs'] or '-'} GB/s copy"
            for g in reading["gpus"]
        )
        click.echo(
            f"{name}: RAM read {reading['ram_read_gbs'] or '-'} GB/s"
            + (f"; {gpus}" if gpus else "")
            + (f" ({reading['seconds']:g} s)" if reading["seconds"] else "")
        )
        for line in why_not:
            click.echo(f"  {line}")
        if measured is None:
            continue
        if name in in_file:
            write_measured(in_file, name, measured)
            written.append(name)
        else:
            click.echo(measured_lines(name, measured))
    if written:
        write_hosts(path, in_file)
        click.echo(f"wrote hardware.measured of {', '.join(written)} into {path}")
    if failed:
        raise click.ClickException("\n".join(failed))
