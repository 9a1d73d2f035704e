"""The fleet's model cache: which files it keeps, where each host fetches them from. Pure
logic, no I/O.

One host of the ``model_cache`` group fetches every GGUF file the fleet's llama.cpp
placements download (an http(s) ``source`` with its ``sha256``) from its origin once, checks
it, and keeps it named by its sha256; NGINX serves that folder. Every other host asks the
cache first and its origin only when the cache does not answer, and checks the sha256 of
what arrives either way, so a cache that serves a wrong file is never trusted::

    >>> cache_url(specs["lab-gpu-1"], specs, "a5fd3b62...")
    'http://10.200.0.12:8090/gguf/a5fd3b62...'

Ollama's models go the same way: the cache keeps an Ollama model store of every model the
fleet's Linux Ollama hosts pull (from Ollama's registry once, each blob checked against its
sha256 digest), NGINX serves it, and each of those hosts copies a model's manifest and blobs
into its own store from there, checking every blob again, before ``ollama pull`` would fetch
it from the internet::

    >>> ollama_cache_source(specs["lab-gpu-1"], specs)
    'store=http://10.200.0.12:8090/ollama'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gpufleet.models import HostSpec

CACHE_PATH = "/gguf/"
"""Where the cache serves its files: ``/gguf/<sha256>``."""
OLLAMA_PATH = "/ollama/"
"""Where the cache serves its Ollama store: ``/ollama/manifests/...``, ``/ollama/blobs/...``."""


@dataclass(frozen=True)
class CachedFile:
    """One file the cache keeps: its checksum, its origin, and the hosts that fetch it."""

    sha256: str
    origin: str
    hosts: tuple[str, ...]


def cache_host(specs: Mapping[str, HostSpec]) -> HostSpec | None:
    """The fleet's model cache host (the first of the ``model_cache`` group), if any."""
    return next((s for s in specs.values() if "model_cache" in s.groups), None)


def downloaded(spec: HostSpec) -> list[tuple[str, str]]:
    """(sha256, origin URL) of each GGUF file the host's llama.cpp placements download."""
    return [
        (placement.sha256, placement.source)
        for placement in spec.models
        if placement.engine == "llama.cpp"
        and placement.sha256
        and placement.source
        and placement.source.startswith(("http://", "https://"))
    ]


def cached_files(specs: Mapping[str, HostSpec]) -> list[CachedFile]:
    """Every file the cache keeps, in inventory order: one per sha256, from the origin its
    first placement names."""
    found: dict[str, tuple[str, list[str]]] = {}
    for spec in specs.values():
        for sha256, origin in downloaded(spec):
            found.setdefault(sha256, (origin, []))[1].append(spec.name)
    return [CachedFile(sha, origin, tuple(hosts)) for sha, (origin, hosts) in found.items()]


def other_registry(tag: str) -> bool:
    """The tag names a registry of its own (``hf.co/org/repo:Q4_K_M``): its first part,
    before a ``/``, is a host name."""
    first, slash, _ = tag.partition("/")
    return bool(slash) and "." in first


def pulled_models(spec: HostSpec) -> list[str]:
    """The Ollama models a Linux host's Ollama placements pull from Ollama's registry (not
    ``hf.co/...`` and other registries', which the cache does not keep), in inventory order."""
    if spec.os == "macos":
        return []
    tags = [
        placement.model
        for placement in spec.models
        if placement.engine == "ollama" and not other_registry(placement.model)
    ]
    return list(dict.fromkeys(tags))


@dataclass(frozen=True)
class CachedModel:
    """One Ollama model the cache keeps, and the hosts that pull it."""

    tag: str
    hosts: tuple[str, ...]


def cached_models(specs: Mapping[str, HostSpec]) -> list[CachedModel]:
    """Every Ollama model the cache keeps, in inventory order."""
    found: dict[str, list[str]] = {}
    for spec in specs.values():
        for tag in pulled_models(spec):
            found.setdefault(tag, []).append(spec.name)
    return [CachedModel(tag, tuple(hosts)) for tag, hosts in found.items()]


def cache_clients(specs: Mapping[str, HostSpec]) -> frozenset[str]:
    """The hosts that fetch from the cache: every host that downloads a GGUF file or pulls
    an Ollama model; with an offline bundle, every Linux host (engines and wheels come from
    the cache too)."""
    cache = cache_host(specs)
    bundled = cache is not None and cache.model_cache.bundle is not None
    return frozenset(
        spec.name
        for spec in specs.values()
        if downloaded(spec) or pulled_models(spec) or (bundled and spec.os != "macos")
    )


def ollama_cache_source(spec: HostSpec, specs: Mapping[str, HostSpec]) -> str | None:
    """Where ``spec`` copies Ollama models from, as :mod:`gpufleet.ollama_fetch` takes a
    source: the cache's store over HTTP (loopback on the cache host itself); None where the
    fleet has no cache."""
    from gpufleet.routing import service_address

    cache = cache_host(specs)
    if cache is None:
        return None
    address = "127.0.0.1" if cache.name == spec.name else service_address(cache)
    return f"store=http://{address}:{cache.model_cache.port}{OLLAMA_PATH.rstrip('/')}"


def cache_url(spec: HostSpec, specs: Mapping[str, HostSpec], sha256: str) -> str | None:
    """Where ``spec`` fetches the file with ``sha256`` from the cache: the cache's address
    (loopback on the cache host itself, which its own allow-list does not name); None where
    the fleet has no cache."""
    from gpufleet.routing import service_address

    cache = cache_host(specs)
    if cache is None:
        return None
    address = "127.0.0.1" if cache.name == spec.name else service_address(cache)
    return f"http://{address}:{cache.model_cache.port}{CACHE_PATH}{sha256}"
