"""Where the repository's shared folders are, for code running under pyinfra or the CLI."""

from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
TEMPLATES = REPOSITORY / "templates"


def template(name: str) -> str:
    """Absolute path of ``templates/<name>``, e.g. ``template("apt/debian.sources.j2")``."""
    path = TEMPLATES / name
    if not path.is_file():
        raise FileNotFoundError(f"missing template {path}")
    return str(path)
