"""Ollama on Linux: install it, configure it through a systemd drop-in, pull the placed models
and create their aliases from Modelfiles holding what the planner decided for each (context,
layers on the GPU), then warm each model up; remove the models and aliases an earlier run
made that the inventory no longer names.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server

from gpufleet import sandbox
from gpufleet.engines import memory_size, served_name
from gpufleet.engines.ollama import MODELFILES, OLLAMA, modelfile, release_sha256
from gpufleet.inventory import fleet_specs
from gpufleet.model_cache import ollama_cache_source, pulled_models
from gpufleet.models import HostSpec
from gpufleet.operations import accounts, downloads, ollama, record
from gpufleet.paths import template
from gpufleet.roles.steps import (
    configured_not_started,
    ollama_tool,
    run_unit,
    warm_up,
    warm_up_tool,
)
from gpufleet.serving import PlacementRun, placement_runs

DROP_IN = "/etc/systemd/system/ollama.service.d/override.conf"
STORE = "/usr/share/ollama/.ollama/models"
"""Ollama's model store (its default ``OLLAMA_MODELS`` for the ollama user)."""
HOME = "/usr/share/ollama"
"""The ollama user's home, as Ollama's own installer makes it: ~/.ollama holds its key and
models."""


def models_and_aliases(runs: tuple[PlacementRun, ...]) -> tuple[list[str], dict[str, str]]:
    """The tags to pull and each alias's Modelfile."""
    pulled = list(dict.fromkeys(run.placement.model for run in runs))
    aliases = {
        run.placement.alias: modelfile(run.placement, run.rendered)
        for run in runs
        if run.placement.alias
    }
    return pulled, aliases


def install_release(spec: HostSpec) -> OperationMeta:
    """Download the pinned release archive for the host's architecture, checked against the
    inventory's sha256, the pinned one of a known release, or the checksum list the release
    publishes, and unpack it into /usr/local (``bin/ollama`` and ``lib/ollama``, as Ollama's
    own installer lays it out). Releases since 0.14 are zstd archives."""
    settings = spec.ollama
    arch = "arm64" if spec.arch == "aarch64" else "amd64"
    src = settings.url.format(version=settings.version, arch=arch)
    zstd = src.endswith(".zst")
    if zstd:
        apt.packages(name="zstd (Ollama's archives are zstd)", packages=["zstd"])
    archive = f"/var/cache/gpufleet/ollama-{settings.version}-{arch}.tar" + (
        ".zst" if zstd else ".gz"
    )
    sha256 = release_sha256(settings, arch)
    download = downloads.verified_download(
        name=f"Download Ollama {settings.version} ({arch})",
        src=src,
        dest=archive,
        sha256=sha256,
        sha256_list=None
        if sha256
        else settings.checksums_url.format(version=settings.version, arch=arch),
    )
    quoted = shlex.quote(archive)
    unpack = (
        f"zstd -dc {quoted} | tar -xf - -C /usr/local"
        if zstd
        else f"tar -xzf {quoted} -C /usr/local"
    )
    return server.shell(
        name=f"Unpack Ollama {settings.version} into /usr/local",
        commands=[unpack],
        _if=download.did_change,
    )


@deploy("Ollama")
def serve(spec: HostSpec) -> None:
    """
    Install Ollama, configure it through a systemd drop-in, pull the placed models that are
    missing and create their aliases.

    .. code:: python

        serve(host_spec())
    """
    runs = placement_runs(spec, OLLAMA)
    if not runs:
        host.noop("no Ollama model placed on this host")
        # The last placement dropped: the models an earlier run pulled go, from the server
        # that still runs (it stays, empty); a host never given one has no record.
        remove_dropped([], [])
        return
    settings = spec.ollama

    accounts.system_user(name="ollama user", user="ollama", home=HOME, create_home=True)
    if settings.install == "release":
        binary = install_release(spec)
        installed = True
    else:
        binary = None
        installed = bool(host.get_fact(File, path=OLLAMA.binary))

    unit = files.template(
        name="Ollama unit",
        src=template("ollama/ollama.service.j2"),
        dest=f"/etc/systemd/system/{OLLAMA.service}.service",
        mode="644",
        binary=OLLAMA.binary,
        sandbox=sandbox.ollama(sandbox.host_gpu(spec), HOME, spec.hardware.nvidia_gpu_count),
    )
    drop_in = files.template(
        name="Ollama settings (drop-in)",
        src=template("ollama/override.conf.j2"),
        dest=DROP_IN,
        mode="644",
        environment=dict(runs[0].rendered.environment),
        memory_max=memory_size(runs[0].decision.memory_max_gb),  # the server's, planned
    )
    # The models, copied from the fleet's model cache where it keeps them (every blob checked
    # against its digest), before Ollama would pull them from the internet; a store filled
    # ahead of an install that is still to come.
    source = ollama_cache_source(spec, fleet_specs())
    if source is not None and pulled_models(spec):
        ollama_tool()
        ollama.stored(
            name="Ollama models from the model cache",
            store=STORE,
            models=pulled_models(spec),
            sources=[source],
            owner="ollama",
            optional=True,
        )
    if not installed:
        configured_not_started(
            OLLAMA.service,
            [unit, drop_in],
            f"no Ollama binary at {OLLAMA.binary} (ollama.install is 'present')",
        )
        return
    warm_up_tool()
    started, restarted = run_unit(OLLAMA.service, unit, drop_in, *([binary] if binary else []))
    pulled, aliases = models_and_aliases(runs)
    # Root's: root writes the Modelfiles and hands them to `ollama create`.
    files.directory(
        name="Modelfiles folder", path=MODELFILES, user="root", group="root", mode="755"
    )
    fetched = ollama.models(
        name="Pull and alias Ollama models", pulled=pulled, aliases=aliases, modelfiles=MODELFILES
    )
    warm_up(
        [(served_name(r.placement), OLLAMA.warm_up_path(r.decision.kind)) for r in runs],
        OLLAMA.local_url(spec),
        OLLAMA.health_path,
        after=[started, restarted, fetched],
    )
    # What an earlier run pulled or created that the inventory dropped, once the models it
    # names are in place; a model pulled by hand was never recorded and stays.
    remove_dropped([*pulled, *aliases], list(aliases))


def remove_dropped(models: list[str], aliases: list[str]) -> None:
    """Absent means removed, for Ollama: the models and aliases an earlier run pulled or
    created and the inventory no longer names, removed from the running server, and the
    aliases' Modelfiles."""
    record.kept(
        name="Remove the Ollama models the inventory dropped",
        owner="ollama",
        kind="ollama-model",
        wanted=models,
    )
    record.kept(
        name="Remove the Modelfiles the inventory dropped",
        owner="ollama",
        kind="file",
        wanted=[f"{MODELFILES}/{alias}.Modelfile" for alias in aliases],
        within=(MODELFILES,),
    )
