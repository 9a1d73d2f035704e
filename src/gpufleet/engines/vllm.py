"""vLLM: one model per server on NVIDIA GPUs, from a pinned venv, the container image or an
installation of your own; its API key and, for gated weights, a Hugging Face token read
from an environment file, never a command line. Example::

    >>> VLLM.render(spec, placement, decision).command[:2]
    ('/opt/vllm/bin/vllm', 'serve')
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from gpufleet.catalogue import fleet_catalogue
from gpufleet.engines.base import Engine, EngineSecret, PlacementDecision, Rendered, served_name
from gpufleet.fields import IMAGE_PATTERN, URL_PATTERN, Port, Spec

if TYPE_CHECKING:
    from gpufleet.models import HostSpec, ModelPlacement

VENV = "/opt/vllm"
ENV_FILE = "/etc/gpufleet/vllm.env"
API_KEY_ENV = "VLLM_API_KEY"
HF_TOKEN = EngineSecret("hf_token", "HF_TOKEN", issued_by="Hugging Face")
"""The token vLLM downloads gated weights with (huggingface_hub reads HF_TOKEN)."""


VLLM_VERSION = "0.28.0"
"""Past every vLLM advisory this release knows of: 0.11.0, the release before, is affected by
GHSA-mrw7-hf4f-83pf, GHSA-pmqf-x6x8-p7qw and GHSA-69j4-grxj-j64p (fixed in 0.11.1,
https://github.com/vllm-project/vllm/issues/26928), GHSA-7972-pg2x-xr59 (fixed in 0.18.0,
https://github.com/vllm-project/vllm/security/advisories/GHSA-7972-pg2x-xr59) and
GHSA-3mwp-wvh9-7528 (fixed in 0.19.0,
https://github.com/vllm-project/vllm/security/advisories/GHSA-3mwp-wvh9-7528)."""
VLLM_IMAGE = (
    "vllm/vllm-openai:v0.28.0"
    "@sha256:61fc8a896b0a4fbbbdc063bc4b0dbc25ce98e02b5050c24aeb7830ac02039b14"
)
"""The multi-arch index Docker Hub serves as vllm/vllm-openai:v0.28.0 (linux/amd64
sha256:2286e8533ca8b6bc777594bae30524f1426ba46ca21797524e06df6a94b06635, linux/arm64
sha256:2a7cde230b59f3ce6cab33dd245ba6bee41aa87b38c9fe84f966ff24016813ce), as public
deployments that pin v0.28.0 record it; compare with
https://hub.docker.com/r/vllm/vllm-openai/tags?name=v0.28.0."""


RAY_VERSION = "2.60.0"
"""The Ray release a cluster of vLLM hosts runs, installed beside vLLM in its venv: token
authentication (``RAY_AUTH_MODE=token``) is there since 2.52.0, and off unless asked for
before 2.61 (https://docs.ray.io/en/latest/ray-security/token-auth.html)."""
RAY_SERVICE = "ray"
"""The unit that runs a host's Ray node (the head where the model is served, a worker where
a later pipeline stage runs)."""
RAY_ENV_FILE = "/etc/gpufleet/ray.env"
RAY_TOKEN = EngineSecret("ray_token", "RAY_AUTH_TOKEN")
"""The shared secret of a Ray cluster: every node and the vLLM server that drives them
present it (Ray's token authentication), so a host that reaches a Ray port without it gets
nothing run."""
RAY_TEMP_DIR = "/var/lib/vllm/ray"
"""Ray's session folder (sockets, logs), in vLLM's state folder: the vLLM server that drives
the cluster finds the head's local sockets there, across the two units."""


class RaySettings(Spec):
    """The ports of a host's Ray node when it is part of a vLLM model split across hosts
    (``ray_workers``); Ray picks random ones otherwise, which no allow-list can name."""

    version: str = Field(RAY_VERSION, pattern=r"^\d+\.\d+\.\d+$")
    """Ray release, installed with vLLM in its venv; every host of one cluster runs the
    head's."""
    port: Port = 6379
    """The head's GCS port (``ray start --port``), where workers and vLLM join."""
    client_server_port: Port = 10001
    """The head's Ray client server (``--ray-client-server-port``)."""
    node_manager_port: Port = 6380
    object_manager_port: Port = 6381
    runtime_env_agent_port: Port = 6382
    dashboard_agent_grpc_port: Port = 6383
    dashboard_agent_listen_port: Port = 6384
    metrics_export_port: Port = 6385
    min_worker_port: Port = 10002
    max_worker_port: Port = 10101
    """Ray's worker processes listen in min..max (one port each: keep room for a few per
    GPU)."""

    @model_validator(mode="after")
    def _worker_ports_are_a_range(self) -> RaySettings:
        if self.max_worker_port < self.min_worker_port + 15:
            raise ValueError(
                "vllm.ray.max_worker_port must leave at least 16 worker ports above "
                "min_worker_port (Ray starts one worker process per task it runs)"
            )
        return self

    def node_ports(self) -> tuple[int, ...]:
        """The fixed ports every node of the cluster listens on (the worker range aside)."""
        return (
            self.node_manager_port,
            self.object_manager_port,
            self.runtime_env_agent_port,
            self.dashboard_agent_grpc_port,
            self.dashboard_agent_listen_port,
            self.metrics_export_port,
        )

    def head_ports(self) -> tuple[int, ...]:
        """The ports only the head listens on."""
        return (self.port, self.client_server_port)


class VllmSettings(Spec):
    """vLLM's settings (``vllm: {install: container}``)."""

    port: Port = 8000
    """Port of vLLM's OpenAI-compatible server."""
    address: IPv4Address | None = None
    """Address vLLM (--host) listens on; None: decided from who reaches it (loopback when only this
    host does, else every interface, with the firewall letting in only those hosts; see
    ``firewall``)."""
    install: Literal["venv", "container", "present"] = "venv"
    """venv: ``pip install vllm==<version>`` in /opt/vllm; container: the vLLM image run by
    Docker through the NVIDIA runtime; present: you installed vLLM in /opt/vllm yourself
    (the service starts once it is there)."""
    version: str = Field(VLLM_VERSION, pattern=r"^\d+\.\d+\.\d+$")
    """vLLM release (the pip version; ``image``'s tag is ``v<version>``)."""
    image: str = Field(VLLM_IMAGE, pattern=IMAGE_PATTERN)
    """Container image for ``install: container``, pinned by digest, its tag ``v<version>``;
    a local registry for offline hosts. ``docker buildx imagetools inspect IMAGE`` or
    ``skopeo inspect docker://IMAGE`` prints another release's digest."""
    pip_index: str | None = Field(None, pattern=URL_PATTERN)
    """A PyPI mirror for the venv install."""
    max_num_seqs: int = Field(32, ge=1)
    """--max-num-seqs: one user does not need 128 sequences; fewer keep memory free."""
    max_num_batched_tokens: int = Field(4096, ge=256)
    """--max-num-batched-tokens."""
    enable_prefix_caching: bool = True
    """--enable-prefix-caching: reuse the KV cache of a repeated system prompt."""
    gpu_memory_utilization: float = Field(0.80, gt=0.1, le=0.95)
    """Share of VRAM vLLM reserves; 0.80 leaves room for long prompts without OOM."""
    memory_max_gb: float | None = Field(None, gt=0)
    """System memory limit of the server in GB (``MemoryMax=``, ``docker run --memory``);
    the planner's when left out (see ``planner.memory_limits``)."""
    ray: RaySettings = RaySettings()
    """The host's Ray node, where a vLLM model is split across hosts (``ray_workers``)."""

    @model_validator(mode="after")
    def _image_is_the_release(self) -> VllmSettings:
        # The digest decides what runs: an image tagged for another release than ``version``
        # (the default image after only ``version`` changed) would run that other release.
        tag = self.image.split("@", 1)[0].rpartition("/")[2].partition(":")[2]
        if (
            self.install == "container"
            and tag
            and not re.match(rf"^v{re.escape(self.version)}($|-)", tag)
        ):
            raise ValueError(
                f"vllm.image is tagged {tag!r}, not v{self.version} (vllm.version): give the "
                f"image of that release pinned by digest, e.g. 'vllm/vllm-openai:v"
                f"{self.version}@sha256:<digest>' ('docker buildx imagetools inspect "
                f"vllm/vllm-openai:v{self.version}' prints it)"
            )
        return self


class Vllm(Engine):
    name = "vllm"
    settings_key = "vllm"
    had_flat_keys = True
    settings_model = VllmSettings
    service = "vllm"
    role = "gpufleet.roles.vllm"
    health_path = "/health"
    metrics_path = "/metrics"
    scrape_job = "vllm"
    router_provider = "hosted_vllm"
    api_key_secret = "vllm_api_key"
    secret_env = (EngineSecret("vllm_api_key", API_KEY_ENV), HF_TOKEN)
    host_memory_gb = 8.0  # an API server and an engine core, each with PyTorch and CUDA
    one_model_per_server = True
    needs_nvidia_gpu = True
    offloads_to_ram = False

    def settings(self, spec: HostSpec) -> VllmSettings:
        return spec.vllm

    def slots(self, spec: HostSpec) -> int:
        return spec.vllm.max_num_seqs

    def kv_slots(self, spec: HostSpec) -> int:
        return 1  # paged: the KV cache is shared by the sequences, sized for one context

    def gpu_memory_share(self, spec: HostSpec) -> float:
        return spec.vllm.gpu_memory_utilization

    def problems(
        self, spec: HostSpec, placed: list[tuple[int, ModelPlacement]]
    ) -> Iterator[tuple[str, str]]:
        for i, placement in placed:
            if placement.source is None:
                yield (
                    f"models[{i}].source",
                    "vLLM loads Hugging Face weights: give the repo id (e.g. "
                    "'meta-llama/Llama-3.1-8B-Instruct') or a folder on the host",
                )
                continue
            gated = fleet_catalogue().gated_repo(placement.source)
            if gated and HF_TOKEN.secret not in spec.secrets:
                yield (
                    f"models[{i}].source",
                    f"model {placement.source} is gated on Hugging Face ({gated}): accept its "
                    "licence with your account, then add secrets.hf_token, e.g. "
                    "{'hf_token': 'vault:kv/gpufleet/huggingface#token'} (your token, stored "
                    "by you), or serve weights from a folder on the host",
                )

    def render(
        self, spec: HostSpec, placement: ModelPlacement, decision: PlacementDecision
    ) -> Rendered:
        """``vllm serve`` with the planned flags. The API key (and a Hugging Face token) is
        read from the environment file, so it never shows in a process list or a plan; the
        environment shown here holds the references."""
        settings = spec.vllm
        command: tuple[str, ...] = (
            "vllm" if settings.install == "container" else f"{VENV}/bin/vllm",
            "serve", placement.source or placement.model,
            "--served-model-name", served_name(placement),
            "--host", str(settings.address),
            "--port", str(settings.port),
            "--gpu-memory-utilization", f"{settings.gpu_memory_utilization:.2f}",
            "--max-num-seqs", str(decision.slots),
            "--max-num-batched-tokens", str(settings.max_num_batched_tokens),
            "--tensor-parallel-size", str(decision.gpus),
            "--max-model-len", str(decision.context),
        )  # fmt: skip
        if settings.enable_prefix_caching:
            command += ("--enable-prefix-caching",)
        if decision.kind == "embedding":
            command += ("--task", "embed")
        named = dict(self.secret_environment(spec))
        environment = tuple(
            (s.variable, f"<{named.get(s.variable, 'missing')}>")
            for s in self.secret_env
            if s.variable in named or s.issued_by is None
        )
        stages = decision.rpc
        if stages:
            # One pipeline stage per host, each with this host's tensor-parallel size; the
            # layers of each stage are the planner's split (vLLM's own would be even).
            command += (
                "--pipeline-parallel-size", str(len(stages)),
                "--distributed-executor-backend", "ray",
            )  # fmt: skip
            head = stages[0].endpoint
            token = spec.secrets.get(RAY_TOKEN.secret, "missing")
            environment += (
                ("RAY_ADDRESS", head),
                ("RAY_AUTH_MODE", "token"),
                (RAY_TOKEN.variable, f"<{token}>"),
                ("VLLM_HOST_IP", head.rpartition(":")[0]),
                ("VLLM_PP_LAYER_PARTITION", ",".join(str(stage.layers) for stage in stages)),
            )
        return Rendered(command=command, environment=environment)

    def ray_node_command(
        self, spec: HostSpec, address: str, gpus: int, head: str | None = None
    ) -> tuple[str, ...]:
        """``ray start`` for this host's node of a cluster, in the foreground (its unit keeps
        it): the head where ``head`` is None, else a worker that joins ``head``
        (``address:port``). Every port fixed, so the firewall can name them; no dashboard."""
        ray = spec.vllm.ray
        command: tuple[str, ...] = (
            f"{VENV}/bin/ray", "start", "--block", "--disable-usage-stats",
            "--node-ip-address", address,
            "--num-gpus", str(gpus),
            "--temp-dir", RAY_TEMP_DIR,
            "--node-manager-port", str(ray.node_manager_port),
            "--object-manager-port", str(ray.object_manager_port),
            "--runtime-env-agent-port", str(ray.runtime_env_agent_port),
            "--dashboard-agent-grpc-port", str(ray.dashboard_agent_grpc_port),
            "--dashboard-agent-listen-port", str(ray.dashboard_agent_listen_port),
            "--metrics-export-port", str(ray.metrics_export_port),
            "--min-worker-port", str(ray.min_worker_port),
            "--max-worker-port", str(ray.max_worker_port),
        )  # fmt: skip
        if head is None:
            return (
                *command, "--head", "--port", str(ray.port),
                "--ray-client-server-port", str(ray.client_server_port),
                "--include-dashboard=false",
            )  # fmt: skip
        return (*command, "--address", head)


VLLM = Vllm()
