"""vLLM: install it (a pinned venv, or the container image through the NVIDIA runtime) and
serve the host's vLLM model with the flags the planner decided, its API key (and a Hugging
Face token for gated weights) read from the secret store into a 0640 environment file, its
system memory held to the planner's limit. A model split across hosts (``ray_workers``) runs
on a Ray cluster: a Ray node on every host of it, the head where vLLM serves the model, all
of them presenting the cluster's token.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server

from gpufleet import sandbox
from gpufleet.engines import memory_size, served_name
from gpufleet.engines.vllm import (
    API_KEY_ENV,
    ENV_FILE,
    HF_TOKEN,
    RAY_ENV_FILE,
    RAY_SERVICE,
    RAY_TOKEN,
    VENV,
    VLLM,
)
from gpufleet.facts.gpu import require_gpu
from gpufleet.inventory import fleet_specs
from gpufleet.models import HostSpec
from gpufleet.operations import inference
from gpufleet.paths import template
from gpufleet.roles.steps import (
    configured_not_started,
    engine_secret_file,
    removed_when_dropped,
    restart_and_warm_up,
    run_unit,
    warm_up_tool,
)
from gpufleet.serving import RayNodeRun, placement_runs, ray_node_run

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
    fleet = fleet_specs()
    runs = placement_runs(spec, VLLM, fleet=fleet)
    node = ray_node_run(spec, fleet)
    if not runs and node is None:
        host.noop("no vLLM model placed on this host")
        remove_dropped(spec, [], [])
        return
    require_gpu(
        spec.nvidia_driver.force,
        "models",
        "vLLM needs one: serve the model with llama.cpp or Ollama, or place it on a GPU node",
    )
    settings = spec.vllm

    # 1. vLLM (and Ray, on a host of a cluster) in its venv, unless it is there.
    installed = install(spec, node)

    # 2. The host's Ray node, up before vLLM drives the cluster from the head.
    if node is not None:
        ray_node(spec, node, installed)
    if not runs:
        remove_dropped(spec, [RAY_SERVICE], [RAY_ENV_FILE])
        return
    run = runs[0]

    # 3. The server, with the planned flags and its secrets from the environment file.
    has_vllm = bool(host.get_fact(File, path=f"{VENV}/bin/vllm"))
    env_file = engine_secret_file("vLLM", ENV_FILE, VLLM.secret_environment(spec), spec)
    command = list(run.rendered.command)
    memory = memory_size(run.decision.memory_max_gb)
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
        environment=plain_environment(run.rendered.environment),
        ray={"env_file": RAY_ENV_FILE} if node is not None else None,
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
    # What this host runs of vLLM, recorded so that what the inventory drops is removed.
    units = [VLLM.service, *([RAY_SERVICE] if node is not None else [])]
    kept_files = [ENV_FILE, *([RAY_ENV_FILE] if node is not None else [])]
    if settings.install == "present" and not has_vllm:
        configured_not_started(
            VLLM.service, [unit], f"vllm.install is 'present' but {VENV}/bin/vllm is missing"
        )
        remove_dropped(spec, units, kept_files)
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
    # What an earlier run put here that the inventory dropped (the Ray node of a cluster
    # this host left), once this host serves what it names.
    remove_dropped(spec, units, kept_files)


def remove_dropped(spec: HostSpec, units: list[str], kept_files: list[str]) -> None:
    """Absent means removed, for vLLM: its server and Ray units and their secret files that
    an earlier run recorded and the inventory no longer names. The venv, the image and
    the downloaded weights stay (one reinstall or download less, if it comes back)."""
    removed_when_dropped(spec, "vLLM", units, kept_files, within=("/etc/gpufleet",))


SECRET_VARIABLES = {secret.variable for secret in (*VLLM.secret_env, RAY_TOKEN)}


def plain_environment(environment: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """The rendered environment without its secrets, which the environment files hold."""
    return [(name, value) for name, value in environment if name not in SECRET_VARIABLES]


def install(spec: HostSpec, node: RayNodeRun | None) -> OperationMeta | None:
    """vLLM in its venv where ``install: venv`` and it is not there yet, and, on a host of a
    Ray cluster, the cluster's Ray release beside it. Returns the install, if any."""
    settings = spec.vllm
    if settings.install != "venv":
        return None
    has_vllm = bool(host.get_fact(File, path=f"{VENV}/bin/vllm"))
    has_ray = node is None or bool(host.get_fact(File, path=f"{VENV}/bin/ray"))
    if has_vllm and has_ray:
        return None
    apt.packages(name="Python venv", packages=["python3-venv"], no_recommends=True)
    # vLLM is held at one version, not hash-locked: its dependency set (torch and the CUDA
    # wheels) differs by platform and release, and a lock not resolved on the host's own
    # platform would refuse to install. The install image (``install: container``) is the
    # pinned-by-digest alternative.
    index = f" --index-url {shlex.quote(settings.pip_index)}" if settings.pip_index else ""
    wanted = f"vllm=={settings.version}"
    if node is not None:
        wanted += f" 'ray[cgraph]=={settings.ray.version}'"
    return server.shell(
        name=f"vLLM {settings.version}{' and Ray ' + settings.ray.version if node else ''} "
        f"in {VENV}",
        commands=[f"python3 -m venv {VENV}", f"{VENV}/bin/pip install -q{index} {wanted}"],
    )


