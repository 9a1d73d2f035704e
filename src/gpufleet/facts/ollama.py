"""What Ollama has: the models ``ollama list`` shows."""

from __future__ import annotations

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
