"""Where the repository's shared folders are, for code running under pyinfra or the CLI."""

import os
import shlex
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"
"""The templates ship inside the package, so an installed wheel renders what the clone does
(``templates/`` at the top of the repository points here)."""
DEPLOYS = (
    "deploys/gpu_node.py",
    "deploys/edge.py",
    "deploys/proxmox_host.py",
    "deploys/inference.py",
    "deploys/vault.py",
    "deploys/router.py",
    "deploys/gateway.py",
    "deploys/monitoring.py",
)
"""Every group's deploy, in the order a fleet is brought up (the secret store before the
router and gateway that read it); together they are one host's full stack."""
EVERY_DEPLOY = ("deploys/common.py", *DEPLOYS)
"""The group deploys and the one every host gets on its own (its baseline and Tailscale), as
a fleet's folder names them (thin files running the packaged deploys; see
:mod:`gpufleet.deploys`)."""


def cache_dir() -> Path:
    """The control machine's cache of what gpufleet can make again: the lab's base roots and
    downloads, and which facts each command asked of each host (``GPUFLEET_CACHE_DIR``
    overrides; ``XDG_CACHE_HOME`` is honoured)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpufleet"
    return Path(os.environ.get("GPUFLEET_CACHE_DIR", default))


def packaged_deploy(deploy: str) -> str:
    """The deploy file gpufleet ships for ``deploys/<name>.py``: what a command run from any
    folder plans or runs, whether or not that folder has a ``deploys/``."""
    from gpufleet import deploys

    return str(deploys.path(deploy))


def template(name: str) -> str:
    """Absolute path of ``templates/<name>``, e.g. ``template("apt/debian.sources.j2")``."""
    path = TEMPLATES / name
    if not path.is_file():
        raise FileNotFoundError(f"missing template {path}")
    return str(path)


def render_template(name: str, **variables: object) -> str:
    """``templates/<name>`` rendered with ``variables`` (strict: a missing one is an error)."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    return environment.get_template(name).render(**variables)


HOST_STATE = "/var/lib/gpufleet"
"""gpufleet's own records on a host (checksum stamps, warm-up records, install stamps,
Modelfiles): owned by root, mode 0755, written by root only. It is also the service user's
home, kept root-owned on purpose: a service that writes has a state folder of its own."""


def state_record(path: str, text: str) -> str:
    """Shell that writes ``text`` (shell words, as ``echo`` takes them) to ``path`` in a
    root-owned folder: through a new temporary file renamed over it, so a symbolic link left
    at ``path`` is replaced, never followed."""
    folder, quoted = shlex.quote(path.rsplit("/", 1)[0]), shlex.quote(path)
    return (
        f'staged=$(mktemp -p {folder} .record.XXXXXX) && echo {text} > "$staged"'
        f' && chmod 644 "$staged" && mv -fT "$staged" {quoted}'
    )


def state_folder(path: str) -> str:
    """Shell that makes ``path`` below :data:`HOST_STATE` and fails unless both are real
    folders owned by the user writing (root, in a deploy): ``stat`` without ``-L`` sees a
    symbolic link as one, so nothing is written through a link a service user left there."""
    folders = f"{shlex.quote(HOST_STATE)} {shlex.quote(path)}"
    refused = shlex.quote(f"{HOST_STATE} and {path} must be folders owned by root")
    return (
        f"mkdir -p {shlex.quote(path)} && {{ test \"$(stat -c '%u %F' {folders} 2>/dev/null"
        f' | grep -cx "$(id -u) directory")" = 2 || {{ echo {refused} >&2; false; }}; }}'
    )
