"""The baseline every host gets: sane apt sources, time sync, the service user and the
Prometheus node exporter from Debian's packages."""

from __future__ import annotations

from io import StringIO
from typing import Any
from weakref import WeakKeyDictionary

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.context import ctx_state
from pyinfra.facts.server import Command, LinuxDistribution
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from gpufleet.facts.system import ContainerVirtualization
from gpufleet.inventory import fleet_specs
from gpufleet.models import HostSpec
from gpufleet.operations import accounts
from gpufleet.paths import HOST_STATE, template
from gpufleet.roles.firewall import firewall
from gpufleet.roles.firewall import packages as firewall_packages
from gpufleet.roles.macos import macos_baseline
from gpufleet.roles.proxmox import proxmox_repository
from gpufleet.roles.steps import run_service

SUPPORTED_DISTRIBUTIONS = ("Debian", "Ubuntu", "Raspbian")
NODE_EXPORTER_TEXTFILES = "/var/lib/prometheus/node-exporter"
"""Where the node exporter reads ``*.prom`` files other programs write."""
DPKG_UPDATES = "/var/lib/dpkg/updates"
"""Where dpkg journals a run in progress; files left there mean it was interrupted."""
APT_LOCK_WAIT_S = 600
APT_LOCK_WAIT = (
    "// Managed by gpufleet: wait for dpkg's lock another apt or dpkg holds, then go on.\n"
    f'DPkg::Lock::Timeout "{APT_LOCK_WAIT_S}";\n'
)
BASELINE_PACKAGES = ["systemd-timesyncd", "prometheus-node-exporter", "pciutils"]
_PLANNED: WeakKeyDictionary[object, set[str]] = WeakKeyDictionary()
"""Per pyinfra run, the hosts whose baseline is already planned."""
APT_SOURCES = "apt/debian.sources.j2"
TIMESYNCD_CONF = "timesyncd/gpufleet.conf.j2"
NODE_EXPORTER_DEFAULTS = "node_exporter/prometheus-node-exporter.j2"


def template_variables(spec: HostSpec) -> dict[str, dict[str, Any]]:
    """The variables of each template the baseline renders, by template name, from the host's
    spec. The one source of them: the role renders with these, and bench/converge.py hands the
    same to its Ansible twin (bench/ansible/baseline.yml), so a variable added here reaches
    both. Values are plain (str, int, list) so that they travel as JSON. The Debian suite of
    the apt sources is the host's own (a fact, not the spec's), added where it is rendered.
    """
    return {
        APT_SOURCES: {
            "mirror": spec.apt_mirror,
            "security_mirror": spec.apt_security_mirror,
            "components": list(spec.apt_components),
        },
        TIMESYNCD_CONF: {"servers": list(spec.ntp_servers)},
        NODE_EXPORTER_DEFAULTS: {
            "listen": f"{spec.node_exporter_address}:{spec.node_exporter_port}",
            "textfile_directory": NODE_EXPORTER_TEXTFILES,
        },
    }


