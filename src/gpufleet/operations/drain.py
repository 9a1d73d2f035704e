"""Take a host's inference servers out of the router's rotation, and put them back.

A drained port resets every new connection from another host (loopback is untouched: the
host's own health waits and warm-ups still reach its servers). The router meets a reset as
it meets a stopped server, before any byte of an answer, and retries the request on the
model's other hosts or its fallbacks; the requests already on the host finish. The drain
waits for them: until no other host holds a connection to the ports (llama-server closes a
kept-alive connection after a few requests, so the router's pooled connections move away
too), or until the grace period ends.

The drain is an nftables table of its own (``inet gpufleet-drain``): the allow-list's
reload replaces only its own table, so a drain holds through a redeploy, and works on hosts
whose firewall gpufleet does not manage.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation
from pyinfra.operations import server

from gpufleet.facts.system import DRAIN_TABLE, DrainedPorts

DRAIN_PRIORITY = -10
"""Before the allow-list's chain (priority 0): a reset here is final."""


def ruleset(ports: list[int]) -> str:
    listed = ", ".join(str(int(port)) for port in sorted(set(ports)))
    return (
        f"table inet {DRAIN_TABLE} {{\n"
        "  chain input {\n"
        f"    type filter hook input priority {DRAIN_PRIORITY}; policy accept;\n"
        f'    iifname != "lo" tcp dport {{ {listed} }} ct state new reject with tcp reset\n'
        "  }\n"
        "}\n"
    )


def take_out(ports: list[int]) -> str:
    """Load the drain's table for ``ports`` (in place of one an earlier drain left)."""
    return (
        f"nft delete table inet {DRAIN_TABLE} 2>/dev/null; "
        f"printf %s {shlex.quote(ruleset(ports))} | nft -f -"
    )


def connections_gone(ports: list[int], grace_s: int) -> str:
    """Wait until no other host holds a connection to ``ports``, at most ``grace_s``; then
    say how many were left, and go on."""
    sports = " or ".join(f"sport = :{int(port)}" for port in sorted(set(ports)))
    # Peers other than loopback (IPv4, IPv6 and IPv4-mapped) with a connection to a port.
    count = (
        f"ss -Htn state established {shlex.quote(f'( {sports} )')} | awk '{{print $4}}' | "
        "grep -cvE '^(127\\.|\\[::1\\]|\\[::ffff:127\\.)' || true"
    )
    return (
        f"end=$(($(date +%s) + {int(grace_s)})); "
        f'while left=$({count}); [ "$left" -gt 0 ] && [ "$(date +%s)" -lt "$end" ]; '
        "do sleep 1; done; "
        f'[ "$left" -eq 0 ] || echo "drain: $left connection(s) still open after {int(grace_s)} s, '
        'going on" >&2'
    )


@operation()
def drained(ports: list[int], grace_s: int = 300):
    """
    Take the host's inference ports out of rotation and wait for the requests on them.

    + ports: the ports the router reaches the host's inference servers on
    + grace_s: the longest wait for the requests in flight

    .. code:: python

        drain.drained(ports=[8080], grace_s=300)
    """
    if not ports:
        host.noop("no inference server here: nothing to drain")
        return
    held = host.get_fact(DrainedPorts)
    if held == sorted(set(ports)):
        host.noop(f"ports {', '.join(map(str, held))} drained already (an earlier run stopped)")
    else:
        yield take_out(ports)
    yield connections_gone(ports, grace_s)


@operation()
def returned():
    """
    Put the host's inference ports back into rotation (remove the drain).

    .. code:: python

        drain.returned()
    """
    held = host.get_fact(DrainedPorts)
    if not held:
        host.noop("in rotation")
        return
    yield f"nft delete table inet {DRAIN_TABLE}"


def answers_again(service: str, url: str, timeout_s: int) -> str:
    """After a reboot: wait until ``service`` (where it is enabled) answers ``url`` with 200,
    at most ``timeout_s``; fail naming it otherwise."""
    q = shlex.quote
    late = f"{service} does not answer {url} {int(timeout_s)} s after the reboot"
    return (
        f"systemctl is-enabled --quiet {q(service)} || exit 0; "
        f"end=$(($(date +%s) + {int(timeout_s)})); "
        f"until [ \"$(curl -s -o /dev/null -m 10 -w '%{{http_code}}' {q(url)})\" = 200 ]; do "
        f'[ "$(date +%s)" -lt "$end" ] || {{ echo {q(late)} >&2; exit 1; }}; sleep 2; done'
    )


@operation()
def rebooted(
    ports: list[int],
    health: list[tuple[str, str]],
    grace_s: int = 300,
    reboot_timeout: int = 600,
    answer_timeout: int = 900,
):
    """
    Reboot the host out of the router's rotation: drain its inference ports, reboot, wait
    for it, wait until its servers answer again. Call it with ``_serial=True``: the next
    host goes down only once this one serves again.

    + ports: the ports the router reaches the host's inference servers on
    + health: ``(service, url)`` of each server; those enabled must answer after the reboot
    + grace_s: the longest wait for the requests in flight before the reboot
    + reboot_timeout: the longest wait for the host to come back
    + answer_timeout: the longest wait for each server to answer (a model loading)

    The drain does not outlive the reboot (its table is not saved): the host is in rotation
    again as its servers start, which answer the router with 503 until their model is
    loaded, which the router retries elsewhere.

    .. code:: python

        drain.rebooted(
            ports=[8080],
            health=[("llama-server", "http://127.0.0.1:8080/health")],
            _serial=True,
        )
    """
    if ports:
        yield take_out(ports)
        yield connections_gone(ports, grace_s)
    yield from server.reboot._inner(reboot_timeout=reboot_timeout)
    for service, url in health:
        yield answers_again(service, url, answer_timeout)
