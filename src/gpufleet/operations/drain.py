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
        yield (
            f"nft delete table inet {DRAIN_TABLE} 2>/dev/null; "
            f"printf %s {shlex.quote(ruleset(ports))} | nft -f -"
        )
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
