"""What every inference engine is: a component that knows its settings, listeners, service,
health and metrics paths and warm-up request, and renders its command and environment from
the planner's plan for a placement. Pure: no pyinfra, no I/O.

The engine renders, the planner decides: a number the planner worked out (layers on the GPU,
context, parallel slots, threads) is read from its :class:`PlacementDecision`, never worked
out again here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from gpufleet.fields import Spec

if TYPE_CHECKING:
    from gpufleet.models import HostSpec, ModelPlacement

CHAT = "chat"
EMBEDDING = "embedding"
WARM_UP_PATHS = {CHAT: "/v1/chat/completions", EMBEDDING: "/v1/embeddings"}
"""The OpenAI-compatible request a model is warmed up and benchmarked with: a chat model
gets a completion, an embedding model an embeddings call (a completion is refused)."""


class SplitShare(Protocol):
    """One host's share of a model split across hosts (``planner.SplitPart``)."""

    @property
    def layers(self) -> int: ...

    @property
    def on_gpu(self) -> bool: ...

    @property
    def endpoint(self) -> str: ...


class PlacementDecision(Protocol):
    """What the planner decided for one placement (``planner.PlacementPlan`` has these)."""

    context: int
    gpu_layers: int
    layers: int
    slots: int
    threads: int
    gpus: int
    kind: str

    @property
    def rpc(self) -> Sequence[SplitShare]: ...


@dataclass(frozen=True)
class Rendered:
    """An engine's rendering of one placement: the server's command, its environment, and
    the model parameters the engine takes per model (Ollama's Modelfile)."""

    command: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    parameters: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class EngineSecret:
    """A secret an engine's service reads from its environment file (mode 0640 or stricter,
    written from the secret store; a unit file, a plan or a log holds only its reference):
    ``EngineSecret("hf_token", "HF_TOKEN", issued_by="Hugging Face")``."""

    secret: str
    """Its entry in the host's ``secrets``."""
    variable: str
    """The environment variable the service reads it from."""
    issued_by: str | None = None
    """None: a key the fleet issues itself (deploys/vault.py generates it, the engine cannot
    run without it); else who issues it (Hugging Face, NGC): you store it in Vault or a 0600
    file, and it is only delivered where the host data names it."""


@dataclass(frozen=True)
class Listener:
    """A port a component listens on, with the host-data field that sets it."""

    port: int
    field: str


@dataclass(frozen=True)
class ScrapeTarget:
    job: str
    port: int
    path: str = "/metrics"


def memory_size(gb: float) -> str:
    """A memory limit in GB (10^9 bytes, the plan's unit) as systemd's ``MemoryMax=`` and
    Docker's ``--memory`` read it, in whole MiB rounded up: ``memory_size(2.5) == "2385M"``."""
    return f"{math.ceil(gb * 1e9 / 2**20)}M"


def served_name(placement: ModelPlacement) -> str:
    """The name clients ask for: the alias where there is one, else the model tag."""
    return placement.alias or placement.model


