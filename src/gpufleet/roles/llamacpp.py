"""llama.cpp: build or install ``llama-server`` and serve the host's llama.cpp model with the
flags the planner decided (layers on the GPU, context, slots, threads).

Runbook it replaces: know the GPU; fetch the source and the weights, verified; build; write
the unit; start; wait for health; warm the model up and record its first-token time; fail
loudly if it does not answer; remove what an earlier run put there that the inventory no
longer names. A converged host does none of the last steps again.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gevent.lock import Semaphore
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.api.operation import OperationMeta
from pyinfra.context import ctx_host
from pyinfra.facts.files import File
from pyinfra.facts.server import Arch, LinuxDistribution
from pyinfra.operations import apt, files
from pyinfra.operations.util import any_changed

from gpufleet import nvidia, sandbox
from gpufleet.engines import memory_size, served_name
from gpufleet.engines.llamacpp import (
    API_KEY_ENV,
    ENV_FILE,
    LLAMA_SERVER,
    LLAMACPP,
    MODELS,
    RPC_UNIT,
    VULKAN_WARM_UP_S,
    builds_from_source,
    builds_with_cuda,
    builds_with_vulkan,
    gguf_path,
    rpc_worker_names,
    vulkan_build_problem,
)
from gpufleet.facts.gpu import detected_gpus
from gpufleet.inventory import fleet_specs
from gpufleet.model_cache import cache_url
from gpufleet.models import HostSpec, ModelPlacement
from gpufleet.operations import downloads, inference
from gpufleet.operations.inference import BASE_FLAGS, build_stamp, cached_build
from gpufleet.paths import template
from gpufleet.roles.nvidia_driver import cuda_repository, release_of
from gpufleet.roles.steps import (
    engine_secret_file,
    removed_when_dropped,
    run_unit,
    warm_up,
    warm_up_tool,
)
from gpufleet.serving import RpcServerRun, placement_runs, rpc_server_run

BUILD_PACKAGES = ["cmake", "ninja-build", "g++", "python3"]
RUNTIME_PACKAGES = ["libgomp1"]
"""What a CPU build of llama-server needs to start on a host that did not compile it."""
VULKAN_BUILD_PACKAGES = ["libvulkan-dev", "glslc", "spirv-headers"]
"""What llama.cpp's Vulkan backend compiles with: the Vulkan headers and loader, the shader
compiler and the SPIR-V headers its shader generator includes."""
VULKAN_RUNTIME_PACKAGES = ["libvulkan1", "mesa-vulkan-drivers"]
"""What a Vulkan build runs with: the loader, and Mesa's drivers (RADV for AMD GPUs)."""


def uses_gpu(spec: HostSpec) -> bool:
    """llama-server (and ggml-rpc-server) open the host's GPU: an NVIDIA GPU the host shows
    and builds with CUDA for, or an AMD integrated GPU it builds with Vulkan for."""
    if builds_with_vulkan(spec):
        return True
    return bool(detected_gpus()["pci"]) and builds_with_cuda(spec)


