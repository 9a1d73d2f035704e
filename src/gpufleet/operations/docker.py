"""Operations on Docker's configuration."""

from __future__ import annotations

import shlex
from io import StringIO
from typing import Any

from pyinfra import host
from pyinfra.api import OperationError, operation
from pyinfra.facts.files import FileContents
from pyinfra.operations import files

from gpufleet.configs import ConfigError, merge_daemon_json, render_daemon_json

DAEMON_JSON = "/etc/docker/daemon.json"


@operation()
def daemon_json(settings: dict[str, Any], path: str = DAEMON_JSON):
    """
    Merge ``settings`` into Docker's daemon.json, keeping every key the user set.

    + settings: keys gpufleet sets; nested objects (``runtimes``) merge key by key
    + path: the file to edit

    The file is written only when the merged settings differ from what is there, checked by
    ``dockerd --validate`` first where Docker has it (23.0 and newer).

    .. code:: python

        docker.daemon_json(settings={"runtimes": NVIDIA_RUNTIME})
    """
    lines = host.get_fact(FileContents, path=path)
    current = "\n".join(lines) if lines is not None else None
    try:
        wanted = merge_daemon_json(current, settings)
    except ConfigError as error:
        raise OperationError(f"{host.name}: {path} {error}") from None
    if current is not None and merge_daemon_json(current, {}) == wanted:
        host.noop(f"{path} already has gpufleet's settings")
        return
    staged = f"{path}.gpufleet-new"
    yield from files.put._inner(src=StringIO(render_daemon_json(wanted)), dest=staged, mode="644")
    yield (
        f"if dockerd --help 2>&1 | grep -q -- --validate; then "
        f"dockerd --validate --config-file={shlex.quote(staged)}; fi"
    )
    yield f"mv {shlex.quote(staged)} {shlex.quote(path)}"
