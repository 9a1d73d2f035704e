"""llama.cpp: build or install ``llama-server`` and serve the host's llama.cpp model with the
flags the planner decided (layers on the GPU, context, slots, threads).

Runbook it replaces: know the GPU; fetch the source and the weights, verified; build; write
the unit; start; wait for health; warm the model up and record its first-token time; fail
loudly if it does not answer. A converged host does none of the last steps again.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import File
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files

from gpufleet import nvidia, sandbox
from gpufleet.engines import memory_size, served_name
from gpufleet.engines.llamacpp import (
    API_KEY_ENV,
    ENV_FILE,
    LLAMA_SERVER,
    LLAMACPP,
    MODELS,
    builds_with_cuda,
    gguf_path,
)
from gpufleet.facts.gpu import detected_gpus
from gpufleet.models import HostSpec, ModelPlacement
from gpufleet.operations import downloads, inference
from gpufleet.paths import template
from gpufleet.roles.nvidia_driver import cuda_repository, release_of
from gpufleet.roles.steps import engine_secret_file, restart_and_warm_up, warm_up_tool
from gpufleet.serving import placement_runs

BUILD_PACKAGES = ["cmake", "ninja-build", "g++", "python3"]


@deploy("llama.cpp")
def serve(spec: HostSpec) -> None:
    """
    Build or install ``llama-server`` and serve the host's llama.cpp model with it.

    .. code:: python

        serve(host_spec())
    """
    runs = placement_runs(spec, LLAMACPP)
    if not runs:
        host.noop("no llama.cpp model placed on this host")
        return
    run = runs[0]
    settings = spec.llamacpp
    gpu = bool(detected_gpus()["pci"]) and builds_with_cuda(spec)
    toolkit = cuda_toolkit(spec) if gpu and not settings.binary_url else None

    # 1. The server: a given binary, or built from the verified source.
    if settings.binary_url:
        assert settings.binary_sha256 is not None  # the inventory check requires it
        binary = downloads.verified_download(
            name="Download llama-server",
            src=settings.binary_url,
            dest=LLAMA_SERVER,
            sha256=settings.binary_sha256,
            mode="755",
        )
    else:
        packages = [*BUILD_PACKAGES, *(["ccache"] if settings.ccache else [])]
        cmake_flags = ["-DGGML_NATIVE=OFF"]
        if toolkit is not None:
            if toolkit.from_cuda_repository:
                cuda_repository(spec, host.get_fact(LinuxDistribution))
            packages.append(toolkit.package)
            cmake_flags = [
                "-DGGML_CUDA=ON",
                f"-DCMAKE_CUDA_COMPILER={toolkit.nvcc}",
                # Only the host's cards: a build for every architecture takes far longer.
                f"-DCMAKE_CUDA_ARCHITECTURES={nvidia.cuda_architectures(nvidia.declared_cards(spec))}",
            ]
        apt.packages(name="llama.cpp build tools", packages=packages, no_recommends=True)
        assert settings.source_sha256 is not None  # the inventory check requires it
        tarball = f"{inference.BUILD_ROOT}/llama.cpp-{settings.source_sha256[:12]}.tar.gz"
        files.directory(
            name="llama.cpp build folder",
            path=inference.BUILD_ROOT,
            user="root",
            group="root",
            mode="755",
        )
        downloads.verified_download(
            name="Download the llama.cpp source",
            src=settings.source_url,
            dest=tarball,
            sha256=settings.source_sha256,
        )
        binary = inference.llama_server_built(
            name=f"Build llama-server ({'CUDA' if gpu else 'CPU'})",
            tarball=tarball,
            source_sha256=settings.source_sha256,
            subdir=settings.source_subdir,
            cmake_flags=cmake_flags,
            ccache=settings.ccache,
            jobs=spec.hardware.cores,
            _serial=settings.ccache and settings.ccache_shared,
        )

    # 2. The weights, verified; or a file already on the host.
    model = model_file(run.placement)

    # 3. The API key, where the host data names one (other hosts reach the server): read
    # from the secret store into a file only root and the service user can read.
    secret_environment = LLAMACPP.secret_environment(spec)
    keyed = bool(secret_environment)
    key_file = []
    if keyed:
        files.directory(name="gpufleet's config folder", path="/etc/gpufleet", mode="755")
        key_file = [engine_secret_file("llama-server", ENV_FILE, secret_environment, spec)]

    # 4. The unit, with the planned flags.
    warm_up_tool()
    unit = files.template(
        name="llama-server unit",
        src=template("llamacpp/llama-server.service.j2"),
        dest=f"/etc/systemd/system/{LLAMACPP.service}.service",
        mode="644",
        served=served_name(run.placement),
        run_as=spec.service_user,
        command=list(run.rendered.command),
        memory_max=memory_size(run.decision.memory_max_gb),
        env_file=ENV_FILE if keyed else None,
        sandbox=sandbox.llama_server(
            sandbox.host_gpu(spec) if gpu else "none",
            gguf_path(run.placement),
            spec.hardware.nvidia_gpu_count,
        ),
    )
    restart_and_warm_up(
        LLAMACPP.service,
        unit_changed=unit,
        config_changed=[binary, *([model] if model else []), *key_file],
        base_url=LLAMACPP.local_url(spec),
        health_path=LLAMACPP.health_path,
        models=[(served_name(run.placement), LLAMACPP.warm_up_path(run.decision.kind))],
        api_key_env=API_KEY_ENV if keyed else None,
        env_file=ENV_FILE if keyed else None,
    )


def cuda_toolkit(spec: HostSpec) -> nvidia.CudaToolkit:
    """The toolkit ``llamacpp.cuda_toolkit`` names, for this host's release; stops before
    any change when it cannot compile for a declared card (a release other than the one the
    inventory check assumed)."""
    distribution = host.get_fact(LinuxDistribution)
    toolkit = nvidia.cuda_toolkit(
        spec.llamacpp.cuda_toolkit, distribution["name"] or "", release_of(distribution)
    )
    problem = nvidia.toolkit_problem(toolkit, nvidia.declared_cards(spec))
    if problem:
        raise DeployError(f"{host.name}: llamacpp.cuda_toolkit: {problem}")
    return toolkit


def model_file(placement: ModelPlacement) -> OperationMeta | None:
    path = gguf_path(placement)
    if placement.source and placement.source.startswith(("http://", "https://")):
        # Root's, readable by the service: root downloads into it, the server only reads.
        files.directory(
            name="llama.cpp models folder", path=MODELS, user="root", group="root", mode="755"
        )
        assert placement.sha256 is not None  # the inventory check requires it
        return downloads.verified_download(
            name=f"Download {served_name(placement)}",
            src=placement.source,
            dest=path,
            sha256=placement.sha256,
            mode="644",
        )
    if not host.get_fact(File, path=path):
        raise DeployError(
            f"{host.name}: models: {path} is not on the host; copy it there or give its URL "
            "and sha256 as the placement's source"
        )
    return None
