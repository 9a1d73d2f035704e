"""NVIDIA Triton Inference Server: NGC's image through the NVIDIA runtime, serving the model
repository the inventory lays out (``triton: {enabled: true, models: [...]}``). It has no
placements: it runs where it is enabled, and is ready only when every model has loaded.
An NGC API key (``secrets.ngc_api_key``), where the image needs one, logs Docker in to
nvcr.io before the pull, read on the host from a 0600 file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from gpufleet.engines.base import Engine, EngineSecret, Listener, ScrapeTarget
from gpufleet.fields import IMAGE_PATTERN, SOURCE_PATTERN, Port, Spec

if TYPE_CHECKING:
    from gpufleet.models import HostSpec

ENV_FILE = "/etc/gpufleet/triton.env"
NGC_API_KEY = EngineSecret("ngc_api_key", "NGC_API_KEY", issued_by="NGC")
"""The key Docker logs in to nvcr.io with (user ``$oauthtoken``): for NGC images that are not
public. The public tritonserver image needs none."""
NGC_USER = "$oauthtoken"
"""NGC's registry takes any API key under this literal user name."""


class TritonModel(Spec):
    """One model of Triton's repository: ``{"name": "bge-small", "backend": "onnxruntime",
    "source": "/srv/models/bge-small.onnx"}``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Folder name in the repository; the name clients ask Triton for."""
    backend: Literal["onnxruntime", "tensorrt", "pytorch", "python"]
    """Triton backend that runs it (its file is ``model.onnx``, ``model.plan``, ``model.pt``
    or ``model.py``)."""
    source: str = Field(pattern=SOURCE_PATTERN)
    """The model file: a URL (downloaded, verified by ``sha256``) or a path on the host."""
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """Checksum of a downloaded file; required for a URL."""
    version: int = Field(1, ge=1)
    """Version folder the file goes in."""
    max_batch_size: int = Field(0, ge=0)
    """Largest batch Triton forms (0: the model takes no batch dimension)."""
    instances: int = Field(1, ge=1, le=16)
    """Copies of the model on each GPU (``instance_group``)."""


class TritonServer(Spec):
    """NVIDIA Triton Inference Server on a GPU node, from NGC's container through the NVIDIA
    runtime: ``{"enabled": True, "models": [...]}``."""

    enabled: bool = False
    """Run Triton on this host."""
    image: str | None = Field(None, pattern=IMAGE_PATTERN)
    """NGC's image pinned by digest (a local registry for offline hosts); Triton is not
    installed until it is given (the plan says so), e.g.
    ``nvcr.io/nvidia/tritonserver:26.07-py3@sha256:<digest>``: releases before 26.04 are
    affected by NVIDIA's security bulletins 5687 (before 25.07,
    https://nvidia.custhelp.com/app/answers/detail/a_id/5687) and 5828 (fixed in 26.04,
    https://nvidia.custhelp.com/app/answers/detail/a_id/5828). gpufleet knows no published
    digest of a fixed release to default to; ``docker buildx imagetools inspect IMAGE`` or
    ``skopeo inspect docker://IMAGE`` prints it."""
    repository: str = Field("/srv/triton/models", pattern=r"^/\S+$")
    """Model repository on the host, mounted read-only at /models."""
    http_port: Port = 8000
    """HTTP/REST (KServe v2) port."""
    grpc_port: Port = 8001
    """gRPC port."""
    metrics_port: Port = 8002
    """Prometheus metrics port (``nv_inference_*``), scraped by the monitoring host."""
    models: tuple[TritonModel, ...] = ()
    """The repository's models."""
    memory_max_gb: float | None = Field(None, gt=0)
    """System memory limit of the container in GB (``docker run --memory``); the planner's
    when left out (see ``planner.memory_limits``)."""


class Triton(Engine):
    name = "triton"
    settings_key = "triton"
    settings_model = TritonServer
    service = "triton"
    role = "gpufleet.roles.triton"
    health_path = "/v2/health/ready"
    metrics_path = "/metrics"
    scrape_job = "triton"
    needs_nvidia_gpu = True
    secret_env = (NGC_API_KEY,)

    def settings(self, spec: HostSpec) -> TritonServer:
        return spec.triton

    def runs_on(self, spec: HostSpec) -> bool:
        return spec.triton.enabled

    def port(self, spec: HostSpec) -> int:
        return spec.triton.http_port

    def address(self, spec: HostSpec) -> str:
        return "0.0.0.0"

    def listeners(self, spec: HostSpec) -> list[Listener]:
        if not spec.triton.enabled:
            return []
        return [
            Listener(spec.triton.http_port, "triton.http_port"),
            Listener(spec.triton.grpc_port, "triton.grpc_port"),
            Listener(spec.triton.metrics_port, "triton.metrics_port"),
        ]

    def scrape_targets(self, spec: HostSpec) -> list[ScrapeTarget]:
        return [ScrapeTarget("triton", spec.triton.metrics_port)]


def registry(image: str) -> str:
    """The registry an image reference names: ``nvcr.io`` for ``nvcr.io/nvidia/x:1``, Docker
    Hub's ``docker.io`` for a reference without a host."""
    first, _, rest = image.partition("/")
    return first if rest and ("." in first or ":" in first or first == "localhost") else "docker.io"


TRITON = Triton()
