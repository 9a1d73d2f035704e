"""NVIDIA Triton Inference Server on a GPU node: NGC's container through the NVIDIA runtime,
serving a model repository laid out from the inventory.

Runbook it replaces: ``docker run --gpus all -v $PWD/models:/models nvcr.io/...`` in a tmux,
model folders and ``config.pbtxt`` written by hand. Here every model gets
``<repository>/<name>/config.pbtxt`` and ``<name>/<version>/model.<ext>``, a download is
verified by its checksum, and the server is a systemd unit that is restarted when the
repository changes and must report ready (every model loaded) before the deploy goes on.
Its container's memory is held to the planner's limit (``docker run --memory``); an NGC key,
where the host data names one, logs Docker in to the registry before the pull.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import File
from pyinfra.operations import files, server

from gpufleet import sandbox
from gpufleet.catalogue import fleet_catalogue
from gpufleet.engines import memory_size
from gpufleet.engines.triton import ENV_FILE, NGC_API_KEY, NGC_USER, TRITON, TritonModel, registry
from gpufleet.inventory import fleet_specs
from gpufleet.models import HostSpec
from gpufleet.operations import config, downloads
from gpufleet.paths import template
from gpufleet.planner import plan_host
from gpufleet.roles.steps import RegistryLogin, pull_image, run_unit, wait_until_answering
from gpufleet.secrets import read_secret
from gpufleet.vault import fleet_vault

MODEL_FILES = {
    "onnxruntime": "model.onnx",
    "tensorrt": "model.plan",
    "pytorch": "model.pt",
    "python": "model.py",
}
"""The file name each backend loads from a version folder."""


def model_file(repository: str, model: TritonModel) -> str:
    return f"{repository}/{model.name}/{model.version}/{MODEL_FILES[model.backend]}"


@deploy("Triton Inference Server")
def serve(spec: HostSpec) -> None:
    """
    Converge Triton on a GPU node that enables it.

    .. code:: python

        serve(host_spec())
    """
    settings = spec.triton
    if not settings.enabled:
        host.noop("triton.enabled is false")
        return

    # 1. The repository: one folder per model, its config and its versioned file.
    files.directory(name="Model repository", path=settings.repository, mode="755")
    changed = []
    for model in settings.models:
        folder = f"{settings.repository}/{model.name}"
        files.directory(
            name=f"{model.name} version {model.version}",
            path=f"{folder}/{model.version}",
            mode="755",
        )
        changed.append(
            files.template(
                name=f"{model.name} config.pbtxt",
                src=template("triton/config.pbtxt.j2"),
                dest=f"{folder}/config.pbtxt",
                mode="644",
                name_=model.name,
                backend=model.backend,
                max_batch_size=model.max_batch_size,
                instances=model.instances,
                version=model.version,
            )
        )
        destination = model_file(settings.repository, model)
        if model.source.startswith("/"):
            if not host.get_fact(File, path=model.source):
                raise DeployError(
                    f"{spec.name}: triton.models: {model.source} is not on the host; copy it "
                    "there or give its URL and sha256 as the model's source"
                )
            if host.get_fact(File, path=destination):
                host.noop(f"{destination} is in place (a new file goes in a new version)")
            else:
                changed.append(
                    server.shell(
                        name=f"{model.name} file from {model.source}",
                        commands=[f"cp -p {model.source} {destination}"],
                    )
                )
        else:
            changed.append(
                downloads.verified_download(
                    name=f"Download {model.name}",
                    src=model.source,
                    dest=destination,
                    sha256=model.sha256 or "",  # the inventory check requires it for a URL
                )
            )

    image = settings.image
    if image is None:
        # Never a tag alone: what runs must be what was checked, and no default is pinned.
        host.noop(
            "triton.image is not set: Triton is not installed until it names NGC's image "
            "pinned by digest, e.g. 'nvcr.io/nvidia/tritonserver:26.07-py3@sha256:<digest>' "
            "(26.04 or newer: older releases are affected by NVIDIA security bulletins 5687 "
            "and 5828); 'docker buildx imagetools inspect IMAGE' or 'skopeo inspect "
            "docker://IMAGE' prints the digest"
        )
        return

    # 2. The server; its image pulled once; restarted when the repository changed.
    unit = files.template(
        name="Triton unit",
        src=template("triton/triton.service.j2"),
        dest="/etc/systemd/system/triton.service",
        mode="644",
        image=image,
        repository=settings.repository,
        http_port=settings.http_port,
        grpc_port=settings.grpc_port,
        metrics_port=settings.metrics_port,
        memory=memory_size(plan_host(spec, fleet_catalogue()).memory_max_gb[TRITON.name]),
        sandbox=sandbox.docker_client(),
    )
    login, key_file = None, None
    reference = dict(TRITON.secret_environment(spec)).get(NGC_API_KEY.variable)
    if reference:
        vault = fleet_vault(fleet_specs())
        key_file = config.config_file(
            name="NGC API key (0600, root's: Docker logs in with it; from the secret store)",
            dest=ENV_FILE,
            render=lambda: f"{NGC_API_KEY.variable}={read_secret(reference, vault)}\n",
            mode="600",
        )
        login = RegistryLogin(registry(image), NGC_USER, ENV_FILE, NGC_API_KEY.variable)
    pull_image(image, unit, login, key_file)
    started, restarted = run_unit(TRITON.service, unit, *changed)
    wait_until_answering(
        "Triton is ready (every model loaded)",
        f"http://127.0.0.1:{settings.http_port}",
        "/v2/health/ready",
        600,
        started,
        restarted,
    )
