"""Catalogues as data: accelerators and models gpufleet can reason about.

The YAML files beside this module are the built-in catalogue. An inventory may bring its own:
``catalogue.yaml`` beside the inventory file, in the same schema (``accelerators:``,
``models:``, ``aliases:`` maps). An entry there replaces a built-in entry of the same name
whole: it describes the user's own hardware, which the user knows best. A host may also
declare an accelerator or a model inline (``hardware.accelerators[].bandwidth_gbs``,
``models[].layers``...); :meth:`Catalogue.accelerator_for` and :func:`model_entry` are the one
place that decides which figures count. Every entry is validated with pydantic as it loads.
Example::

    >>> load_catalogue().accelerator("GeForce RTX 4090").vram_gb
    (24.0,)
    >>> catalogue_for("inventory/homelab.py").model("qwen3:8b").layers
    36
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from gpufleet.fields import MODEL_TAG_PATTERN, Spec

if TYPE_CHECKING:
    from gpufleet.models import Accelerator, ModelPlacement

CATALOGUE_DIR = Path(__file__).parent
USER_CATALOGUE = "catalogue.yaml"
"""The inventory's own catalogue: this file beside the inventory file."""

AcceleratorKind = Literal[
    "nvidia", "jetson", "amd_gpu", "amd_igpu", "amd_npu", "intel_gpu", "intel_npu", "apple_metal"
]
"""nvidia: discrete NVIDIA GPU (and the GB10); jetson: NVIDIA Jetson SoC; amd_gpu: discrete
AMD Radeon / Instinct; amd_igpu: AMD integrated GPU sharing system memory; intel_gpu: Intel
Arc; amd_npu / intel_npu: NPUs; apple_metal: Apple silicon GPU."""
OWN_MEMORY_KINDS = ("nvidia", "amd_gpu", "intel_gpu")
"""Kinds with memory of their own: a declaration of one must give its size (``vram_gb``);
the others share the host's memory."""
ModelKind = Literal["llm", "vision", "embedding", "code"]

PositiveFloat = Annotated[float, Field(gt=0)]
PciDeviceId = Annotated[str, Field(pattern=r"^[0-9a-f]{4}$")]
COMPUTE_CAPABILITY_PATTERN = r"^[0-9]{1,2}\.[0-9]$"
"""A CUDA compute capability: ``8.9``, ``12.0``."""
OpenModules = Literal["required", "supported", "unsupported"]


class AcceleratorFigures(Spec):
    """One accelerator of a catalogue file (built-in or the inventory's ``catalogue.yaml``)."""

    kind: AcceleratorKind
    vram_gb: tuple[PositiveFloat, ...] = ()
    """Memory sizes the part ships with, GB; empty for parts that share system memory."""
    bandwidth_gbs: PositiveFloat
    """Peak memory bandwidth, GB/s."""
    pci_device_ids: tuple[PciDeviceId, ...] = ()
    """PCI device ids (lower-case hex, vendor left out) that name a detected card."""
    min_driver: int | None = Field(None, ge=300, le=999)
    """Oldest NVIDIA driver branch that supports the part."""
    open_modules: OpenModules | None = None
    """NVIDIA's open kernel modules: required, supported or unsupported."""
    compute_capability: str | None = Field(None, pattern=COMPUTE_CAPABILITY_PATTERN)
    """CUDA compute capability, ``"8.9"``."""

    @field_validator("vram_gb", mode="before")
    @classmethod
    def _one_size_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("pci_device_ids", mode="before")
    @classmethod
    def _lower_case(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(v.lower() if isinstance(v, str) else v for v in value)
        return value

    @model_validator(mode="after")
    def _own_memory_is_sized(self) -> AcceleratorFigures:
        if self.kind in OWN_MEMORY_KINDS and not self.vram_gb:
            raise ValueError(
                f"a {self.kind} part has memory of its own: give vram_gb (GB, e.g. vram_gb: 16)"
            )
        return self


class ModelFigures(Spec):
    """One model of a catalogue file: the figures of its publisher's ``config.json``."""

    params_b: PositiveFloat
    """Total parameters, billions (all experts of a mixture of experts)."""
    active_params_b: PositiveFloat | None = None
    """Parameters used per token, billions; ``params_b`` when left out (a dense model)."""
    layers: int = Field(ge=1, le=1000)
    """``num_hidden_layers``."""
    kv_heads: int = Field(ge=1, le=1024)
    """``num_key_value_heads``."""
    head_dim: int = Field(ge=1, le=4096)
    """``head_dim``, else ``hidden_size / num_attention_heads``."""
    context: int = Field(ge=1, le=100_000_000)
    """Longest context the model supports, tokens."""
    kind: ModelKind = "llm"
    source: str | None = None
    """Where the figures come from (a model card's address)."""

    @model_validator(mode="after")
    def _active_within_total(self) -> ModelFigures:
        if self.active_params_b is not None and self.active_params_b > self.params_b:
            raise ValueError(
                f"active_params_b ({self.active_params_b:g}) is more than params_b "
                f"({self.params_b:g}); a mixture of experts uses a part of its parameters"
            )
        return self


ACCELERATOR_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._+()/-]{0,63}$"
"""An accelerator's name as a catalogue file may spell it: letters, digits, spaces and
``._+()/-`` (``RTX 4060 Ti 16GB``, ``Radeon RX 7900 XTX``)."""


