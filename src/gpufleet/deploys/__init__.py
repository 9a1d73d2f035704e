"""gpufleet's deploys, shipped in the package so that an installed gpufleet deploys what a
clone does, from any folder.

pyinfra runs a deploy *file* once per host. A fleet's folder (the clone's ``deploys/``, or
the one ``gpufleet init`` writes) holds thin files that run the packaged deploy of the same
name, so ``pyinfra inventory.py deploys/gpu_node.py`` works wherever that folder is::

    from gpufleet.deploys import run

    run("gpu_node")

The modules here are pyinfra deploy files, run by :func:`run` once per host; never import
them.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from types import CodeType

FOLDER = Path(__file__).resolve().parent

NAMES = tuple(sorted(path.stem for path in FOLDER.glob("*.py") if path.stem != "__init__"))
"""Every deploy gpufleet ships (``gpu_node``, ``inference``, ...)."""

_compiled: dict[str, CodeType] = {}


def path(name: str) -> Path:
    """The packaged deploy file ``name`` (``"gpu_node"`` or ``"deploys/gpu_node.py"``)."""
    stem = Path(name).stem
    if stem not in NAMES:
        raise FileNotFoundError(f"gpufleet ships no deploy {stem!r}; its deploys: {NAMES}")
    return FOLDER / f"{stem}.py"


def run(name: str) -> None:
    """Run the packaged deploy ``name`` for the host pyinfra is running a deploy for, as
    pyinfra runs a deploy file: compiled once, executed afresh each time, under its own file
    name (so tracebacks and pyinfra's operation order point into it)."""
    file = path(name)
    key = str(file)
    if key not in _compiled:
        _compiled[key] = compile(file.read_text(encoding="utf-8"), key, "exec")
    # pyinfra's CLI turns bytecode caching off for the whole process (so that it leaves no
    # deploy.pyc in a fleet's folder); gpufleet's own modules, first imported here by a
    # deploy, would then be compiled again on every run of a source checkout.
    no_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = False
    try:
        exec(_compiled[key], {"__file__": key})
    finally:
        sys.dont_write_bytecode = no_bytecode


def include(name: str) -> None:
    """Run the packaged deploy ``name`` inside the one running now (``local.include`` for a
    packaged file), its operations named ``deploys/<name>.py | ...`` as a fleet folder's own
    file would name them, not after wherever the package is installed."""
    from pyinfra import config, host

    saved = config.get_current_state()  # as local.include: the included file's config stays in it
    try:
        with host.deploy(f"deploys/{Path(name).stem}.py", None, None, in_deploy=False):
            run(name)
    finally:
        config.set_current_state(saved)


def thin_file(name: str) -> str:
    """The text of a fleet folder's ``deploys/<name>.py``: the packaged deploy's description,
    and one call that runs it."""
    docstring = ast.get_docstring(ast.parse(path(name).read_text(encoding="utf-8")), clean=False)
    described = (docstring or f"gpufleet's {name} deploy.\n").rstrip("\n")
    return (
        f'"""{described}\n\n'
        f"The steps ship inside gpufleet (gpufleet/deploys/{name}.py): this file runs them, so\n"
        'that pyinfra finds a deploy file here and an upgrade of gpufleet upgrades them.\n"""\n\n'
        "from gpufleet.deploys import run\n\n"
        f'run("{name}")\n'
    )