@deploy("llama.cpp")
def serve(spec: HostSpec) -> None:
    """
    Build or install ``llama-server`` and serve the host's llama.cpp model with it.

    .. code:: python

        serve(host_spec())
    """
    fleet = fleet_specs()
    runs = placement_runs(spec, LLAMACPP, fleet=fleet)
    worker = rpc_server_run(spec, fleet)
    if not runs and worker is None:
        host.noop("no llama.cpp model placed on this host")
        remove_dropped(spec, [], [])
        return
    settings = spec.llamacpp
    gpu = uses_gpu(spec)

    # 1. The server: a given binary, or built from the verified source once per build key
    # among the hosts of this run and handed to the others through the control machine.
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
        binary = server_from_source(spec)

    # 2. Where this host holds layers of another host's model: its ggml-rpc-server, up
    # before any llama-server (re)starts, so a host that splits its model finds its workers.
    if worker is not None:
        rpc_worker(spec, worker, binary, gpu)
    if not runs:
        # No model here warms the build up: it is kept once the worker listens.
        trial_open = host.get_fact(File, path=inference.PREVIOUS_STAMP)
        inference.upgrade_kept(
            name="Keep the new llama.cpp build (ggml-rpc-server listens on it)",
            _if=None if trial_open else binary.did_change,
        )
        remove_dropped(spec, [RPC_UNIT], [])
        return
    run = runs[0]

    # 3. The weights, verified; or a file already on the host.
    model = model_file(run.placement, spec, fleet)

    # 4. The API key, where the host data names one (other hosts reach the server): read
    # from the secret store into a file only root and the service user can read.
    secret_environment = LLAMACPP.secret_environment(spec)
    keyed = bool(secret_environment)
    key_file = []
    if keyed:
        files.directory(name="gpufleet's config folder", path="/etc/gpufleet", mode="755")
        key_file = [engine_secret_file("llama-server", ENV_FILE, secret_environment, spec)]

    # 5. The unit, with the planned flags.
    warm_up_tool()
    unit = files.template(
        name="llama-server unit",
        src=template("llamacpp/llama-server.service.j2"),
        dest=f"/etc/systemd/system/{LLAMACPP.service}.service",
        mode="644",
        served=served_name(run.placement),
        run_as=spec.service_user,
        command=list(run.rendered.command),
        environment=list(run.rendered.environment),
        cache_directory=LLAMACPP.service if builds_with_vulkan(spec) else None,
        memory_max=memory_size(run.decision.memory_max_gb),
        env_file=ENV_FILE if keyed else None,
        sandbox=sandbox.llama_server(
            sandbox.host_gpu(spec) if gpu else "none",
            gguf_path(run.placement),
            spec.hardware.nvidia_gpu_count,
        ),
    )
    started, restarted = run_unit(
        LLAMACPP.service, unit, binary, *([model] if model else []), *key_file
    )
    starts = [started, restarted]
    workers = [part.endpoint for part in run.decision.rpc[1:]]
    if workers:
        # A worker that restarted (a new binary, a reboot) dropped the layers it held.
        starts.append(
            inference.rpc_connected(
                name="llama-server connected to its RPC workers",
                service=LLAMACPP.service,
                endpoints=workers,
                _if=lambda: not any(op.did_change() for op in (started, restarted)),
            )
        )
    warm_up(
        [(served_name(run.placement), LLAMACPP.warm_up_path(run.decision.kind))],
        LLAMACPP.local_url(spec),
        LLAMACPP.health_path,
        starts,
        API_KEY_ENV if keyed else None,
        ENV_FILE if keyed else None,
        timeout=VULKAN_WARM_UP_S if builds_with_vulkan(spec) else None,
        # A new build (an upgrade) is kept only once the model answers on it; else the
        # build it replaced is put back, and the run fails with the new one's log.
        services=[LLAMACPP.service, *([RPC_UNIT] if worker else [])],
    )

    # 7. What an earlier run put here that the inventory dropped (another model, the RPC
    # worker's part), once this host serves what it names.
    remove_dropped(
        spec,
        [LLAMACPP.service, *([RPC_UNIT] if worker else [])],
        [*downloaded_models(run.placement), *([ENV_FILE] if keyed else [])],
    )


def downloaded_models(placement: ModelPlacement) -> list[str]:
    """The GGUF file gpufleet downloaded for the placement; none for a file of the user's."""
    downloaded = (placement.source or "").startswith(("http://", "https://"))
    return [gguf_path(placement)] if downloaded else []


def remove_dropped(spec: HostSpec, units: list[str], kept_files: list[str]) -> None:
    """Absent means removed, for llama.cpp: the units and files an earlier run recorded and
    the inventory no longer names (a user's own GGUF file, never recorded, is never
    touched)."""
    removed_when_dropped(spec, "llama.cpp", units, kept_files, within=(MODELS, "/etc/gpufleet"))


def rpc_worker(spec: HostSpec, worker: RpcServerRun, binary: OperationMeta, gpu: bool) -> None:
    """``ggml-rpc-server`` for the layers this host holds of other hosts' models: its unit
    (the planner's memory limit, the sandbox), started, restarted with a new binary, and
    waited for until it listens. The firewall (the baseline's) lets in only those hosts."""
    unit = files.template(
        name="ggml-rpc-server unit",
        src=template("llamacpp/ggml-rpc-server.service.j2"),
        dest=f"/etc/systemd/system/{RPC_UNIT}.service",
        mode="644",
        held=worker.held,
        run_as=spec.service_user,
        command=list(worker.command),
        environment=list(worker.environment),
        cache_directory=RPC_UNIT if builds_with_vulkan(spec) else None,
        memory_max=memory_size(worker.memory_max_gb),
        sandbox=sandbox.rpc_server(sandbox.host_gpu(spec) if gpu else "none"),
    )
    started, restarted = run_unit(RPC_UNIT, unit, binary)
    inference.listening(
        name=f"{RPC_UNIT} listening",
        service=RPC_UNIT,
        port=spec.llamacpp.rpc_port,
        _if=any_changed(started, restarted),
    )


@dataclass(frozen=True)
class LlamaBuild:
    """What a host's llama-server is built from and for: its build key and the flags."""

    key: str
    cmake_flags: tuple[str, ...]
    toolkit: nvidia.CudaToolkit | None
    cache: str
    """The control machine's build cache the host's binary goes through."""
    vulkan: bool = False

    @property
    def kind(self) -> str:
        return "CUDA" if self.toolkit else "Vulkan" if self.vulkan else "CPU"

    @property
    def runtime_packages(self) -> list[str]:
        """What the binary needs at run time on a host that did not compile it."""
        return [
            *RUNTIME_PACKAGES,
            *([self.toolkit.package] if self.toolkit else []),
            *(VULKAN_RUNTIME_PACKAGES if self.vulkan else []),
        ]


