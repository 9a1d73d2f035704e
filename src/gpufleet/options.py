"""Command-line options shared by gpufleet's subcommands, in a module of their own: the
commands registered from other modules (status, measure) use them without importing the
command line itself, which imports those modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def limit_option(what: str = "hosts") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--limit PATTERN``, repeatable, with pyinfra's --limit semantics
    (:func:`gpufleet.selection.select_hosts`); the command gets it as ``limit``."""
    return click.option(
        "--limit",
        "limit",
        multiple=True,
        metavar="PATTERN",
        help=f"Only these {what}: a host name, a group name or a glob ('gpu-*'); repeat "
        "--limit for more (their union), as pyinfra's --limit.",
    )
