"""Inference servers: Ollama, llama.cpp and vLLM, each from the host's model placements.

Runbook each replaces, the startup sequence the fleet lacked: know the GPU; fetch the server
and the weights, verified; write the unit; start; wait for health; warm every model up with
one completion and record its first-token time and speed; fail loudly if a model does not
answer. A converged host does none of the last steps again: they follow a (re)start only.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from gpufleet import engines
from gpufleet.facts.gpu import detected_gpus, require_gpu
from gpufleet.facts.ollama import OllamaModels, missing_models
from gpufleet.inventory import fleet_specs
from gpufleet.models import HostSpec, ModelPlacement
from gpufleet.operations import config, downloads, inference
from gpufleet.paths import template
from gpufleet.roles.baseline import run_unit
from gpufleet.secrets import read_secret
from gpufleet.vault import fleet_vault

BUILD_PACKAGES = ["cmake", "ninja-build", "g++", "python3"]
OLLAMA_DROP_IN = "/etc/systemd/system/ollama.service.d/override.conf"


def download_tools() -> None:
    """What pyinfra's downloads and the warm-up need on a host that has no GPU role to bring
    them (a CPU node serving a backup model)."""
    apt.packages(
        name="Download tools",
        packages=["curl", "ca-certificates", "python3"],
        no_recommends=True,
    )


def warm_up_tool() -> OperationMeta:
    return files.put(
        name="Warm-up tool",
        src=str(Path(__file__).parents[1] / "warmup.py"),
        dest=inference.WARMUP_SCRIPT,
        mode="755",
    )


def wait_until_answering(
    name: str, base_url: str, health_path: str, timeout: int, *starts: OperationMeta
) -> None:
    """After any of ``starts`` changed something, wait on the host until the service answers
    ``health_path`` (the warm-up tool does the asking)."""
    warm_up_tool()
    inference.answering(
        name=name,
        base_url=base_url,
        health_path=health_path,
        timeout=timeout,
        _if=any_changed(*starts),
    )


def configured_not_started(service: str, unit_ops: list[OperationMeta], why: str) -> None:
    """The service's unit is in place but what it runs is not: enable it, start nothing."""
    systemd.daemon_reload(name="Reload systemd units", _if=any_changed(*unit_ops))
    systemd.service(name=f"Enable {service}", service=service, enabled=True, running=None)
    host.noop(f"{why}: {service} is configured and starts once that is there")


def restart_and_warm_up(
    service: str,
    unit_changed: OperationMeta,
    config_changed: list[OperationMeta],
    base_url: str,
    health_path: str,
    models: list[str],
    api_key_env: str | None = None,
    env_file: str | None = None,
) -> list[OperationMeta]:
    """Start, restart on change, then warm each model up after any (re)start. Returns the
    operations that (re)start the service, for steps that must follow a start too."""
    started, restarted = run_unit(service, unit_changed, *config_changed)
    for model in models:
        inference.warmed_up(
            name=f"Warm up {model}",
            base_url=base_url,
            health_path=health_path,
            model=model,
            api_key_env=api_key_env,
            env_file=env_file,
            _if=any_changed(started, restarted),
        )
    return [started, restarted]


