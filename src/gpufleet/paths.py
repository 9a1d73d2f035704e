"""Where the repository's shared folders are, for code running under pyinfra or the CLI."""

from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
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
"""The group deploys and the one every host gets on its own (its baseline and Tailscale)."""


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
