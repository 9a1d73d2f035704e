"""Catalogues as data: accelerators and models gpufleet can reason about.

The YAML files beside this module are the source; this module only reads them into typed
records. Example::

    >>> load_catalogue().accelerator("GeForce RTX 4090").vram_gb
    (24.0,)
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

CATALOGUE_DIR = Path(__file__).parent


@dataclass(frozen=True)
class AcceleratorEntry:
    name: str
    kind: str
    vram_gb: tuple[float, ...]
    bandwidth_gbs: float
    pci_device_ids: tuple[str, ...]
    min_driver: int | None = None
    open_modules: str | None = None
    compute_capability: str | None = None
    """CUDA compute capability, ``"12.0"``; None for parts CUDA does not target."""

    @property
    def sm(self) -> int | None:
        """The compute capability as CUDA architectures are numbered: 12.0 -> 120."""
        if self.compute_capability is None:
            return None
        major, minor = self.compute_capability.split(".")
        return int(major) * 10 + int(minor)


@dataclass(frozen=True)
class ModelEntry:
    tag: str
    params_b: float
    active_params_b: float
    layers: int
    kv_heads: int
    head_dim: int
    context: int
    kind: str


@dataclass(frozen=True)
class Catalogue:
    accelerators: dict[str, AcceleratorEntry]
    accelerator_aliases: dict[str, str]
    models: dict[str, ModelEntry]
    model_aliases: dict[str, str]
    gated_repos: tuple[str, ...] = ()
    """Patterns of Hugging Face repo ids that are gated (download needs an account's token)."""

    def accelerator(self, name: str) -> AcceleratorEntry | None:
        """The entry for a name as people write it (``NVIDIA GeForce RTX 4090`` too)."""
        canonical = self.accelerator_aliases.get(name, name)
        return self.accelerators.get(canonical)

    def accelerator_by_pci_id(self, device_id: str) -> AcceleratorEntry | None:
        for entry in self.accelerators.values():
            if device_id.lower() in entry.pci_device_ids:
                return entry
        return None

    def identify(self, name: str, pci_device_id: str | None = None) -> AcceleratorEntry | None:
        """The part a card is, from what nvidia-smi says of it: its PCI device id first
        (``0x233010DE``: device 2330, vendor 10de; ``2330``), since names differ from one
        driver to the next (``NVIDIA H100 80GB HBM3`` is the H100 SXM), then its name through
        the aliases. None for a part the catalogue does not know."""
        if pci_device_id:
            device = pci_device_id.lower().removeprefix("0x")
            entry = self.accelerator_by_pci_id(device[:4] if len(device) == 8 else device)
            if entry is not None:
                return entry
        return self.accelerator(name.strip())

    def model(self, tag: str) -> ModelEntry | None:
        """The entry for an Ollama-style tag; quantization suffixes (``-q4``) are ignored."""
        family_size = model_family_size(tag)
        for key in (tag, family_size):
            canonical = self.model_aliases.get(key, key)
            if canonical in self.models:
                return self.models[canonical]
        return None

    def gated_repo(self, repo_id: str) -> str | None:
        """The catalogue's pattern that marks ``repo_id`` gated on Hugging Face, or None (not
        known to be gated; a folder on the host never is)."""
        for pattern in self.gated_repos:
            if fnmatch.fnmatchcase(repo_id.lower(), pattern.lower()):
                return pattern
        return None


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a close match exists, else an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def model_family_size(tag: str) -> str:
    """``qwen2.5-coder:32b-instruct-q4_K_M`` -> ``qwen2.5-coder:32b``."""
    family, _, rest = tag.partition(":")
    if not rest:
        return family
    return f"{family}:{rest.split('-', 1)[0]}"


def _accelerators(raw: dict[str, Any]) -> dict[str, AcceleratorEntry]:
    return {
        name: AcceleratorEntry(
            name=name,
            kind=entry["kind"],
            vram_gb=tuple(float(v) for v in entry.get("vram_gb", [])),
            bandwidth_gbs=float(entry["bandwidth_gbs"]),
            pci_device_ids=tuple(entry.get("pci_device_ids", [])),
            min_driver=entry.get("min_driver"),
            open_modules=entry.get("open_modules"),
            compute_capability=entry.get("compute_capability"),
        )
        for name, entry in raw.items()
    }


def _models(raw: dict[str, Any]) -> dict[str, ModelEntry]:
    return {
        tag: ModelEntry(
            tag=tag,
            params_b=float(entry["params_b"]),
            active_params_b=float(entry["active_params_b"]),
            layers=int(entry["layers"]),
            kv_heads=int(entry["kv_heads"]),
            head_dim=int(entry["head_dim"]),
            context=int(entry["context"]),
            kind=entry["kind"],
        )
        for tag, entry in raw.items()
    }


@cache
def load_catalogue() -> Catalogue:
    accelerators = yaml.safe_load((CATALOGUE_DIR / "accelerators.yaml").read_text())
    models = yaml.safe_load((CATALOGUE_DIR / "models.yaml").read_text())
    return Catalogue(
        accelerators=_accelerators(accelerators["accelerators"]),
        accelerator_aliases=dict(accelerators.get("aliases") or {}),
        models=_models(models["models"]),
        model_aliases=dict(models.get("aliases") or {}),
        gated_repos=tuple(models.get("gated") or ()),
    )