@deploy("llama.cpp")
def llama_cpp(spec: HostSpec) -> None:
    """
    Build or install ``llama-server`` and serve the host's llama.cpp model with it.

    .. code:: python

        llama_cpp(host_spec())
    """
    placements = engines.placements(spec, "llama.cpp")
    if not placements:
        host.noop("no llama.cpp model placed on this host")
        return
    placement = placements[0]
    gpu = bool(detected_gpus()["pci"]) and spec.hardware.nvidia_gpu_count > 0

    # 1. The server: a given binary, or built from the verified source.
    if spec.llamacpp_binary_url:
        assert spec.llamacpp_binary_sha256 is not None  # the inventory check requires it
        binary = downloads.verified_download(
            name="Download llama-server",
            src=spec.llamacpp_binary_url,
            dest=engines.LLAMA_SERVER,
            sha256=spec.llamacpp_binary_sha256,
            mode="755",
        )
    else:
        packages = [*BUILD_PACKAGES, *(["ccache"] if spec.llamacpp_ccache else [])]
        packages += ["nvidia-cuda-toolkit"] if gpu else []
        apt.packages(name="llama.cpp build tools", packages=packages, no_recommends=True)
        assert spec.llamacpp_source_sha256 is not None  # the inventory check requires it
        tarball = f"{inference.BUILD_ROOT}/llama.cpp-{spec.llamacpp_source_sha256[:12]}.tar.gz"
        files.directory(name="llama.cpp build folder", path=inference.BUILD_ROOT)
        downloads.verified_download(
            name="Download the llama.cpp source",
            src=spec.llamacpp_source_url,
            dest=tarball,
            sha256=spec.llamacpp_source_sha256,
        )
        binary = inference.llama_server_built(
            name=f"Build llama-server ({'CUDA' if gpu else 'CPU'})",
            tarball=tarball,
            source_sha256=spec.llamacpp_source_sha256,
            subdir=spec.llamacpp_source_subdir,
            cmake_flags=["-DGGML_CUDA=ON"] if gpu else ["-DGGML_NATIVE=OFF"],
            ccache=spec.llamacpp_ccache,
            jobs=spec.hardware.cores,
        )

    # 2. The weights, verified; or a file already on the host.
    model = model_file(placement)

    # 3. The unit, with the planned flags.
    warm_up_tool()
    unit = files.template(
        name="llama-server unit",
        src=template("llamacpp/llama-server.service.j2"),
        dest="/etc/systemd/system/llama-server.service",
        mode="644",
        served=engines.served_name(placement),
        run_as=spec.service_user,
        command=engines.llama_server_command(spec, placement),
    )
    restart_and_warm_up(
        "llama-server",
        unit_changed=unit,
        config_changed=[binary, *([model] if model else [])],
        base_url=f"http://127.0.0.1:{spec.llamacpp_port}",
        health_path="/health",
        models=[engines.served_name(placement)],
    )