class CatalogueFile(Spec):
    """A whole catalogue file; the built-in catalogue splits these keys over two files."""

    accelerators: dict[str, AcceleratorFigures] = {}
    models: dict[str, ModelFigures] = {}
    aliases: dict[str, str] = {}
    """Other names of an entry of this file or of the built-in catalogue."""
    gated: tuple[str, ...] = ()
    """Hugging Face repo id patterns that need an account's token."""

    @field_validator("accelerators")
    @classmethod
    def _accelerator_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not re.match(ACCELERATOR_NAME_PATTERN, name):
                raise ValueError(
                    f"accelerator name {name!r}: use letters, digits, spaces and ._+()/- "
                    "(at most 64 characters)"
                )
        return value

    @field_validator("models")
    @classmethod
    def _model_tags(cls, value: dict[str, Any]) -> dict[str, Any]:
        for tag in value:
            if not re.match(MODEL_TAG_PATTERN, tag):
                raise ValueError(
                    f"model tag {tag!r}: write it as Ollama names it, family:size "
                    "(letters, digits, ._-)"
                )
        return value


class CatalogueError(ValueError):
    """A catalogue file that cannot be read; ``problems`` are (where, what) pairs, ``where``
    naming the file, and the line or entry and field."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{where}: {what}" for where, what in problems))


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
    declared: str | None = None
    """Where the user declared this part (their catalogue file, or the host's data); None for
    a built-in entry."""

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
    declared: str | None = None
    """Where the figures come from when not the built-in catalogue: the user's catalogue
    file, the host's data, a GGUF header."""


@dataclass(frozen=True)
class Catalogue:
    accelerators: dict[str, AcceleratorEntry]
    accelerator_aliases: dict[str, str]
    models: dict[str, ModelEntry]
    model_aliases: dict[str, str]
    gated_repos: tuple[str, ...] = ()
    """Patterns of Hugging Face repo ids that are gated (download needs an account's token)."""
    user_file: Path | None = None
    """The inventory's own catalogue file (whether it exists or not): where the messages tell
    the user to declare a part or a model; None where no inventory is known."""
    replaced: tuple[str, ...] = field(default=())
    """Built-in entries the user's file replaces (the user's file wins)."""

    def accelerator(self, name: str) -> AcceleratorEntry | None:
        """The entry for a name as people write it (``NVIDIA GeForce RTX 4090`` too)."""
        canonical = self.accelerator_aliases.get(name, name)
        return self.accelerators.get(canonical)

    def accelerator_for(self, accelerator: Accelerator) -> AcceleratorEntry | None:
        """The figures one of a host's ``hardware.accelerators`` stands for: the catalogue's
        entry of its name with the figures the host gives over it, or, for a part the
        catalogue lacks, the host's own declaration (kind, ``vram_gb``, ``bandwidth_gbs``,
        ``compute_capability``...). None when neither knows the part well enough to plan."""
        entry = self.accelerator(accelerator.model)
        given = {
            name: getattr(accelerator, name)
            for name in ("bandwidth_gbs", "min_driver", "open_modules", "compute_capability")
            if getattr(accelerator, name) is not None
        }
        if entry is not None:
            return replace(entry, **given, declared="host data") if given else entry
        if accelerator.bandwidth_gbs is None:
            return None
        if accelerator.kind in OWN_MEMORY_KINDS and accelerator.vram_gb is None:
            return None
        return AcceleratorEntry(
            name=accelerator.model,
            kind=accelerator.kind,
            vram_gb=(accelerator.vram_gb,) if accelerator.vram_gb else (),
            bandwidth_gbs=accelerator.bandwidth_gbs,
            pci_device_ids=(),
            min_driver=accelerator.min_driver,
            open_modules=accelerator.open_modules,
            compute_capability=accelerator.compute_capability,
            declared="host data",
        )

    def accelerator_by_pci_id(self, device_id: str) -> AcceleratorEntry | None:
        # The user's entries first: one that gives a built-in part's id names that card.
        for entry in sorted(self.accelerators.values(), key=lambda e: e.declared is None):
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

    @property
    def where_to_declare(self) -> str:
        """The user's catalogue file as the messages name it."""
        if self.user_file is None:
            return f"a {USER_CATALOGUE} beside the inventory file"
        return str(_shown_path(self.user_file))

    def how_to_declare_accelerator(self, name: str, kind: str) -> str:
        """What an "unknown accelerator" message tells the user to do."""
        memory = "vram_gb (GB), " if kind in OWN_MEMORY_KINDS else ""
        cuda = ", compute_capability (e.g. '8.9')" if kind == "nvidia" else ""
        return (
            f"declare the part: give {memory}bandwidth_gbs (GB/s){cuda} beside its model "
            f"here, or add {name!r} with kind, {memory}bandwidth_gbs{cuda} under "
            f"accelerators: in {self.where_to_declare} (it then serves every host of the "
            "inventory)"
        )

    def how_to_declare_model(self, tag: str) -> str:
        """What an "unknown model" message tells the user to do."""
        return (
            "declare it: give params_b, layers, kv_heads, head_dim and max_context (from its "
            f"config.json) in this placement, or add {tag!r} with params_b, layers, kv_heads, "
            f"head_dim, context and kind under models: in {self.where_to_declare}; or give "
            "params_b alone for a weights-only estimate"
        )


def _shown_path(path: Path) -> Path:
    """A path relative to the working folder where it is under it (shorter messages)."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


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


def model_entry(placement: ModelPlacement, catalogue: Catalogue) -> ModelEntry | None:
    """The figures a placement is planned with, the one place that decides it: the shape the
    placement declares itself (``layers``, ``kv_heads``...), else the header of its GGUF where
    that file is on this machine, else the catalogue's entry (the inventory's
    ``catalogue.yaml`` over the built-in), else, with ``params_b`` alone, a weights-only
    estimate. None when nothing knows the model."""
    from gpufleet.gguf import local_gguf

    declared = placement.declared_shape()
    if declared is not None:
        return declared
    entry = local_gguf(placement.source) or catalogue.model(placement.model)
    if entry is None and placement.params_b:
        # Size known, architecture not: weights only, no KV cache estimate.
        params = placement.params_b
        entry = ModelEntry(placement.model, params, params, 1, 0, 0, 2048, "llm", "params_b")
    return entry


def _accelerator_entries(
    raw: dict[str, AcceleratorFigures], declared: str | None
) -> dict[str, AcceleratorEntry]:
    return {
        name: AcceleratorEntry(
            name=name,
            kind=figures.kind,
            vram_gb=tuple(float(v) for v in figures.vram_gb),
            bandwidth_gbs=float(figures.bandwidth_gbs),
            pci_device_ids=figures.pci_device_ids,
            min_driver=figures.min_driver,
            open_modules=figures.open_modules,
            compute_capability=figures.compute_capability,
            declared=declared,
        )
        for name, figures in raw.items()
    }


def _model_entries(raw: dict[str, ModelFigures], declared: str | None) -> dict[str, ModelEntry]:
    return {
        tag: ModelEntry(
            tag=tag,
            params_b=float(figures.params_b),
            active_params_b=float(figures.active_params_b or figures.params_b),
            layers=figures.layers,
            kv_heads=figures.kv_heads,
            head_dim=figures.head_dim,
            context=figures.context,
            kind=figures.kind,
            declared=declared,
        )
        for tag, figures in raw.items()
    }


class _UniqueKeys(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML's safe loader, refusing a key written twice in one map (the plain loader keeps
    the last silently: an entry pasted twice would hide the first). libyaml's parser where
    PyYAML has it: the built-in catalogue is read by every run, and PyYAML's own parser
    takes a quarter of a second over it."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is written twice; keep one", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_catalogue_file(path: Path) -> CatalogueFile:
    """One catalogue file, validated; raises :class:`CatalogueError` naming the file and the
    line (a YAML syntax error) or the entry and field (a figure refused)."""
    shown = _shown_path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeys)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{shown}:{mark.line + 1}" if mark else str(shown)
        what = error.problem or error.context or "not YAML"
        return _raise([(where, f"YAML syntax error ({what}); fix that line")])
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        return _raise([(str(shown), f"cannot be read ({type(error).__name__}); fix the file")])
    if raw is None:
        return CatalogueFile()
    if not isinstance(raw, dict):
        return _raise([(str(shown), "not a map; write accelerators: {...} and/or models: {...}")])
    try:
        return CatalogueFile.model_validate(raw)
    except ValidationError as error:
        return _raise([(f"{shown}: {_where(d['loc'])}", _what(d)) for d in error.errors()])


def _raise(problems: list[tuple[str, str]]) -> CatalogueFile:
    raise CatalogueError(problems)


def _where(loc: tuple[int | str, ...]) -> str:
    """``('accelerators', 'RTX 4060 Ti', 'vram_gb')`` -> ``accelerators['RTX 4060 Ti'].vram_gb``."""
    shown = ""
    for i, part in enumerate(loc):
        if i == 1 and loc[0] in ("accelerators", "models", "aliases"):
            shown += f"[{part!r}]"
        elif isinstance(part, int):
            shown += f"[{part}]"
        else:
            shown += f".{part}" if shown else str(part)
    return shown or "file"


def _what(detail: Any) -> str:
    message = str(detail["msg"]).removeprefix("Value error, ")
    if detail["type"] == "missing":
        return "required and missing; add it to the entry"
    if detail["type"] == "extra_forbidden":
        return "unknown key; remove it or fix its spelling"
    value = detail.get("input")
    if (
        isinstance(value, int | float | str)
        and not isinstance(value, bool)
        and len(str(value)) < 80
    ):
        message += f" (got {value!r})"
    return message + "; fix it in the file"


@cache
def load_catalogue() -> Catalogue:
    """The built-in catalogue (no inventory's own entries)."""
    accelerators = read_catalogue_file(CATALOGUE_DIR / "accelerators.yaml")
    models = read_catalogue_file(CATALOGUE_DIR / "models.yaml")
    return Catalogue(
        accelerators=_accelerator_entries(accelerators.accelerators, None),
        accelerator_aliases=dict(accelerators.aliases),
        models=_model_entries(models.models, None),
        model_aliases=dict(models.aliases),
        gated_repos=models.gated,
    )


def user_catalogue_path(inventory_path: str | Path) -> Path:
    """The inventory's own catalogue file: ``catalogue.yaml`` beside the inventory file."""
    return Path(inventory_path).resolve().parent / USER_CATALOGUE


def catalogue_for(inventory_path: str | Path | None) -> Catalogue:
    """The catalogue an inventory is planned with: the built-in one, with the entries of the
    inventory's ``catalogue.yaml`` (when it has one) over it. Read again when the file
    changes; raises :class:`CatalogueError` for a file that cannot be read."""
    if inventory_path is None:
        return load_catalogue()
    path = user_catalogue_path(inventory_path)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = None
    return _merged(path, stamp)


@cache
def _merged(path: Path, stamp: int | None) -> Catalogue:
    builtin = load_catalogue()
    if stamp is None:
        return replace(builtin, user_file=path)
    own = read_catalogue_file(path)
    shown = str(_shown_path(path))
    accelerators = _accelerator_entries(own.accelerators, shown)
    models = _model_entries(own.models, shown)
    problems = [
        (f"{shown}: aliases[{alias!r}]", f"{target!r} is in neither catalogue; name an entry")
        for alias, target in own.aliases.items()
        if target not in {**builtin.accelerators, **accelerators, **builtin.models, **models}
    ]
    if problems:
        raise CatalogueError(problems)
    own_accelerator_aliases = {
        a: t for a, t in own.aliases.items() if t in {**builtin.accelerators, **accelerators}
    }
    own_model_aliases = {a: t for a, t in own.aliases.items() if a not in own_accelerator_aliases}
    # The user's entries win: a built-in alias of the same name no longer leads elsewhere.
    return Catalogue(
        accelerators={**builtin.accelerators, **accelerators},
        accelerator_aliases={
            **{a: t for a, t in builtin.accelerator_aliases.items() if a not in accelerators},
            **own_accelerator_aliases,
        },
        models={**builtin.models, **models},
        model_aliases={
            **{a: t for a, t in builtin.model_aliases.items() if a not in models},
            **own_model_aliases,
        },
        gated_repos=(*builtin.gated_repos, *own.gated),
        user_file=path,
        replaced=tuple(
            sorted({*accelerators} & {*builtin.accelerators, *builtin.accelerator_aliases})
            + sorted({*models} & {*builtin.models, *builtin.model_aliases})
        ),
    )


_in_use: list[Path] = []


def use_inventory(inventory_path: str | Path) -> None:
    """Make ``fleet_catalogue()`` the catalogue of this inventory: the inventory being
    validated or deployed (its ``check_inventory(__file__)`` line calls this as it loads)."""
    _in_use[:] = [Path(inventory_path).resolve()]


def fleet_catalogue() -> Catalogue:
    """The catalogue of the inventory this run validates or deploys (see ``use_inventory``);
    the built-in one where no inventory is known. Code that has the inventory's path, or a
    catalogue handed down, uses that instead."""
    return catalogue_for(_in_use[0] if _in_use else None)
