"""What Tailscale reports about this node: ``tailscale status --json`` and
``tailscale serve status --json``."""

from __future__ import annotations

import json
from typing import Any, TypedDict

from pyinfra.api import FactBase


class TailscaleNodeState(TypedDict):
    backend_state: str
    """``Running`` when logged in and connected; ``NeedsLogin``, ``Stopped`` …"""
    hostname: str
    dns_name: str
    addresses: list[str]
    tags: list[str]


def parse_status(output: list[str]) -> TailscaleNodeState | None:
    """``tailscale status --json`` -> the node's state, or None without a daemon to ask."""
    text = "\n".join(output).strip()
    if not text.startswith("{"):
        return None
    status: dict[str, Any] = json.loads(text)
    me = status.get("Self") or {}
    return TailscaleNodeState(
        backend_state=status.get("BackendState", ""),
        hostname=me.get("HostName", ""),
        dns_name=me.get("DNSName", "").rstrip("."),
        addresses=list(me.get("TailscaleIPs") or []),
        tags=list(me.get("Tags") or []),
    )


class TailscaleStatus(FactBase[TailscaleNodeState | None]):
    """
    The node's Tailscale state, or None when tailscaled is not installed or not answering.

    .. code:: python

        {"backend_state": "Running", "hostname": "pi5l", "dns_name": "pi5l.tailf49db2.ts.net",
         "addresses": ["100.77.119.64", "fd7a:115c:a1e0::1"], "tags": []}
    """

    def command(self) -> str:
        return "tailscale status --json 2>/dev/null || true"

    def requires_command(self) -> str:
        return "tailscale"

    def process(self, output: list[str]) -> TailscaleNodeState | None:
        return parse_status(output)


def served_proxies(output: list[str]) -> set[str]:
    """``tailscale serve status --json`` -> every ``host:port/path -> proxy`` it serves."""
    text = "\n".join(output).strip()
    if not text.startswith("{"):
        return set()
    config: dict[str, Any] = json.loads(text)
    served = set()
    for where, web in (config.get("Web") or {}).items():
        for path, handler in (web.get("Handlers") or {}).items():
            if "Proxy" in handler:
                port = where.rsplit(":", 1)[-1]
                served.add(f"{port}{path} -> {handler['Proxy']}")
    return served


class TailscaleServe(FactBase[set[str]]):
    """
    What ``tailscale serve`` proxies, as ``"<port><path> -> <target>"``.

    .. code:: python

        {"443/ -> http://127.0.0.1:4000"}
    """

    def command(self) -> str:
        return "tailscale serve status --json 2>/dev/null || true"

    def requires_command(self) -> str:
        return "tailscale"

    @staticmethod
    def default() -> set[str]:
        return set()

    def process(self, output: list[str]) -> set[str]:
        return served_proxies(output)