def model_file(placement: ModelPlacement) -> OperationMeta | None:
    path = engines.gguf_path(placement)
    if placement.source and placement.source.startswith(("http://", "https://")):
        files.directory(name="llama.cpp models folder", path=engines.LLAMACPP_MODELS)
        assert placement.sha256 is not None  # the inventory check requires it
        return downloads.verified_download(
            name=f"Download {engines.served_name(placement)}",
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


@deploy("Ollama")
def ollama(spec: HostSpec) -> None:
    """
    Install Ollama, configure it through a systemd drop-in, pull the placed models that are
    missing and create their aliases.

    .. code:: python

        ollama(host_spec())
    """
    placements = engines.placements(spec, "ollama")
    if not placements:
        host.noop("no Ollama model placed on this host")
        return

    server.user(
        name="ollama user",
        user="ollama",
        system=True,
        home="/usr/share/ollama",
        shell="/usr/sbin/nologin",
        create_home=True,
    )
    if spec.ollama_sha256:
        arch = "arm64" if spec.arch == "aarch64" else "amd64"
        archive = f"/var/cache/gpufleet/ollama-{spec.ollama_version}.tgz"
        files.directory(name="Download folder", path="/var/cache/gpufleet")
        download = downloads.verified_download(
            name=f"Download Ollama {spec.ollama_version}",
            src=spec.ollama_url.format(version=spec.ollama_version, arch=arch),
            dest=archive,
            sha256=spec.ollama_sha256,
        )
        binary = server.shell(
            name=f"Unpack Ollama {spec.ollama_version} into /usr/local",
            commands=[f"tar -xzf {archive} -C /usr/local"],
            _if=download.did_change,
        )
    else:
        binary = None
    installed = bool(spec.ollama_sha256) or bool(host.get_fact(File, path=engines.OLLAMA_BINARY))

    unit = files.template(
        name="Ollama unit",
        src=template("ollama/ollama.service.j2"),
        dest="/etc/systemd/system/ollama.service",
        mode="644",
        binary=engines.OLLAMA_BINARY,
    )
    drop_in = files.template(
        name="Ollama settings (drop-in)",
        src=template("ollama/override.conf.j2"),
        dest=OLLAMA_DROP_IN,
        mode="644",
        environment=engines.ollama_environment(spec),
    )
    if not installed:
        configured_not_started(
            "ollama",
            [unit, drop_in],
            f"no Ollama binary at {engines.OLLAMA_BINARY} and no ollama_sha256 to install one",
        )
        return
    warm_up_tool()
    base_url = f"http://127.0.0.1:{spec.ollama_port}"
    starts = restart_and_warm_up(
        "ollama",
        unit_changed=unit,
        config_changed=[drop_in, *([binary] if binary else [])],
        base_url=base_url,
        health_path="/api/version",
        models=[],  # warmed up below, once pulled
    )
    listed = host.get_fact(OllamaModels) or set()
    fetched = [
        server.shell(name=f"Pull {tag}", commands=[f"ollama pull {tag}"])
        for tag in missing_models([p.model for p in placements], listed)
    ]
    fetched += [
        server.shell(name=f"Alias {p.alias}", commands=[f"ollama cp {p.model} {p.alias}"])
        for p in placements
        if p.alias and missing_models([p.alias], listed)
    ]
    for placement in placements:
        inference.warmed_up(
            name=f"Warm up {engines.served_name(placement)}",
            base_url=base_url,
            health_path="/api/version",
            model=engines.served_name(placement),
            _if=any_changed(*starts, *fetched),
        )


@deploy("vLLM")
def vllm(spec: HostSpec) -> None:
    """
    Install vLLM (a pinned venv, or the container image through the NVIDIA runtime) and
    serve the host's vLLM model, its API key read from the secret store.

    .. code:: python

        vllm(host_spec())
    """
    placements = engines.placements(spec, "vllm")
    if not placements:
        host.noop("no vLLM model placed on this host")
        return
    require_gpu(
        spec.nvidia_driver.force,
        "models",
        "vLLM needs one: serve the model with llama.cpp or Ollama, or place it on a GPU node",
    )
    placement = placements[0]
    has_vllm = bool(host.get_fact(File, path=f"{engines.VLLM_VENV}/bin/vllm"))
    vault = fleet_vault(fleet_specs())
    env_file = config.config_file(
        name="vLLM API key (0640, readable by the service user; from the secret store)",
        dest=engines.VLLM_ENV_FILE,
        render=lambda: f"VLLM_API_KEY={read_secret(spec.secrets['vllm_api_key'], vault)}\n",
        owner="root",
        group=spec.service_user,
        mode="640",
    )
    if spec.vllm_install in ("venv", "present"):
        installed = None
        if spec.vllm_install == "venv" and not has_vllm:
            apt.packages(name="Python venv", packages=["python3-venv"], no_recommends=True)
            index = f" --index-url {spec.vllm_pip_index}" if spec.vllm_pip_index else ""
            installed = server.shell(
                name=f"vLLM {spec.vllm_version} in {engines.VLLM_VENV}",
                commands=[
                    f"python3 -m venv {engines.VLLM_VENV}",
                    f"{engines.VLLM_VENV}/bin/pip install -q{index} vllm=={spec.vllm_version}",
                ],
            )
        command = engines.vllm_command(spec, placement)
    else:
        installed = None
        image = f"{spec.vllm_image}:v{spec.vllm_version}"
        command = [
            "/usr/bin/docker", "run", "--rm", "--name", "vllm", "--entrypoint", "vllm",
            "--runtime", "nvidia", "--gpus", "all", "--ipc", "host",
            "--env-file", engines.VLLM_ENV_FILE,
            "-p", f"{spec.vllm_port}:{spec.vllm_port}",
            "-v", "/var/lib/vllm/huggingface:/root/.cache/huggingface",
            image, *engines.vllm_command(spec, placement)[1:],
        ]  # fmt: skip
    unit = files.template(
        name="vLLM unit",
        src=template("vllm/vllm.service.j2"),
        dest="/etc/systemd/system/vllm.service",
        mode="644",
        served=engines.served_name(placement),
        run_as="root" if spec.vllm_install == "container" else spec.service_user,
        env_file=engines.VLLM_ENV_FILE,
        command=command,
        after_docker=spec.vllm_install == "container",
    )
    if spec.vllm_install == "present" and not has_vllm:
        configured_not_started(
            "vllm", [unit], f"vllm_install is 'present' but {engines.VLLM_VENV}/bin/vllm is missing"
        )
        return
    warm_up_tool()
    restart_and_warm_up(
        "vllm",
        unit_changed=unit,
        config_changed=[env_file, *([installed] if installed else [])],
        base_url=f"http://127.0.0.1:{spec.vllm_port}",
        health_path="/health",
        models=[engines.served_name(placement)],
        api_key_env="VLLM_API_KEY",
        env_file=engines.VLLM_ENV_FILE,
    )