@deploy("Baseline")
def baseline(spec: HostSpec) -> None:
    """
    Bring a host to gpufleet's baseline.

    .. code:: python

        baseline(host_spec())
    """
    # Every deploy starts with the baseline so each can run alone; run together
    # (pyinfra INVENTORY deploys/a.py deploys/b.py) it is planned once per host.
    planned = _PLANNED.setdefault(ctx_state.get(), set())
    if host.name in planned:
        return
    planned.add(host.name)
    if spec.os == "macos":
        macos_baseline(spec)
        return

    distribution = host.get_fact(LinuxDistribution)
    name = distribution.get("name") or "unknown"
    if name not in SUPPORTED_DISTRIBUTIONS:
        raise DeployError(
            f"{host.name}: the baseline supports {', '.join(SUPPORTED_DISTRIBUTIONS)}, "
            f"this host runs {name}"
        )
    in_container = host.get_fact(ContainerVirtualization)
    variables = template_variables(spec)

    # 0. Another apt (unattended-upgrades on a freshly booted host, an earlier run still
    # finishing) holds dpkg's lock: every apt-get of this run waits for it, a bounded time,
    # printing who holds it, instead of failing at once.
    files.put(
        name=f"apt waits up to {APT_LOCK_WAIT_S} s for dpkg's lock",
        src=StringIO(APT_LOCK_WAIT),
        dest="/etc/apt/apt.conf.d/90gpufleet-lock-wait",
        mode="644",
    )

    # A run killed while dpkg was unpacking leaves it "interrupted": every later apt-get
    # stops until dpkg finishes its work. The dpkg of the killed run may still be going:
    # wait for its lock (dpkg itself does not), then finish whatever is left.
    if host.get_fact(Command, command=f"ls -A {DPKG_UPDATES} 2>/dev/null | head -n 1"):
        server.shell(
            name="Finish the dpkg run that was interrupted",
            commands=[
                f"for _ in $(seq {APT_LOCK_WAIT_S // 2}); do "
                "lslocks -n -u -o PATH | grep -q '^/var/lib/dpkg/lock' || break; "
                "echo 'waiting for the dpkg that holds its lock' >&2; sleep 2; done",
                f'if [ -n "$(ls -A {DPKG_UPDATES})" ]; then '
                "DEBIAN_FRONTEND=noninteractive dpkg --configure -a; fi",
            ],
        )

    # 1. apt sources: one deb822 file naming the mirror, updates and security suites.
    if name == "Debian":
        codename = distribution["release_meta"].get("VERSION_CODENAME", "bookworm")
        sources = files.template(
            name="Write apt sources (deb822)",
            src=template(APT_SOURCES),
            dest="/etc/apt/sources.list.d/debian.sources",
            mode="644",
            suite=codename,
            **variables[APT_SOURCES],
        )
        old_list = files.file(
            name="Remove the one-line sources.list the deb822 file replaces",
            path="/etc/apt/sources.list",
            present=False,
        )
        # A Proxmox VE host is Debian with Proxmox's repository beside it (where
        # sources.list may have named it).
        pve = proxmox_repository(spec, codename) if spec.os == "proxmox" else []
        apt.update(
            name="Refresh apt lists after a sources change",
            _if=any_changed(sources, old_list, *pve),
        )
    else:
        host.noop(f"apt sources on {name} are left as the distribution set them")
    apt.update(name="Refresh stale apt lists", cache_time=spec.apt_cache_hours * 3600)

    # 2. Packages.
    apt.packages(
        name="Install baseline packages",
        packages=[*BASELINE_PACKAGES, *firewall_packages(spec)],
        no_recommends=True,
    )

    # 3. The service user gpufleet's services run as. Its home is root's (it is also where
    # gpufleet keeps its records when the user is called gpufleet): a service that writes
    # has a state folder of its own, and root never writes where a service can.
    home = f"/var/lib/{spec.service_user}"
    accounts.system_user(
        name=f"Service user {spec.service_user}",
        user=spec.service_user,
        home=home,
        ensure_home=False,
    )
    for folder in dict.fromkeys([HOST_STATE, home]):
        files.directory(
            name=f"{folder} (root's)", path=folder, user="root", group="root", mode="755"
        )

    # 4. Time sync.
    timesync = files.template(
        name="Configure systemd-timesyncd",
        src=template(TIMESYNCD_CONF),
        dest="/etc/systemd/timesyncd.conf.d/gpufleet.conf",
        mode="644",
        **variables[TIMESYNCD_CONF],
    )
    if in_container:
        # timesyncd refuses to run in a container (ConditionVirtualization=!container);
        # the container host keeps the clock.
        systemd.service(
            name="Enable systemd-timesyncd", service="systemd-timesyncd", running=None, enabled=True
        )
        host.noop(f"time sync runs on the {in_container} host, not in this container")
    else:
        run_service("systemd-timesyncd", timesync)

    # 5. The allow-list of gpufleet's ports, before any service starts listening behind it.
    firewall(spec, fleet_specs())

    # 6. Node exporter, listening where its clients are.
    exporter = files.template(
        name="Configure node exporter",
        src=template(NODE_EXPORTER_DEFAULTS),
        dest="/etc/default/prometheus-node-exporter",
        mode="644",
        **variables[NODE_EXPORTER_DEFAULTS],
    )
    run_service("prometheus-node-exporter", exporter)
