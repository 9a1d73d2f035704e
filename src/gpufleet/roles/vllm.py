"""vLLM: install it (a pinned venv, or the container image through the NVIDIA runtime) and
serve the host's vLLM model with the flags the planner decided, its API key (and a Hugging
Face token for gated weights) read from the secret store into a 0640 environment file, its
system memory held to the planner's limit.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server

from gpufleet import sandbox
from gpufleet.engines import memory_size, served_name
from gpufleet.engines.vllm import API_KEY_ENV, ENV_FILE, VENV, VLLM
from gpufleet.facts.gpu import require_gpu
from gpufleet.models import HostSpec
from gpufleet.paths import template
from gpufleet.roles.steps import (
    configured_not_started,
    engine_secret_file,
    restart_and_warm_up,
    warm_up_tool,
)
from gpufleet.serving import placement_runs

DATA = "/var/lib/vllm"
"""vLLM's Hugging Face cache lives here (HF_HOME in the unit)."""


@deploy("vLLM")
def serve(spec: HostSpec) -> None:
    """
    Install vLLM (a pinned venv, or the container image through the NVIDIA runtime) and
    serve the host's vLLM model, its API key read from the secret store.

    .. code:: python

        serve(host_spec())
    """
    runs = placement_runs(spec, VLLM)
    if not runs:
        host.noop("no vLLM model placed on this host")
        return
    require_gpu(
        spec.nvidia_driver.force,
        "models",
        "vLLM needs one: serve the model with llama.cpp or Ollama, or place it on a GPU node",
    )
    run = runs[0]
    settings = spec.vllm
    has_vllm = bool(host.get_fact(File, path=f"{VENV}/bin/vllm"))
    env_file = engine_secret_file("vLLM", ENV_FILE, VLLM.secret_environment(spec), spec)
    command = list(run.rendered.command)
    memory = memory_size(run.decision.memory_max_gb)
    installed = None
    if settings.install == "venv" and not has_vllm:
        apt.packages(name="Python venv", packages=["python3-venv"], no_recommends=True)
        # vLLM is held at one version, not hash-locked: its dependency set (torch and the
        # CUDA wheels) differs by platform and release, and a lock not resolved on the host's
        # own platform would refuse to install. The install image (``install: container``)
        # is the pinned-by-digest alternative.
        index = f" --index-url {shlex.quote(settings.pip_index)}" if settings.pip_index else ""
        installed = server.shell(
            name=f"vLLM {settings.version} in {VENV}",
            commands=[
                f"python3 -m venv {VENV}",
                f"{VENV}/bin/pip install -q{index} vllm=={settings.version}",
            ],
        )
    if settings.install == "container":
        image = settings.image
        command = [
            "/usr/bin/docker", "run", "--rm", "--name", VLLM.service, "--entrypoint", "vllm",
            "--runtime", "nvidia", "--gpus", "all", "--ipc", "host",
            "--env-file", ENV_FILE, "--memory", memory,
            # Docker publishes the port where the decision says vLLM listens; inside its
            # own network namespace vLLM listens on every address of the container.
            "-p", f"{settings.address}:{settings.port}:{settings.port}",
            "-v", "/var/lib/vllm/huggingface:/root/.cache/huggingface",
            image, *inside_container(command[1:]),
        ]  # fmt: skip
    unit = files.template(
        name="vLLM unit",
        src=template("vllm/vllm.service.j2"),
        dest=f"/etc/systemd/system/{VLLM.service}.service",
        mode="644",
        served=served_name(run.placement),
        run_as="root" if settings.install == "container" else spec.service_user,
        env_file=ENV_FILE,
        command=command,
        after_docker=settings.install == "container",
        # A container's memory is held by docker run --memory, not by the client's unit.
        memory_max=None if settings.install == "container" else memory,
        sandbox=sandbox.vllm(
            settings.install == "container",
            f"/var/lib/{spec.service_user}",
            DATA,
            spec.hardware.nvidia_gpu_count,
        ),
    )
    if settings.install == "present" and not has_vllm:
        configured_not_started(
            VLLM.service, [unit], f"vllm.install is 'present' but {VENV}/bin/vllm is missing"
        )
        return
    warm_up_tool()
    restart_and_warm_up(
        VLLM.service,
        unit_changed=unit,
        config_changed=[env_file, *([installed] if installed else [])],
        base_url=VLLM.local_url(spec),
        health_path=VLLM.health_path,
        models=[(served_name(run.placement), VLLM.warm_up_path(run.decision.kind))],
        api_key_env=API_KEY_ENV,
        env_file=ENV_FILE,
    )


def inside_container(arguments: list[str]) -> list[str]:
    """``vllm serve`` arguments for the container: ``--host`` every address of its own
    network namespace (the host side is Docker's ``-p``)."""
    hosts = [i + 1 for i, a in enumerate(arguments) if a == "--host"]
    return [("0.0.0.0" if i in hosts else a) for i, a in enumerate(arguments)]