@dataclass(frozen=True)
class BuildAssignment:
    """Who makes a host's binary in this run."""

    key: str
    builder: str | None
    """The host that compiles it; None where the control machine's cache holds it already."""
    builds: bool
    """This host compiles it (and keeps it in the control machine's cache)."""

    @property
    def origin(self) -> str:
        """Where a host that does not compile gets the binary, in words."""
        return f"built on {self.builder}" if self.builder else "from the control machine's cache"


def assign_builders(
    needs: list[tuple[str, str, str | None]],
    cached: set[str],
    stamped: frozenset[str] | set[str] = frozenset(),
) -> dict[str, BuildAssignment]:
    """Per host, who compiles its binary: ``needs`` is (host, build key (with the cache it
    goes through: hosts share a binary only through one cache), the host's
    ``llamacpp.build_host``) for every host of the run that builds llama-server from source,
    in inventory order; ``cached`` the keys the control machine keeps. A cached key is
    compiled by nobody. Otherwise exactly one host of each key compiles it: the build host a
    host of that key names, where that host needs the same key in this run, else the first
    host of the key that carries the build already (``stamped``: it compiles nothing, its
    binary is only fetched), else the first host of the key; every other host of the key
    installs its binary.

    >>> assign_builders([("a", "k", None), ("b", "k", "b"), ("c", "j", None)], set())["a"]
    BuildAssignment(key='k', builder='b', builds=False)
    >>> assign_builders([("a", "k", None), ("b", "k", None)], set(), stamped={"b"})["b"]
    BuildAssignment(key='k', builder='b', builds=True)
    """
    keys = {name: key for name, key, _ in needs}
    assigned = {}
    for key in dict.fromkeys(keys.values()):
        names = [name for name, k, _ in needs if k == key]
        named = [wanted for _, k, wanted in needs if k == key and keys.get(wanted or "") == key]
        carrying = [name for name in names if name in stamped]
        builder = None if key in cached else (named or carrying or names)[0]
        for name in names:
            assigned[name] = BuildAssignment(key, builder, name == builder)
    return assigned


def host_build(spec: HostSpec) -> LlamaBuild:
    """The build of the current host (``pyinfra.host``), from its facts: the CUDA toolkit and
    card architectures where it shows an NVIDIA GPU and builds with CUDA, Vulkan where it
    has an AMD integrated GPU; its CPU architecture, distribution and release."""
    settings = spec.llamacpp
    assert settings.source_sha256 is not None  # the inventory check requires it
    distribution = host.get_fact(LinuxDistribution)
    vulkan = builds_with_vulkan(spec)
    if vulkan and (
        problem := vulkan_build_problem(distribution["name"] or "", release_of(distribution))
    ):
        raise DeployError(f"{host.name}: hardware.accelerators: {problem}")
    gpu = not vulkan and bool(detected_gpus()["pci"]) and builds_with_cuda(spec)
    toolkit = cuda_toolkit(spec) if gpu else None
    cmake_flags = ["-DGGML_NATIVE=OFF"]
    if toolkit is not None:
        cmake_flags = [
            "-DGGML_CUDA=ON",
            f"-DCMAKE_CUDA_COMPILER={toolkit.nvcc}",
            # Only the host's cards: a build for every architecture takes far longer.
            f"-DCMAKE_CUDA_ARCHITECTURES={nvidia.cuda_architectures(nvidia.declared_cards(spec))}",
        ]
    elif vulkan:
        # Portable like the CPU build (GGML_NATIVE=OFF), with the Vulkan backend beside it.
        cmake_flags = ["-DGGML_NATIVE=OFF", "-DGGML_VULKAN=ON"]
    target = f"{distribution['name'] or ''} {release_of(distribution)}".strip()
    key = build_stamp(
        settings.source_sha256, [*BASE_FLAGS, *cmake_flags], host.get_fact(Arch), target
    )
    return LlamaBuild(key, tuple(cmake_flags), toolkit, build_cache(spec), vulkan)


def build_cache(spec: HostSpec) -> str:
    """The control machine's cache of built binaries (``llamacpp.build_cache``)."""
    if spec.llamacpp.build_cache:
        return spec.llamacpp.build_cache
    return str(Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "gpufleet/builds")


_run_builds: weakref.WeakKeyDictionary[object, dict[str, BuildAssignment]] = (
    weakref.WeakKeyDictionary()
)
_planning = Semaphore()


