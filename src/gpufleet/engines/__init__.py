"""The inference engines gpufleet runs, as components; everything else asks this registry.

Each engine is one module (its settings model, ports, service, health and metrics paths,
warm-up request, and the rendering of its command from the planner's plan). Checks,
monitoring, routing, bench, rebuild, verify and the roles iterate :data:`ENGINES` instead of
naming an engine. Adding an engine is its module, its role and its template, and one line
here. Example::

    >>> [engine.name for engine in serving(spec)]
    ['ollama', 'llama.cpp']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpufleet.engines.base import (
    CHAT,
    EMBEDDING,
    Engine,
    EngineSecret,
    Listener,
    PlacementDecision,
    Rendered,
    ScrapeTarget,
    memory_size,
    served_name,
)
from gpufleet.engines.llamacpp import LLAMACPP
from gpufleet.engines.ollama import OLLAMA
from gpufleet.engines.ollama_macos import OLLAMA_MACOS
from gpufleet.engines.triton import TRITON
from gpufleet.engines.vllm import VLLM

if TYPE_CHECKING:
    from gpufleet.models import HostSpec, ModelPlacement

ENGINES: tuple[Engine, ...] = (OLLAMA, OLLAMA_MACOS, LLAMACPP, VLLM, TRITON)
"""Every engine, in the order a host's deploy brings them up."""

PLACEMENT_ENGINES = tuple(dict.fromkeys(e.name for e in ENGINES if e is not TRITON))
"""The names a model placement may give as its ``engine``."""

__all__ = [
    "CHAT",
    "EMBEDDING",
    "ENGINES",
    "PLACEMENT_ENGINES",
    "Engine",
    "EngineSecret",
    "Listener",
    "PlacementDecision",
    "Rendered",
    "ScrapeTarget",
    "engine_for",
    "memory_size",
    "served_name",
    "serving",
]


def engine_for(spec: HostSpec, placement: ModelPlacement) -> Engine:
    """The engine that serves ``placement`` on this host (Ollama's macOS flavour on a Mac)."""
    for engine in ENGINES:
        if engine.name == placement.engine and spec.os in engine.operating_systems:
            return engine
    return next(engine for engine in ENGINES if engine.name == placement.engine)


def serving(spec: HostSpec) -> list[Engine]:
    """The engines this host runs, in bring-up order."""
    return [engine for engine in ENGINES if engine.runs_on(spec)]
