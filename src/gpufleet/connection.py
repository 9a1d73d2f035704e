"""SSH connections without Nagle's delay.

Paramiko leaves Nagle's algorithm on for the socket it opens. Every command pyinfra runs is a
short request answered by a short reply, so each one waits out the peer's delayed ACK: about
40 ms per fact or command on Linux, most of a converged run's time. Setting TCP_NODELAY on the
connection, as OpenSSH does for interactive sessions, brings a command down to a few ms.
"""

from __future__ import annotations

import functools
import socket
from typing import Any

_PATCHED = "_gpufleet_tcp_nodelay"


def set_tcp_nodelay(transport: Any) -> bool:
    """TCP_NODELAY on a paramiko transport's socket; False where it is not a TCP socket
    (a ProxyCommand, for instance)."""
    sock = getattr(transport, "sock", None)
    if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return True


def use_tcp_nodelay() -> None:
    """Make pyinfra's SSH connector set TCP_NODELAY on every connection it opens (once)."""
    # Imported here, when pyinfra loads an inventory: importing the connector (and paramiko)
    # with gpufleet would load ssl before pyinfra's CLI patches it for gevent.
    from pyinfra.connectors.ssh import SSHConnector

    if getattr(SSHConnector, _PATCHED, False):
        return
    connect = SSHConnector._connect

    @functools.wraps(connect)
    def connect_without_nagle(self: Any) -> None:
        connect(self)
        client = getattr(self, "client", None)
        if client is not None:
            set_tcp_nodelay(client.get_transport())

    SSHConnector._connect = connect_without_nagle  # type: ignore[method-assign]
    setattr(SSHConnector, _PATCHED, True)
