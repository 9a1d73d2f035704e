"""The allow-list of gpufleet's ports on a Linux host, in nftables: each port a gpufleet
service listens on beyond loopback lets in the fleet hosts that use it and the inventory's
admin sources, and resets every other connection (see :mod:`gpufleet.exposure`).

Runbook it replaces: for each service, look up who talks to it; write ``nft`` rules for
those addresses; test them with ``nft -c``; load them; make them load at boot. Only gpufleet's
own table is touched: sshd, Proxmox's firewall and the host's other rules stay as they are.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from pyinfra import host
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from gpufleet.exposure import Exposure, exposures
from gpufleet.models import HostSpec
from gpufleet.operations import config
from gpufleet.paths import render_template, template

RULES = "/etc/gpufleet/firewall.nft"
UNIT = "gpufleet-firewall"
PACKAGES = ["nftables"]


def packages(spec: HostSpec) -> list[str]:
    """What the allow-list needs installed on the host: the baseline installs it with its
    own packages, one apt-get for all (a second would run dpkg's triggers again)."""
    return PACKAGES if spec.firewall.enabled else []


@dataclass(frozen=True)
class Rule:
    service: str
    ports: str
    """One port, or an nftables set of them: ``{ 8000, 8001, 10002-10101 }``."""
    sources: str
    """The addresses let in, comma-separated; empty: none."""
    who: str
    """Who they are, for the comment above the rule."""


def _rule(exposure: Exposure) -> Rule:
    ports = [str(p) for p in exposure.ports]
    if exposure.port_range:
        ports.append(f"{exposure.port_range[0]}-{exposure.port_range[1]}")
    return Rule(
        exposure.service,
        ports[0] if len(ports) == 1 else "{ " + ", ".join(ports) + " }",
        ", ".join(exposure.sources),
        "used by " + (", ".join(exposure.clients) or "no other fleet host"),
    )


def ruleset(spec: HostSpec, specs: dict[str, HostSpec]) -> str:
    """The host's ``gpufleet.nft``: one accept and one reset per guarded service."""
    guarded = [e for e in exposures(spec, specs) if e.guarded]
    return render_template(
        "firewall/gpufleet.nft.j2",
        input_rules=[_rule(e) for e in guarded if not e.published],
        forward_rules=[_rule(e) for e in guarded if e.published],
    )


def firewall(spec: HostSpec, specs: dict[str, HostSpec]) -> None:
    """
    Keep the host's nftables allow-list of gpufleet's ports (a step of the baseline, so
    every deploy has it in place before it starts a service).

    .. code:: python

        firewall(host_spec(), fleet_specs())
    """
    if not spec.firewall.enabled:
        host.noop("firewall.enabled is false: no gpufleet rules on this host")
        return
    apt.packages(name="nftables", packages=PACKAGES, no_recommends=True)
    files.directory(name="gpufleet's config folder", path="/etc/gpufleet", mode="755")
    rules = config.config_file(
        name="Allow-list of gpufleet's ports (checked by nft -c)",
        dest=RULES,
        mode="644",
        render=lambda: ruleset(spec, specs),
        validate=f"nft -c -f {RULES}",
    )
    unit = files.template(
        name="Allow-list unit (loads it at boot)",
        src=template("firewall/gpufleet-firewall.service.j2"),
        dest=f"/etc/systemd/system/{UNIT}.service",
        mode="644",
        rules=RULES,
    )
    systemd.daemon_reload(name="Reload systemd units", _if=unit.did_change)
    loaded = systemd.service(name="Load the allow-list", service=UNIT, running=True)
    systemd.service(name="Load the allow-list at boot", service=UNIT, enabled=True)
    # A start has just loaded the new rules: reloading right after it only loads them
    # again, and under load that second `nft -f` was seen to fail the run. The checked rules
    # are loaded by the deploy itself, the unit being for boot: systemd's reload of this
    # exited oneshot unit makes its cgroup again, which the lab saw fail now and then
    # (status 219/CGROUP) while a retry a minute later worked.
    server.shell(
        name="Load the changed allow-list",
        commands=[f"nft -f {shlex.quote(RULES)}"],
        _if=[any_changed(rules, unit), lambda: not loaded.did_change()],
    )
