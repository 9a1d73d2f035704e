"""The pyinfra deploy ``gpufleet drift --push`` runs on the inventory's monitoring hosts: the
drift check's textfile put where their node exporter reads it. Never import this module.

The file is uploaded beside its place under a name the textfile collector skips (it reads
``*.prom`` only) and then renamed over it, so node exporter never reads half a file.
"""

import os
import shlex

from pyinfra.operations import files, server

from gpufleet.drift import PUSHED_TEXTFILE_ENV, TEXTFILE_NAME
from gpufleet.roles.baseline import NODE_EXPORTER_TEXTFILES

textfile = f"{NODE_EXPORTER_TEXTFILES}/{TEXTFILE_NAME}"
uploaded = f"{NODE_EXPORTER_TEXTFILES}/.{TEXTFILE_NAME}.part"

files.put(
    name="gpufleet drift | Upload the drift check's result",
    src=os.environ[PUSHED_TEXTFILE_ENV],
    dest=uploaded,
    mode="644",
)
server.shell(
    name="gpufleet drift | Put it where node exporter reads it",
    commands=[f"mv -f {shlex.quote(uploaded)} {shlex.quote(textfile)}"],
)
