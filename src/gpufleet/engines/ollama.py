"""Ollama on Linux: one server (a systemd unit with a drop-in) that loads models on demand.

Host-wide settings go into the drop-in's environment; what the planner decides per model
(its context and the layers it puts on the GPU) goes into the Modelfile its alias is
created from, since Ollama takes those per model. Example::

    >>> OLLAMA.render(spec, placement, decision).parameters
    (('num_ctx', '8192'), ('num_gpu', '49'))
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from gpufleet.engines.base import Engine, PlacementDecision, Rendered
from gpufleet.fields import TEMPLATED_URL_PATTERN, Port, Spec
from gpufleet.paths import HOST_STATE

if TYPE_CHECKING:
    from gpufleet.models import HostSpec, ModelPlacement

BINARY = "/usr/local/bin/ollama"
INVENTED_QUANT_TAG = re.compile(r"^(?P<base>[^:/]+:[^-]+)-q\d$")
"""``qwen2.5:72b-q4``: a spelling people write that no tag of Ollama's library has (its
quantized tags read ``qwen2.5:72b-instruct-q4_K_M``), so the pull fails on the host."""
DEFAULT_CONTEXT = 2048
"""Context Ollama gives a model when neither the placement nor OLLAMA_CONTEXT_LENGTH says."""
LOADED_PER_GPU = 3
"""Ollama's default for OLLAMA_MAX_LOADED_MODELS: 3 per GPU (3 on a CPU-only host)."""
MODELFILES = f"{HOST_STATE}/ollama"
"""Root's Modelfiles, one per alias (root runs `ollama create` on them)."""
"""Where the Modelfiles of aliases are kept on the host (the alias is re-created when its
Modelfile changes)."""


RELEASE = "0.35.0"
"""The Ollama release installed on Linux unless the inventory pins another."""
RELEASE_SHA256 = {
    ("0.35.0", "amd64"): "1c114a6b220c5efca2ef2b1e5f01d1e535e26f6cd6d1678c8489325d2835e525",
    ("0.35.0", "arm64"): "cb627d332b1fe5055bd5485ca10d595da8429e447648209e375390ec3bd09374",
}
"""The default release's archives as its sha256sum.txt lists them: a pinned checksum needs
no list fetched from the place the archive comes from. Another version is checked against
its own release's list, or the inventory's ``sha256``."""


def release_sha256(settings: OllamaSettings, arch: str) -> str | None:
    """The checksum the archive for ``arch`` is held to: the inventory's, else the pinned one
    of a known release; None: read it from the release's published list."""
    return settings.sha256 or RELEASE_SHA256.get((settings.version, arch))


class OllamaSettings(Spec):
    """Ollama's settings (``ollama: {num_parallel: 2}``)."""

    port: Port = 11434
    """Port Ollama listens on (OLLAMA_HOST)."""
    address: IPv4Address | None = None
    """Address Ollama (OLLAMA_HOST) listens on; None: decided from who reaches it (loopback when
    only this host does, else every interface, with the firewall letting in only those hosts;
    see ``firewall``)."""
    keep_alive: str = Field("5m", pattern=r"^(-1|0|\d+[smh])$")
    """OLLAMA_KEEP_ALIVE: how long an idle model stays loaded (``-1``: for ever)."""
    flash_attention: bool = True
    """OLLAMA_FLASH_ATTENTION: less memory for long contexts on GPUs that support it."""
    version: str = Field(RELEASE, pattern=r"^\d+\.\d+\.\d+$")
    """Ollama release to install."""
    url: str = Field(
        "https://github.com/ollama/ollama/releases/download/v{version}/ollama-linux-{arch}.tar.zst",
        pattern=TEMPLATED_URL_PATTERN,
    )
    """Where the release archive comes from (``{version}``, ``{arch}``: amd64/arm64); a
    local mirror for offline hosts."""
    install: Literal["release", "present"] = "release"
    """``release``: the release archive is downloaded, checked and unpacked into /usr/local;
    ``present``: Ollama is installed by other means and left as it is."""
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """Checksum of that archive (amd64 or arm64, whichever the host is); without it, the
    archive is checked against the release's published checksum list (``checksums_url``)."""
    checksums_url: str = Field(
        "https://github.com/ollama/ollama/releases/download/v{version}/sha256sum.txt",
        pattern=TEMPLATED_URL_PATTERN,
    )
    """The checksum list the release publishes (``sha256sum`` output naming each archive),
    read on the host when the archive is fetched; a mirror serves its copy beside the
    archive."""
    max_loaded_models: int | None = Field(None, ge=1)
    """OLLAMA_MAX_LOADED_MODELS; Ollama's own default (3 per GPU) when left out."""
    num_parallel: int | None = Field(None, ge=1)
    """OLLAMA_NUM_PARALLEL: requests served at once per loaded model."""
    context_length: int | None = Field(None, ge=256)
    """OLLAMA_CONTEXT_LENGTH: default context for every model the host serves."""
    memory_max_gb: float | None = Field(None, gt=0)
    """System memory limit of the server in GB (``MemoryMax=``); the planner's when left out
    (see ``planner.memory_limits``)."""