class Engine:
    """One inference server. Subclasses set the class attributes and the methods that differ."""

    name: ClassVar[str]
    """How a placement names the engine (``engine: "llama.cpp"``)."""
    settings_key: ClassVar[str] = ""
    """The host spec's field holding this engine's settings (``llamacpp: {...}``)."""
    settings_model: ClassVar[type[Spec] | None] = None
    had_flat_keys: ClassVar[bool] = False
    """Earlier releases took its settings as flat ``<settings_key>_<name>`` keys, which are
    refused now with a message naming the nested key."""
    service: ClassVar[str]
    """Its systemd unit (a launchd label on macOS)."""
    role: ClassVar[str]
    """Module of the role that installs and runs it (``gpufleet.roles.<engine>``)."""
    health_path: ClassVar[str]
    metrics_path: ClassVar[str | None] = None
    """Path of its Prometheus metrics on its port; None: it is only probed."""
    scrape_job: ClassVar[str | None] = None
    metrics_need_key: ClassVar[bool] = False
    """Its metrics path asks for its API key like its API does (llama-server's)."""
    api_path: ClassVar[str] = "/v1"
    """Where its OpenAI-compatible API starts, below its address."""
    router_provider: ClassVar[str] = "openai"
    """LiteLLM's provider prefix for it."""
    embedding_provider: ClassVar[str] = "openai"
    """LiteLLM's provider prefix for its embedding models (their OpenAI-compatible
    ``/v1/embeddings``, unless the engine has an API of its own LiteLLM speaks)."""
    api_key_secret: ClassVar[str | None] = None
    """The ``secrets`` entry holding the key it asks clients for, if it asks for one."""
    api_key_required: ClassVar[bool] = True
    """The key must be set wherever the engine serves (False: only where another host reaches
    it; on loopback alone it may go without)."""
    secret_env: ClassVar[tuple[EngineSecret, ...]] = ()
    """The secrets its service reads from its environment file."""
    host_memory_gb: ClassVar[float] = 1.0
    """System memory the server process holds beside the model's weights and KV cache
    (runtime, CUDA context, request buffers); the planner adds it to the memory limit."""
    one_model_per_server: ClassVar[bool] = False
    needs_nvidia_gpu: ClassVar[bool] = False
    offloads_to_ram: ClassVar[bool] = True
    """Layers that do not fit in VRAM run from system memory (vLLM cannot)."""
    loads_on_demand: ClassVar[bool] = False
    """Models load when first asked for and share the GPU in turns (Ollama)."""
    operating_systems: ClassVar[tuple[str, ...]] = (
        "debian",
        "ubuntu",
        "raspios",
        "proxmox",
        "jetson-l4t",
    )

    def settings(self, spec: HostSpec) -> Any:
        return getattr(spec, self.settings_key)

    def placements(self, spec: HostSpec) -> tuple[ModelPlacement, ...]:
        return tuple(m for m in spec.models if m.engine == self.name)

    def runs_on(self, spec: HostSpec) -> bool:
        """Whether this host runs the engine: a placement names it (Triton: enabled)."""
        return bool(self.placements(spec))

    def port(self, spec: HostSpec) -> int:
        return int(self.settings(spec).port)

    def address(self, spec: HostSpec) -> str:
        return str(self.settings(spec).address)

    def listeners(self, spec: HostSpec) -> list[Listener]:
        return [Listener(self.port(spec), f"{self.settings_key}.port")]

    def scrape_targets(self, spec: HostSpec) -> list[ScrapeTarget]:
        if self.metrics_path is None or self.scrape_job is None:
            return []
        return [ScrapeTarget(self.scrape_job, self.port(spec), self.metrics_path)]

    def probe_url(self, spec: HostSpec, address: str) -> str:
        return f"http://{address}:{self.port(spec)}{self.health_path}"

    def local_url(self, spec: HostSpec) -> str:
        """Where the engine answers on its own host (the deploy's health wait, warm-up):
        loopback, unless it listens on one other address only."""
        address = IPv4Address(self.address(spec))
        reach = "127.0.0.1" if address.is_unspecified or address.is_loopback else str(address)
        return f"http://{reach}:{self.port(spec)}"

    def secret_environment(self, spec: HostSpec) -> tuple[tuple[str, str], ...]:
        """(variable, reference) of each of its secrets the host's ``secrets`` names."""
        named = spec.secrets
        return tuple((s.variable, named[s.secret]) for s in self.secret_env if s.secret in named)

    def warm_up_path(self, kind: str) -> str:
        return WARM_UP_PATHS[EMBEDDING if kind == EMBEDDING else CHAT]

    # What the planner asks before it decides.
    def default_context(self, spec: HostSpec, placement: ModelPlacement, model_context: int) -> int:
        """Context a placement gets when it names none."""
        return model_context

    def slots(self, spec: HostSpec) -> int:
        """Requests served at once per model (each holds its own KV cache, where it does)."""
        return 1

    def kv_slots(self, spec: HostSpec) -> int:
        """How many KV caches of the context the engine allocates."""
        return self.slots(spec)

    def threads(self, spec: HostSpec) -> int:
        return spec.hardware.cores

    def gpu_layers_asked(self, spec: HostSpec) -> int | None:
        """Layers the inventory asks to put on the GPU; None: as many as fit."""
        return None

    def max_loaded(self, spec: HostSpec) -> int:
        """Models kept loaded at once by an engine that loads on demand."""
        return 1

    def gpu_memory_share(self, spec: HostSpec) -> float:
        """Share of VRAM it may take (vLLM reserves a share up front)."""
        return 1.0

    def problems(
        self, spec: HostSpec, placed: list[tuple[int, ModelPlacement]]
    ) -> Iterator[tuple[str, str]]:
        """(field, message) for what is wrong with where its binary and weights come from;
        ``placed`` are its placements with their index in ``models``."""
        yield from ()

    def render(
        self, spec: HostSpec, placement: ModelPlacement, decision: PlacementDecision
    ) -> Rendered:
        raise NotImplementedError
