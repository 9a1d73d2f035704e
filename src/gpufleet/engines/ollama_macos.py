"""Ollama on macOS: Homebrew's ollama run by launchd as a LaunchDaemon; the same settings,
environment and per-model parameters as on Linux (``ollama`` in the host data)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpufleet.engines.ollama import Ollama

if TYPE_CHECKING:
    from gpufleet.models import HostSpec

LAUNCHD_LABEL = "com.gpufleet.ollama"


class OllamaMacOS(Ollama):
    service = LAUNCHD_LABEL
    role = "gpufleet.roles.macos"
    operating_systems = ("macos",)

    def runs_on(self, spec: HostSpec) -> bool:
        return spec.os == "macos" and bool(self.placements(spec))

    def max_loaded(self, spec: HostSpec) -> int:
        # Metal is one GPU to Ollama: three models at once by default.
        return spec.ollama.max_loaded_models or 3


OLLAMA_MACOS = OllamaMacOS()