class Ollama(Engine):
    name = "ollama"
    settings_key = "ollama"
    had_flat_keys = True
    settings_model = OllamaSettings
    service = "ollama"
    role = "gpufleet.roles.ollama"
    health_path = "/api/version"
    api_path = ""
    router_provider = "ollama_chat"
    embedding_provider = "ollama"  # LiteLLM asks Ollama's own /api/embed
    loads_on_demand = True
    binary: ClassVar[str] = BINARY

    def settings(self, spec: HostSpec) -> OllamaSettings:
        return spec.ollama

    def runs_on(self, spec: HostSpec) -> bool:
        return spec.os != "macos" and bool(self.placements(spec))

    def default_context(self, spec: HostSpec, placement: ModelPlacement, model_context: int) -> int:
        """The host's default (OLLAMA_CONTEXT_LENGTH, else Ollama's own); for an alias, never
        above what the model supports, since its Modelfile carries the number (a 512-token
        embedding model is not given a 128k window). A model served under its own tag runs
        with the host's default, whatever it is, so that is what is planned."""
        default = spec.ollama.context_length or DEFAULT_CONTEXT
        return min(default, model_context) if placement.alias else default

    def slots(self, spec: HostSpec) -> int:
        return spec.ollama.num_parallel or 1

    def max_loaded(self, spec: HostSpec) -> int:
        return spec.ollama.max_loaded_models or LOADED_PER_GPU * max(spec.hardware.gpu_count, 1)

    def problems(
        self, spec: HostSpec, placed: list[tuple[int, ModelPlacement]]
    ) -> Iterator[tuple[str, str]]:
        for i, placement in placed:
            invented = INVENTED_QUANT_TAG.match(placement.model)
            if invented:
                yield (
                    f"models[{i}].model",
                    f"Ollama's library has no tag {placement.model!r} (its quantized tags "
                    f"are spelt like '{invented['base']}-instruct-q4_K_M'); write the "
                    f"library's tag, or '{invented['base']}', whose default is Q4_K_M",
                )
            if placement.context and not placement.alias:
                yield (
                    f"models[{i}].context",
                    "Ollama takes a model's own context through its alias (a Modelfile): give "
                    "the placement an alias, or set ollama.context_length for the whole host",
                )

    def environment(self, spec: HostSpec) -> dict[str, str]:
        """The server's environment (its drop-in, or its plist on macOS)."""
        settings = spec.ollama
        env = {
            "OLLAMA_HOST": f"{settings.address}:{settings.port}",
            "OLLAMA_KEEP_ALIVE": settings.keep_alive,
            "OLLAMA_FLASH_ATTENTION": "1" if settings.flash_attention else "0",
        }
        if settings.max_loaded_models is not None:
            env["OLLAMA_MAX_LOADED_MODELS"] = str(settings.max_loaded_models)
        if settings.num_parallel is not None:
            env["OLLAMA_NUM_PARALLEL"] = str(settings.num_parallel)
        if settings.context_length is not None:
            env["OLLAMA_CONTEXT_LENGTH"] = str(settings.context_length)
        if spec.hardware.amd_gpu:
            # Its Vulkan backend (in the main archive) drives an AMD GPU through Mesa's RADV;
            # ROCm's own archive is not fetched.
            env["OLLAMA_VULKAN"] = "1"
        if spec.hardware.amd_igpu:
            # Ollama drops integrated GPUs it does not know unless told to keep them, and the
            # planner put this host's models on its GPU.
            env["OLLAMA_IGPU_ENABLE"] = "1"
        return env

    def render(
        self, spec: HostSpec, placement: ModelPlacement, decision: PlacementDecision
    ) -> Rendered:
        """The server's environment, and the model's context and GPU layers as its alias's
        Modelfile parameters (a placement without an alias runs with the server's)."""
        parameters: tuple[tuple[str, str], ...] = ()
        if placement.alias:
            parameters = (
                ("num_ctx", str(decision.context)),
                ("num_gpu", str(decision.gpu_layers)),
            )
        return Rendered(environment=tuple(self.environment(spec).items()), parameters=parameters)


def modelfile(placement: ModelPlacement, rendered: Rendered) -> str:
    """The Modelfile an alias is created from: the pulled model and the planned parameters."""
    lines = [f"FROM {placement.model}"]
    lines += [f"PARAMETER {key} {value}" for key, value in rendered.parameters]
    return "\n".join(lines) + "\n"


def modelfile_path(alias: str) -> str:
    return f"{MODELFILES}/{alias}.Modelfile"


OLLAMA = Ollama()
