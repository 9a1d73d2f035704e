"""What a Jetson is: its Jetson Linux (L4T) release from ``/etc/nv_tegra_release``."""

from __future__ import annotations

import re
from typing import TypedDict

from pyinfra.api import FactBase

_RELEASE = re.compile(r"^# R(\d+) \(release\), REVISION: ([\d.]+)(?:.*?BOARD: ([^,]+))?")
JETPACK = {
    "36.4.4": "6.2.1",
    "36.4.3": "6.2",
    "36.4.0": "6.1",
    "36.3.0": "6.0",
    "35.6.0": "5.1.4",
    "35.5.0": "5.1.3",
}
"""JetPack releases by the L4T release they ship (NVIDIA's JetPack archive)."""


class JetsonLinuxRelease(TypedDict):
    l4t: str
    """e.g. ``36.4.3``."""
    major: int
    board: str
    jetpack: str | None
    """The JetPack release that ships this L4T, when known."""


def parse_tegra_release(lines: list[str]) -> JetsonLinuxRelease | None:
    """``/etc/nv_tegra_release`` -> the L4T release, or None when it is not Jetson Linux."""
    found = _RELEASE.match(lines[0].strip()) if lines else None
    if not found:
        return None
    major, revision, board = found.groups()
    l4t = f"{major}.{revision}" if revision.count(".") else f"{major}.{revision}.0"
    return JetsonLinuxRelease(
        l4t=l4t, major=int(major), board=(board or "").strip(), jetpack=JETPACK.get(l4t)
    )


class JetsonRelease(FactBase[JetsonLinuxRelease | None]):
    """
    The host's Jetson Linux release, or None on anything that is not a Jetson.

    .. code:: python

        {"l4t": "36.4.3", "major": 36, "board": "generic", "jetpack": "6.2"}
    """

    def command(self) -> str:
        return "cat /etc/nv_tegra_release 2>/dev/null || true"

    def process(self, output: list[str]) -> JetsonLinuxRelease | None:
        return parse_tegra_release(output)
