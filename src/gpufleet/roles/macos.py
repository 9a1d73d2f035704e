"""macOS hosts (Apple silicon): Homebrew's Ollama and node_exporter, each run by launchd as a
LaunchDaemon so they serve from boot, without anyone logged in.

Runbook it replaces: install the Ollama app, ``launchctl setenv OLLAMA_HOST 0.0.0.0`` (lost on
reboot), open the app after every restart, ``ollama pull`` by hand. Here both programs come
from Homebrew as the host's admin account, their settings live in the daemon's plist, the
plist is checked by ``plutil -lint`` before launchd reads it, and the models are pulled and
aliased as on Linux.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import File
from pyinfra.facts.launchd import LaunchdStatus
from pyinfra.facts.server import Os, User
from pyinfra.operations import brew, files, server

from gpufleet.engines.ollama_macos import OLLAMA_MACOS
from gpufleet.models import HostSpec
from gpufleet.operations import ollama
from gpufleet.paths import template
from gpufleet.roles.ollama import models_and_aliases
from gpufleet.serving import placement_runs

BREW_PREFIX = "/opt/homebrew"
"""Homebrew's prefix on Apple silicon."""
PATH = f"{BREW_PREFIX}/bin:/usr/bin:/bin:/usr/sbin:/sbin"
"""A non-interactive SSH session on macOS has no Homebrew on its PATH."""
DAEMONS = "/Library/LaunchDaemons"


def macos_user(spec: HostSpec) -> str:
    """The account Homebrew belongs to, and that the daemons run as: ``macos_user``, else
    the account gpufleet logs in as."""
    return spec.macos_user or host.get_fact(User)


def require_macos_with_homebrew(spec: HostSpec) -> None:
    """Stop before any change unless the host is macOS with Homebrew in its usual place."""
    system = host.get_fact(Os)
    if system != "Darwin":
        raise DeployError(f"{spec.name}: the inventory says os=macos, the host runs {system}")
    if not host.get_fact(File, path=f"{BREW_PREFIX}/bin/brew"):
        raise DeployError(
            f"{spec.name}: no Homebrew at {BREW_PREFIX}; install it (https://brew.sh) as "
            f"{macos_user(spec)}, then run again"
        )


def launch_daemon(
    label: str,
    arguments: list[str],
    environment: dict[str, str],
    user: str,
    *changed: OperationMeta,
) -> tuple[OperationMeta, OperationMeta]:
    """
    A LaunchDaemon ``label`` running ``arguments`` as ``user``: its plist written, checked by
    ``plutil -lint`` and (re)loaded when it or any of ``changed`` changed, or when launchd does
    not have the job. A plist that fails the check is never loaded: the running job stays.
    Returns the plist operation and the (re)load.
    """
    plist = f"{DAEMONS}/{label}.plist"
    written = files.template(
        name=f"{label} launchd plist",
        src=template("launchd/daemon.plist.j2"),
        dest=plist,
        mode="644",
        user="root",
        group="wheel",
        label=label,
        arguments=arguments,
        environment=environment,
        run_as=user,
        _sudo=True,
    )
    loaded = label in host.get_fact(LaunchdStatus, _sudo=True)
    reloaded = server.shell(
        name=f"Load {label} (plist checked first)",
        commands=[
            f"plutil -lint {plist}",
            f"launchctl bootout system/{label} 2>/dev/null || true",
            f"launchctl bootstrap system {plist}",
        ],
        _sudo=True,
        _if=lambda: not loaded or written.did_change() or any(op.did_change() for op in changed),
    )
    return written, reloaded


def macos_baseline(spec: HostSpec) -> None:
    """The baseline of a macOS host, inside the ``Baseline`` deploy: Homebrew's
    node_exporter, run by launchd."""
    require_macos_with_homebrew(spec)
    user = macos_user(spec)
    installed = brew.packages(
        name="node_exporter (Homebrew)", packages=["node_exporter"], _env={"PATH": PATH}
    )
    launch_daemon(
        "com.gpufleet.node-exporter",
        [
            f"{BREW_PREFIX}/bin/node_exporter",
            f"--web.listen-address={spec.node_exporter_address}:{spec.node_exporter_port}",
        ],
        {"PATH": PATH},
        user,
        installed,
    )


@deploy("Ollama (macOS)")
def serve(spec: HostSpec) -> None:
    """
    Homebrew's Ollama as a LaunchDaemon with the host's Ollama settings in its plist, then
    the placed models pulled and aliased as on Linux.

    .. code:: python

        serve(host_spec())
    """
    runs = placement_runs(spec, OLLAMA_MACOS)
    if not runs:
        host.noop("no Ollama model placed on this host")
        return
    user = macos_user(spec)
    installed = brew.packages(name="Ollama (Homebrew)", packages=["ollama"], _env={"PATH": PATH})
    environment = {"HOME": f"/Users/{user}", "PATH": PATH, **dict(runs[0].rendered.environment)}
    _, started = launch_daemon(
        OLLAMA_MACOS.service,
        [f"{BREW_PREFIX}/bin/ollama", "serve"],
        environment,
        user,
        installed,
    )
    server.shell(
        name="Ollama answers",
        commands=[
            "for _ in $(seq 60); do "
            f"curl -fsS {OLLAMA_MACOS.local_url(spec)}{OLLAMA_MACOS.health_path} >/dev/null "
            "&& exit 0; sleep 1; done; exit 1"
        ],
        _if=started.did_change,
    )
    client = {"PATH": PATH, "OLLAMA_HOST": f"127.0.0.1:{OLLAMA_MACOS.port(spec)}"}
    pulled, aliases = models_and_aliases(runs)
    ollama.models(
        name="Pull and alias Ollama models",
        pulled=pulled,
        aliases=aliases,
        modelfiles=f"/Users/{user}/.gpufleet/ollama",
        env=client,
        _env=client,
    )