def run_builds() -> dict[str, BuildAssignment]:
    """Who compiles which binary in this run, over its hosts (pyinfra's active hosts: the
    inventory less what ``--limit`` leaves out and hosts that did not connect), read once per
    run from every such host's facts. A host whose build cannot be decided (a toolkit that
    cannot compile for its cards) is left out: its own deploy stops with the reason."""
    state = host.state
    with _planning:  # one greenlet reads the fleet's facts; the others wait for its answer
        if state not in _run_builds:
            specs = fleet_specs()
            workers = rpc_worker_names(specs)
            needs, caches, stamped = [], {}, set()
            for other in [h for h in state.inventory if h in state.active_hosts]:
                spec = specs.get(other.name)
                if spec is None or not builds_from_source(spec, workers):
                    continue
                try:
                    with ctx_host.use(other):
                        build = host_build(spec)
                except DeployError:
                    continue
                # One cache per key: hosts naming different caches do not share.
                shared = build.key + " " + build.cache
                needs.append((other.name, shared, spec.llamacpp.build_host))
                caches[shared] = build
                with ctx_host.use(other):
                    if inference.carries_build(build.key):
                        stamped.add(other.name)
            cached = {k for k, b in caches.items() if cached_build(b.cache, b.key)}
            _run_builds[state] = assign_builders(needs, cached, stamped)
    return _run_builds[state]


def server_from_source(spec: HostSpec) -> OperationMeta:
    """llama-server built for this host's key: compiled here when this host is the key's
    builder in this run, else installed from the control machine's cache, which the
    builder's operations (called above this one) fill first."""
    settings = spec.llamacpp
    build = host_build(spec)
    assigned = run_builds().get(spec.name)
    builds = assigned is None or assigned.builds
    if build.toolkit is not None and build.toolkit.from_cuda_repository:
        cuda_repository(spec, host.get_fact(LinuxDistribution))
    built: OperationMeta | None = None
    if builds:
        packages = [*BUILD_PACKAGES, *(["ccache"] if settings.ccache else [])]
        if build.toolkit is not None:
            packages.append(build.toolkit.package)
        if build.vulkan:
            packages += [*VULKAN_BUILD_PACKAGES, *VULKAN_RUNTIME_PACKAGES]
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
        built = inference.llama_server_built(
            name=f"Build llama-server ({build.kind})",
            tarball=tarball,
            source_sha256=settings.source_sha256,
            key=build.key,
            subdir=settings.source_subdir,
            cmake_flags=list(build.cmake_flags),
            ccache=settings.ccache,
            jobs=spec.hardware.cores,
            _serial=settings.ccache and settings.ccache_shared,
        )
        # Kept on the control machine for the other hosts of this key, in this run or a
        # later one (``--limit`` another host): none of them compiles it again.
        inference.llama_server_fetched(
            name=f"Keep llama-server ({build.kind}) built on {spec.name} on the control machine",
            key=build.key,
            cache=build.cache,
        )
    else:
        # What the binary needs at run time, not the compilers: OpenMP's runtime (llama.cpp
        # links it where the compiler has it, as GCC does), and the CUDA toolkit's libraries.
        apt.packages(
            name="llama.cpp runtime libraries",
            packages=build.runtime_packages,
            no_recommends=True,
        )
    # Called on the builder too, where it does nothing: pyinfra runs an operation only after
    # every operation that comes before it on any host, so this line makes every host of
    # the build install only once the builder's build and fetch (above) have run.
    builder = assigned.builder if assigned else spec.name
    installed = inference.llama_server_installed(
        name=f"Install llama-server ({build.kind}) {assigned.origin if assigned else ''}".strip(),
        key=build.key,
        builder=builder or "the control machine's cache",
        cache=build.cache,
    )
    return built if built is not None else installed


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


def model_file(
    placement: ModelPlacement, spec: HostSpec, fleet: Mapping[str, HostSpec]
) -> OperationMeta | None:
    """The placement's GGUF file on the host: downloaded and verified (from the fleet's
    model cache first, where there is one, else or failing that from its origin), or a file
    that must be there already."""
    path = gguf_path(placement)
    if placement.source and placement.source.startswith(("http://", "https://")):
        # Root's, readable by the service: root downloads into it, the server only reads.
        files.directory(
            name="llama.cpp models folder", path=MODELS, user="root", group="root", mode="755"
        )
        assert placement.sha256 is not None  # the inventory check requires it
        cached = cache_url(spec, fleet, placement.sha256)
        return downloads.verified_download(
            name=f"Download {served_name(placement)}",
            src=placement.source,
            dest=path,
            sha256=placement.sha256,
            mode="644",
            mirrors=[cached] if cached else None,
        )
    if not host.get_fact(File, path=path):
        raise DeployError(
            f"{host.name}: models: {path} is not on the host; copy it there or give its URL "
            "and sha256 as the placement's source"
        )
    return None
