"""What gpufleet put on a host, recorded there, so that what the inventory drops is removed.

Each role that puts units or files on a host keeps a record of them per kind
(``/var/lib/gpufleet/record/<owner>.<kind>``, one name a line). The next run removes what the
record lists and the inventory no longer wants, then records what it wants. Nothing the
record does not list is touched: a host's own files, or what an older gpufleet put there
before it kept records, stay.
"""

from __future__ import annotations

import os
import re
import shlex
from typing import Literal

from pyinfra import host, logger
from pyinfra.api import operation
from pyinfra.facts.files import FileContents

RECORDS = "/var/lib/gpufleet/record"
UNIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._-]*$")
OLLAMA_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
"""A model name or tag as Ollama lists it (``qwen2.5:14b``, ``hf.co/user/repo:Q4_K_M``)."""
UNITS = "/etc/systemd/system"

Kind = Literal["unit", "file", "ollama-model"]


def record_path(owner: str, kind: Kind) -> str:
    return f"{RECORDS}/{owner}.{kind}s"


def removable(kind: Kind, item: str, within: tuple[str, ...]) -> bool:
    """Whether a recorded name may be removed: a unit name, or a normalised absolute path
    below one of ``within`` (a record is a file on the host, and is read as untrusted)."""
    if kind == "unit":
        return bool(UNIT_NAME.match(item))
    if kind == "ollama-model":
        return bool(OLLAMA_MODEL.match(item)) and ".." not in item
    return (
        item.startswith("/")
        and os.path.normpath(item) == item
        and any(item.startswith(root.rstrip("/") + "/") for root in within)
    )


def removal(kind: Kind, item: str) -> list[str]:
    """The commands that take one recorded unit, file or Ollama model off the host."""
    quoted = shlex.quote(item)
    if kind == "ollama-model":
        # Gone already (removed by hand) is as good as removed.
        return [f"ollama rm {quoted} >/dev/null 2>&1 || ! ollama show {quoted} >/dev/null 2>&1"]
    if kind == "unit":
        unit = shlex.quote(f"{item}.service")
        return [
            f"systemctl disable --now {unit} 2>/dev/null || true",
            f"rm -f {shlex.quote(f'{UNITS}/{item}.service')}",
            "systemctl daemon-reload",
            f"systemctl reset-failed {unit} 2>/dev/null || true",
        ]
    return [f"rm -f {quoted}"]


@operation()
def kept(owner: str, kind: Kind, wanted: list[str], within: tuple[str, ...] = ()):
    """
    Remove the units or files gpufleet recorded putting here for ``owner`` that the
    inventory no longer wants; record those it wants.

    + owner: what put them there (``llama.cpp``), the record's name
    + kind: ``unit`` (systemd units, stopped, disabled, their files removed), ``file``, or
      ``ollama-model`` (a model or alias removed from the running Ollama server)
    + wanted: the units or files this run puts there
    + within: for files, the folders removal is confined to (a recorded path elsewhere is
      left alone, with a warning)

    A host without a record yet (fresh, or converged before records were kept) gets one; no
    removal: gpufleet does not know what it put there. A host without a record that is to
    hold nothing (the owner was never placed there) gets none.

    .. code:: python

        record.kept(owner="llama.cpp", kind="unit", wanted=["llama-server"])
    """
    path = record_path(owner, kind)
    lines = host.get_fact(FileContents, path=path)
    recorded = (
        None
        if lines is None
        else [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    )
    wanted = list(dict.fromkeys(wanted))
    if recorded is None and not wanted:
        host.noop(f"no {owner} {kind}s recorded or wanted here")
        return
    dropped = [item for item in recorded or [] if item not in wanted]
    for item in dropped:
        if not removable(kind, item, within):
            logger.warning(
                f"{host.print_prefix}{path} lists {item!r}, not a {kind} gpufleet removes: "
                "left alone"
            )
            continue
        yield from removal(kind, item)
    if recorded is not None and sorted(recorded) == sorted(wanted):
        host.noop(f"{owner}'s {kind}s as recorded: {', '.join(wanted) or 'none'}")
        return
    # A first line, so that a record of nothing is not an empty file (which pyinfra reads
    # as no file at all).
    content = f"# {kind}s gpufleet put here for {owner}\n" + "".join(f"{i}\n" for i in wanted)
    yield (
        f"mkdir -p {RECORDS} && printf %s {shlex.quote(content)} > {shlex.quote(path + '.part')}"
        f" && mv {shlex.quote(path + '.part')} {shlex.quote(path)}"
    )
