"""Hash-locked pip requirements gpufleet installs from: every package pinned with the sha256
of each of its files on PyPI, so a venv gets exactly what was resolved when the lock was made,
from PyPI or a mirror alike (``pip install --require-hashes``).

Each lock is universal: one file for Python 3.11 and later on amd64 and arm64 (markers pick
what a host needs). Made with uv:

    uv pip compile --universal --python-version 3.11 --generate-hashes \\
        -o litellm-<version>.txt litellm-<version>.in

where ``litellm-<version>.in`` holds ``litellm[proxy]==<version>`` and
:data:`PROMETHEUS_CLIENT`.
"""

from __future__ import annotations

from pathlib import Path

LOCKS = Path(__file__).resolve().parent
PROMETHEUS_CLIENT = "prometheus-client==0.26.0"
"""What LiteLLM's /metrics needs and its proxy extra does not bring."""


def litellm_requirements(version: str) -> list[str]:
    """What the router's venv holds: LiteLLM's proxy at ``version`` and the metrics client."""
    return [f"litellm[proxy]=={version}", PROMETHEUS_CLIENT]


def shipped_litellm_lock(version: str) -> Path | None:
    """The lock gpufleet ships for ``litellm[proxy]==version``, or None."""
    path = LOCKS / f"litellm-{version}.txt"
    return path if path.is_file() else None


def how_to_lock_litellm(version: str) -> str:
    """The commands that make a lock for ``version``, for a message that refuses one."""
    requirements = "\\n".join(litellm_requirements(version))
    return (
        f"printf '{requirements}\\n' > litellm-{version}.in && uv pip compile --universal "
        f"--python-version 3.11 --generate-hashes -o litellm-{version}.txt litellm-{version}.in"
    )


def shipped_litellm_versions() -> list[str]:
    """The LiteLLM versions gpufleet ships a lock for."""
    return sorted(p.stem.removeprefix("litellm-") for p in LOCKS.glob("litellm-*.txt"))
