"""What Ollama has: the models ``ollama list`` shows, and those ``ollama ps`` shows loaded."""

from __future__ import annotations

import json
import re
import shlex
from typing import TypedDict

from pyinfra.api import FactBase


def parse_ollama_list(lines: list[str]) -> set[str] | None:
    """Model names from ``ollama list`` (``qwen3:latest``, ``hf.co/x/y:Q4_K_M``), or None when
    Ollama did not answer (no header line)."""
    if not lines or not lines[0].startswith("NAME"):
        return None
    return {line.split()[0] for line in lines[1:] if line.strip()}


def full_name(tag: str) -> str:
    """Ollama's own spelling of a model name: ``nomic-embed-text`` is ``...:latest``."""
    last = tag.rsplit("/", 1)[-1]
    return tag if ":" in last else f"{tag}:latest"


def missing_models(wanted: list[str], listed: set[str]) -> list[str]:
    """The models of ``wanted`` Ollama does not have yet, in the order given."""
    have = {full_name(name) for name in listed}
    return [tag for tag in wanted if full_name(tag) not in have]


class OllamaModels(FactBase[set[str] | None]):
    """
    Models the running Ollama has (``ollama list``), or None when it is not installed or not
    answering.

    .. code:: python

        {"qwen2.5-coder:32b", "nomic-embed-text:latest", "XL-LOC-FRE-qwen2.5-coder-32b:latest"}
    """

    def command(self) -> str:
        return "ollama list 2>/dev/null || true"

    def requires_command(self) -> str:
        return "ollama"

    def process(self, output: list[str]) -> set[str] | None:
        return parse_ollama_list(output)


class LoadedModel(TypedDict):
    name: str
    size: str
    """As ``ollama ps`` prints it (``4.0 GB``): the memory the loaded model takes."""
    gpu_percent: int
    """The share of that memory on the GPU: 100 (``100% GPU``), 0 (``100% CPU``), 52
    (``48%/52% CPU/GPU``)."""
    context: int | None
    """The context it was loaded with; None from Ollama releases without that column."""
    until: str
    """When it unloads (``4 minutes from now``, ``Forever``)."""


_SPLIT = re.compile(r"^(\d+)%/(\d+)% CPU/GPU$")
_WHOLE = re.compile(r"^(\d+)% (CPU|GPU)$")


def gpu_percent(processor: str) -> int | None:
    """``100% GPU`` -> 100, ``100% CPU`` -> 0, ``48%/52% CPU/GPU`` -> 52; None otherwise."""
    split = _SPLIT.match(processor)
    if split:
        return int(split.group(2))
    whole = _WHOLE.match(processor)
    if whole:
        return int(whole.group(1)) if whole.group(2) == "GPU" else 100 - int(whole.group(1))
    return None


def parse_ollama_ps(lines: list[str]) -> list[LoadedModel]:
    """The models ``ollama ps`` lists, read by the header's columns: releases differ in which
    columns there are (CONTEXT since 0.6, RUNNER in newer ones) and in padding (tabs in older
    ones). No header (Ollama absent or not answering) reads as nothing loaded."""
    table = [line.expandtabs() for line in lines if line.strip()]
    if not table or not table[0].startswith("NAME"):
        return []
    header = table[0]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    loaded: list[LoadedModel] = []
    for row in table[1:]:
        cells = {
            name: row[start:end].strip()
            for name, start, end in zip(names, starts, [*starts[1:], None], strict=True)
        }
        share = gpu_percent(cells.get("PROCESSOR", ""))
        if not cells.get("NAME") or share is None:
            continue
        context = cells.get("CONTEXT", "")
        loaded.append(
            LoadedModel(
                name=cells["NAME"],
                size=cells.get("SIZE", ""),
                gpu_percent=share,
                context=int(context) if context.isdigit() else None,
                until=cells.get("UNTIL", ""),
            )
        )
    return loaded


class OllamaLoaded(FactBase[list[LoadedModel]]):
    """
    The models Ollama has loaded now (``ollama ps``) and how much of each sits on the GPU;
    empty when none is loaded, or Ollama is not installed or not answering.

    .. code:: python

        [{"name": "llama4:16x17b", "size": "159 GB", "gpu_percent": 48, "context": 128000,
          "until": "Forever"}]
    """

    default = list

    def command(self, address: str = "127.0.0.1:11434") -> str:
        # Homebrew's bin, where macOS keeps ollama, is not on a non-interactive SSH PATH.
        return (
            'PATH="$PATH:/opt/homebrew/bin:/usr/local/bin"; '
            "command -v ollama >/dev/null 2>&1 || exit 0; "
            f"OLLAMA_HOST={shlex.quote(address)} ollama ps 2>/dev/null || true"
        )

    def process(self, output: list[str]) -> list[LoadedModel]:
        return parse_ollama_ps(output)


def parse_store(lines: list[str]) -> set[str]:
    """The models an Ollama store holds whole (``library/gemma3:270m``): a manifest, and
    every blob it names at its size. From :class:`OllamaStore`'s listing."""
    from gpufleet.ollama_fetch import FetchError, digests

    manifests: dict[str, str] = {}
    blobs: dict[str, int] = {}
    section = ""
    for line in lines:
        if line.startswith("== "):
            section = line[3:].strip()
            continue
        if section == "blobs":
            name, _, size = line.strip().partition(" ")
            if size.isdigit():
                blobs[name] = int(size)
        elif section.startswith("manifests/registry.ollama.ai/"):
            manifests[section] = manifests.get(section, "") + line
    whole = set()
    for path, text in manifests.items():
        name, tag = path.removeprefix("manifests/registry.ollama.ai/").rsplit("/", 1)
        try:
            named = digests(json.loads(text))
        except (ValueError, FetchError, AttributeError):
            continue  # a manifest cut short or not Ollama's: fetched again
        if all(blobs.get(digest.replace(":", "-")) == size for digest, size in named):
            whole.add(f"{name}:{tag}")
    return whole


class OllamaStore(FactBase[set[str]]):
    """
    The models an Ollama model store holds whole, as ``namespace/name:tag``: each manifest
    under ``manifests/registry.ollama.ai`` whose blobs are all there at their sizes (their
    digests were checked when they were fetched).

    .. code:: python

        {"library/gemma3:270m"}
    """

    def command(self, store: str) -> str:
        folder = shlex.quote(store)
        return (
            f"cd {folder} 2>/dev/null || exit 0; "
            "find manifests/registry.ollama.ai -type f ! -name '*.partial' 2>/dev/null | "
            'while read -r f; do echo "== $f"; tr -d \'\\n\' < "$f"; echo; done; '
            "echo '== blobs'; "
            "find blobs -maxdepth 1 -type f -name 'sha256-*' ! -name '*.partial' "
            "-printf '%f %s\\n' 2>/dev/null || true"
        )

    @staticmethod
    def default() -> set[str]:
        return set()  # no store yet: pyinfra hands a fact with no output its default

    def process(self, output: list[str]) -> set[str]:
        return parse_store(output)