def ray_node(spec: HostSpec, node: RayNodeRun, installed: OperationMeta | None) -> None:
    """The host's Ray node: the cluster's token (and, on a worker, the Hugging Face token its
    stage downloads weights with) in a 0640 file, its unit (the planner's memory limit, the
    sandbox), started, restarted on a change; a worker that holds no connection to the head
    (the head restarted) is restarted, so it joins again. The firewall (the baseline's) lets
    in only the cluster's hosts."""
    secrets = [(RAY_TOKEN.variable, spec.secrets[RAY_TOKEN.secret])]
    if HF_TOKEN.secret in spec.secrets and not node.is_head:
        secrets.append((HF_TOKEN.variable, spec.secrets[HF_TOKEN.secret]))
    files.directory(name="gpufleet's config folder", path="/etc/gpufleet", mode="755")
    token = engine_secret_file("Ray node", RAY_ENV_FILE, tuple(secrets), spec)
    address = node.command[node.command.index("--node-ip-address") + 1]
    unit = files.template(
        name="Ray node unit",
        src=template("vllm/ray.service.j2"),
        dest=f"/etc/systemd/system/{RAY_SERVICE}.service",
        mode="644",
        role="head" if node.is_head else "worker",
        held=node.held,
        run_as=spec.service_user,
        env_file=RAY_ENV_FILE,
        environment=[("RAY_AUTH_MODE", "token"), ("VLLM_HOST_IP", address)],
        memory_max=memory_size(node.memory_max_gb),
        command=list(node.command),
        sandbox=sandbox.vllm(
            False, f"/var/lib/{spec.service_user}", DATA, spec.hardware.nvidia_gpu_count
        ),
    )
    started, restarted = run_unit(RAY_SERVICE, unit, token, *([installed] if installed else []))
    if not node.is_head:
        inference.rpc_connected(
            name="Ray node joined to the cluster's head",
            service=RAY_SERVICE,
            endpoints=[node.head],
            _if=lambda: not any(op.did_change() for op in (started, restarted)),
        )


def inside_container(arguments: list[str]) -> list[str]:
    """``vllm serve`` arguments for the container: ``--host`` every address of its own
    network namespace (the host side is Docker's ``-p``)."""
    hosts = [i + 1 for i, a in enumerate(arguments) if a == "--host"]
    return [("0.0.0.0" if i in hosts else a) for i, a in enumerate(arguments)]
