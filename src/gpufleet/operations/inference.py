"""Operations for inference servers: building llama-server once per build key and sharing
the binary through the control machine, warming models up."""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

from pyinfra import host
from pyinfra.api import FactBase, FunctionCommand, OperationError, operation
from pyinfra.api.host import Host
from pyinfra.api.state import State
from pyinfra.facts.files import File, FileContents
from pyinfra.facts.systemd import SystemdStatus

from gpufleet.engines.llamacpp import LLAMA_SERVER, RPC_SERVER
from gpufleet.facts.system import EstablishedPeers
from gpufleet.paths import HOST_STATE, state_folder, state_record

BUILD_ROOT = "/var/cache/gpufleet/llama.cpp"
WARMUP_SCRIPT = "/usr/local/lib/gpufleet/warmup.py"
WARMUP_RECORDS = f"{HOST_STATE}/warmup"
WARM_UP_TIMEOUT_S = 300
"""How long a model may take to answer its first request after a (re)start."""
CHAT_REQUEST = "/v1/chat/completions"
"""What the warm-up tool asks when told nothing else: an OpenAI-compatible completion."""
BASE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    # ggml-rpc-server, and llama-server able to use it: a model split across hosts needs
    # both from one build on every host (the RPC protocol refuses another version).
    "-DGGML_RPC=ON",
)
CCACHE_FLAGS = ("-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache")


STAMP_FILE = f"{LLAMA_SERVER}.gpufleet-build"
"""Beside the installed binary: the build key it was made (or received) for."""
BINARIES = {"llama-server": LLAMA_SERVER, "ggml-rpc-server": RPC_SERVER}
"""What a build makes, by target, and where each is installed; built, kept and installed
together, under one stamp."""
CACHED_SHA256 = "llama-server.sha256"
"""In the control machine's cache, beside the binaries: the sha256 of each."""
PREVIOUS_BUILD = "/usr/local/lib/gpufleet/llama.cpp-previous"
"""While an upgrade is on trial: the binaries and stamp of the build it replaced, put back
when the new build does not warm up, removed once it does (:func:`warmed_up`)."""
PREVIOUS_STAMP = f"{PREVIOUS_BUILD}/build"
"""Written last when the previous build is kept: a trial is open where it is there."""


def build_stamp(
    source_sha256: str, cmake_flags: list[str], arch: str = "", distribution: str = ""
) -> str:
    """The build key of a llama-server binary: what it was made from (the source checksum and
    every CMake flag that shapes it, the CUDA compiler and architectures among them) and what
    it runs on (the CPU architecture, ``uname -m``; the distribution and release, whose glibc
    and libstdc++ it links against). Hosts with one key can run one binary; it is also the
    stamp recorded beside the installed binary. ccache's launcher flags are left out: they
    change how fast a build is, not what it makes."""
    shaping = [flag for flag in cmake_flags if flag not in CCACHE_FLAGS]
    return hashlib.sha256(
        " ".join([source_sha256, *shaping, arch, distribution]).encode()
    ).hexdigest()


def installed_build() -> str | None:
    """The build key the installed llama-server and ggml-rpc-server are stamped with; None
    where either binary or the stamp is missing."""
    recorded = host.get_fact(FileContents, path=STAMP_FILE)
    installed = all(host.get_fact(File, path=path) for path in BINARIES.values())
    return recorded[0] if installed and recorded else None


def carries_build(key: str) -> bool:
    """The installed llama-server was built (or received) for ``key``."""
    return installed_build() == key


def keeps_previous(key: str) -> bool:
    """Installing ``key`` here is an upgrade to try: another build is installed, and no
    trial is open already (that one keeps the build that last answered)."""
    installed = installed_build()
    if installed is None or installed == key:
        return False
    return not host.get_fact(File, path=PREVIOUS_STAMP)


def keep_previous() -> str:
    """Shell that keeps the installed build (binaries, then its stamp) in
    :data:`PREVIOUS_BUILD`, for the upgrade about to replace it."""
    copies = " && ".join(f"cp -p {path} {PREVIOUS_BUILD}/{name}" for name, path in BINARIES.items())
    return (
        f"rm -rf {PREVIOUS_BUILD} && mkdir -p {PREVIOUS_BUILD} && {copies}"
        f" && cp -p {STAMP_FILE} {PREVIOUS_STAMP}"
    )


@operation()
def llama_server_built(
    tarball: str,
    source_sha256: str,
    key: str,
    subdir: str = "",
    cmake_flags: list[str] | None = None,
    ccache: bool = False,
    jobs: int = 2,
):
    """
    Build ``llama-server`` and ``ggml-rpc-server`` from a llama.cpp source tarball and
    install them; binaries already built (or received) for the same build key are kept.
    Replacing another build, it keeps that one in :data:`PREVIOUS_BUILD` for the warm-up
    to put back (:func:`warmed_up`). The source and build folders have one path for every
    version, so ccache's objects of an earlier build are found again: an upgrade recompiles
    what changed.

    + tarball: the downloaded (and verified) source tarball on the host
    + source_sha256: its checksum
    + key: the build key (:func:`build_stamp` of the source, these flags and the host's
      architecture and release), recorded beside the binary
    + subdir: folder of the llama.cpp tree below the tarball's top folder
    + cmake_flags: extra CMake flags (``-DGGML_CUDA=ON`` on NVIDIA hosts)
    + ccache: compile through ccache (CCACHE_DIR=/var/cache/ccache)
    + jobs: parallel compile jobs

    .. code:: python

        inference.llama_server_built(
            tarball="/var/cache/gpufleet/llama.cpp/src.tar.gz", source_sha256="b0a2...",
            key=build_stamp("b0a2...", flags, "x86_64", "Debian 12"), subdir="llama.cpp",
            cmake_flags=["-DGGML_NATIVE=OFF"],
        )
    """
    if carries_build(key):
        host.noop(f"llama-server already built for {key[:12]} ({source_sha256[:12]}, these flags)")
        return
    flags = [*BASE_FLAGS, *(cmake_flags or []), *(CCACHE_FLAGS if ccache else ())]
    source = f"{BUILD_ROOT}/src"
    tree = f"{source}/{subdir}".rstrip("/")
    build = f"{BUILD_ROOT}/build"
    env = "CCACHE_DIR=/var/cache/ccache " if ccache else ""

    # Each step holds the build folder's lock: a run killed mid-step leaves that step going
    # on the host (no terminal, no hang-up), and the next run waits for it instead of
    # removing a folder it still writes into.
    def locked(command: str) -> str:
        return f"flock {BUILD_ROOT}/.lock sh -c {shlex.quote(command)}"

    yield f"mkdir -p {BUILD_ROOT} && " + locked(f"rm -rf {source} {build} && mkdir -p {source}")
    yield locked(f"tar -xzf {shlex.quote(tarball)} -C {source} --strip-components=1")
    yield locked(f"{env}cmake -S {tree} -B {build} -G Ninja {' '.join(flags)}")
    yield locked(f"{env}cmake --build {build} --target {' '.join(BINARIES)} -j {jobs}")
    if keeps_previous(key):
        yield keep_previous()
    for target, path in BINARIES.items():
        yield f"install -m 755 {build}/bin/{target} {path}"
    yield state_record(STAMP_FILE, key)
    yield locked(f"rm -rf {source} {build}")


def cached_build(cache: str, key: str) -> dict[str, str] | None:
    """The sha256 of each binary the control machine keeps for ``key`` in ``cache``, when all
    are there and still have the checksums recorded as they were fetched; None otherwise."""
    folder = Path(cache).expanduser() / key
    try:
        lines = (folder / CACHED_SHA256).read_text().splitlines()
        recorded = {name: digest for digest, name in (line.split() for line in lines)}
        found = {
            name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in BINARIES
        }
    except (OSError, ValueError):
        return None
    return found if all(recorded.get(name) == digest for name, digest in found.items()) else None


def _private_folder(path: Path) -> None:
    """``path`` and its parents made as needed; ``path`` itself only its owner's (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def _fetch(state: State, host: Host, key: str, cache: str) -> bool:
    """Copy the host's binaries (stamped ``key``) into the control machine's cache, with
    their sha256 as the host reports them; the copy counts only if every checksum agrees."""
    q = shlex.quote
    paths = " ".join(q(path) for path in BINARIES.values())
    ok, output = host.run_shell_command(
        f'test "$(cat {q(STAMP_FILE)})" = {q(key)} && sha256sum {paths}',
        print_output=False,
        print_input=False,
    )
    reported = (
        dict(line.split()[::-1] for line in output.stdout_lines if line.split()) if ok else {}
    )
    if set(reported) != set(BINARIES.values()):
        host.log_styled(
            f"llama-server on {host.name} is not the build {key[:12]} (its stamp differs or "
            "a binary is missing): nothing fetched",
            fg="red",
        )
        return False
    root = Path(cache).expanduser()
    _private_folder(root)
    folder = root / key
    _private_folder(folder)
    staged = {name: folder / f".{name}.fetching" for name in BINARIES}
    for name, path in BINARIES.items():
        if not host.get_file(path, str(staged[name])):
            return False
        digest = hashlib.sha256(staged[name].read_bytes()).hexdigest()
        if digest != reported[path]:
            for file in staged.values():
                file.unlink(missing_ok=True)
            host.log_styled(
                f"{name} fetched from {host.name} has sha256 {digest}, the host reports "
                f"{reported[path]}: not kept",
                fg="red",
            )
            return False
    for name, file in staged.items():
        file.chmod(0o600)
        file.replace(folder / name)
    (folder / CACHED_SHA256).write_text(
        "".join(f"{reported[path]}  {name}\n" for name, path in BINARIES.items())
    )
    return True


@operation()
def llama_server_fetched(key: str, cache: str):
    """
    Keep the host's llama-server and ggml-rpc-server, built for ``key``, in the control
    machine's build cache (``cache``/``key``/ with their sha256, the folders 0700), so that
    other hosts of the same key get them instead of compiling them; a cache already holding
    the key is kept.

    + key: the build key (:func:`build_stamp`); the host's stamp must say it
    + cache: the cache folder on the control machine (``~`` allowed)

    .. code:: python

        inference.llama_server_fetched(key="3ed9...", cache="~/.cache/gpufleet/builds")
    """
    if cached_build(cache, key):
        host.noop(f"the control machine keeps llama-server {key[:12]} already")
        return
    yield FunctionCommand(_fetch, (key, cache), {})


def _install_cached(
    state: State, host: Host, key: str, builder: str, cache: str, keep: bool
) -> bool:
    """Upload the cached binaries of ``key``, check their sha256 on the host, check that
    llama-server starts (its runtime libraries are there), then (``keep``: after keeping the
    installed build for the warm-up to put back) put them in place and stamp them."""
    q = shlex.quote
    digests = cached_build(cache, key)
    if digests is None:
        host.log_styled(
            f"llama-server {key[:12]}, built on {builder}, is not in the control machine's "
            f"cache {cache}: {builder}'s build or fetch failed, or has not run yet (with "
            f"--serial each host runs its whole deploy in turn): fix {builder}'s build, or "
            "run without --serial",
            fg="red",
        )
        return False
    staged = {name: f"{path}.gpufleet-new" for name, path in BINARIES.items()}
    for name in BINARIES:
        if not host.put_file(
            str(Path(cache).expanduser() / key / name),
            staged[name],
            print_output=False,
            print_input=False,
        ):
            return False
    checks = " ".join(q(f"{digests[name]}  {staged[name]}") for name in BINARIES)
    new = " ".join(q(path) for path in staged.values())
    installs = " && ".join(
        f"install -m 755 {q(staged[name])} {q(path)}" for name, path in BINARIES.items()
    )
    ok, output = host.run_shell_command(
        f"printf '%s\\n' {checks} | sha256sum --check --quiet && chmod 755 {new}"
        f" && {q(staged['llama-server'])} --version"
        f" && {keep_previous() + ' && ' if keep else ''}{installs}"
        f" && {state_record(STAMP_FILE, key)}; status=$?; rm -f {new}; exit $status",
        print_output=False,
        print_input=False,
    )
    if not ok:
        host.log_styled(
            f"llama-server {key[:12]} from {builder} was not installed (checksum or start "
            "failed); the previous binaries stay:\n" + "\n".join(output.stderr_lines[-8:]),
            fg="red",
        )
    return bool(ok)


@operation()
def llama_server_installed(key: str, builder: str, cache: str):
    """
    Install the llama-server and ggml-rpc-server built for ``key`` (on ``builder``) from the
    control machine's build cache: uploaded, their sha256 checked on the host, llama-server
    started once (``--version``) before they replace the old ones, then stamped. Replacing
    another build, it keeps that one in :data:`PREVIOUS_BUILD` for the warm-up to put back
    (:func:`warmed_up`). A host already stamped ``key`` is left alone.

    The cache is read when the operation runs, after the builder's build and fetch (called
    before it): while planning it may not hold the key yet. Where it still does not, the
    operation fails naming the builder.

    + key: the build key (:func:`build_stamp`)
    + builder: the host that builds it (or "the control machine's cache"); on the builder
      itself the operation does nothing (called there too, it orders every host's install
      after the build)
    + cache: the cache folder on the control machine

    .. code:: python

        inference.llama_server_installed(
            key="3ed9...", builder="gpu-1", cache="~/.cache/gpufleet/builds",
        )
    """
    if builder == host.name:
        host.noop(f"llama-server {key[:12]} is built on this host")
        return
    if carries_build(key):
        host.noop(f"llama-server {key[:12]} is installed")
        return
    yield FunctionCommand(_install_cached, (key, builder, cache, keeps_previous(key)), {})


@operation()
def warmed_up(
    base_url: str,
    health_path: str,
    model: str,
    timeout: int = WARM_UP_TIMEOUT_S,
    api_key_env: str | None = None,
    env_file: str | None = None,
    request_path: str = CHAT_REQUEST,
    services: list[str] | None = None,
):
    """
    Wait for a server to be healthy, then ask ``model`` one short question at
    ``request_path`` (an embedding model: one embedding at its embeddings path, as its engine
    says) and record the time to first token and the tokens per second in
    /var/lib/gpufleet/warmup/<model>.json.
    Fails the deploy, naming the model, when it does not answer within ``timeout`` seconds.
    Run it with ``_if`` on the service's restart: a converged host does not warm up again.

    + services: the units that run the host's llama.cpp build, the server first. Given,
      the wait ends as soon as the server exits (it restarted or failed), and a build on
      trial (an upgrade: :data:`PREVIOUS_BUILD` on the host) is decided here: kept when the
      model answers (the previous build removed), else put back (its binaries and stamp
      restored, these units restarted on it and the model warmed up on it), and the
      operation fails with the new build's log.

    .. code:: python

        inference.warmed_up(
            base_url="http://127.0.0.1:8080", health_path="/health", model="S-LOC-FRE-x",
            services=["llama-server"], _if=restart.did_change,
        )
    """
    arguments = [
        "python3", WARMUP_SCRIPT,
        "--base", base_url,
        "--health", health_path,
        "--model", model,
        "--record", f"{WARMUP_RECORDS}/{model}.json",
        "--timeout", str(timeout),
    ]  # fmt: skip
    if request_path != CHAT_REQUEST:
        arguments += ["--request", request_path]
    if api_key_env:
        arguments += ["--api-key-env", api_key_env]
    if services:
        arguments += ["--unit", services[0]]
    command = f"{state_folder(WARMUP_RECORDS)} && " + " ".join(shlex.quote(a) for a in arguments)
    if env_file:
        command = f"set -a && . {env_file} && set +a && {command}"
    yield _deciding_trial(command, services) if services else command


def _deciding_trial(warm_up: str, services: list[str]) -> str:
    """Shell that runs ``warm_up`` and, where a llama.cpp build is on trial, keeps it when
    the warm-up succeeds, else puts the previous build back under ``services`` and fails."""
    q = shlex.quote
    logs = " ".join(f"-u {q(service)}" for service in services)
    restore = " && ".join(
        f"mv -f {PREVIOUS_BUILD}/{name} {path}" for name, path in BINARIES.items()
    )
    failed = (
        f"llama.cpp build $(cut -c1-12 {STAMP_FILE}) did not warm up; build "
        f"$(cut -c1-12 {PREVIOUS_STAMP}) is put back. The log of the new build:"
    )
    return (
        f"warm_up() {{ {warm_up}; }}; "
        f"if ! test -e {PREVIOUS_STAMP}; then warm_up; "
        f"elif ( warm_up ); then rm -rf {PREVIOUS_BUILD}; "
        f'else echo "{failed}" >&2; journalctl {logs} -n 40 --no-pager -o cat >&2; '
        f"{restore} && mv -f {PREVIOUS_STAMP} {STAMP_FILE} && rm -rf {PREVIOUS_BUILD}"
        f" && systemctl restart {' '.join(q(service) for service in services)}"
        f" && ( warm_up ) >&2 && echo 'The previous build answers again.' >&2; exit 1; fi"
    )


@operation()
def upgrade_kept():
    """
    Keep a llama.cpp build on trial where no model warms it up (a host that only holds
    layers of another host's model in ``ggml-rpc-server``): the build it replaced is
    removed. Run it after the worker listens, with ``_if`` on the install.

    .. code:: python

        inference.upgrade_kept(_if=installed.did_change)
    """
    yield f"rm -rf {PREVIOUS_BUILD}"


@operation()
def answering(base_url: str, health_path: str, timeout: int = 120):
    """
    Wait until a service answers its health URL (200) from the host itself; fail the deploy
    naming the URL when it does not within ``timeout`` seconds. Use it with ``_if`` on a
    (re)start.

    .. code:: python

        inference.answering(base_url="http://127.0.0.1:4000", health_path="/health/liveliness",
                            _if=restarted.did_change)
    """
    arguments = ["python3", WARMUP_SCRIPT, "--base", base_url, "--health", health_path]
    yield " ".join(shlex.quote(a) for a in [*arguments, "--timeout", str(timeout)])


class HttpStatus(FactBase[int | None]):
    """HTTP status of a GET to ``url`` from the host itself (None when nothing answers)."""

    def command(self, url: str) -> str:
        return f"curl -s -o /dev/null -m 10 -w '%{{http_code}}' {shlex.quote(url)} || true"

    def process(self, output: list[str]) -> int | None:
        code = "".join(output).strip()
        return int(code) if code.isdigit() and code != "000" else None


@operation()
def healthy(service: str, url: str):
    """
    Check that a running inference server answers its health URL; changes nothing. A
    service that is not running (its binary not installed yet) is reported, not failed.

    .. code:: python

        inference.healthy(service="llama-server", url="http://127.0.0.1:8080/health")
    """
    if not host.get_fact(SystemdStatus, services=[service]).get(f"{service}.service"):
        host.noop(f"{service} is not running: not verified")
        return
    status = host.get_fact(HttpStatus, url=url)
    if status != 200:
        raise OperationError(f"{host.name}: {service} does not answer {url} (status {status})")
    host.noop(f"{service} answers {url}")
    yield from ()


@operation()
def listening(service: str, port: int, timeout: int = 60):
    """
    Wait until something listens on TCP ``port`` of the host (``ss``), for a service that
    has no health URL (``ggml-rpc-server``); fail the deploy naming the service when nothing
    does within ``timeout`` seconds. Use it with ``_if`` on a (re)start.

    .. code:: python

        inference.listening(service="ggml-rpc-server", port=50052, _if=restarted.did_change)
    """
    q = shlex.quote
    failed = f"{service} does not listen on port {port} after {timeout} s"
    yield (
        f"for _ in $(seq {int(timeout)}); do "
        f"ss -Hltn {q(f'sport = :{int(port)}')} | grep -q . && exit 0; sleep 1; done; "
        f"echo {q(failed)} >&2; journalctl -u {q(service)} -n 20 --no-pager >&2; exit 1"
    )


@operation()
def rpc_connected(service: str, endpoints: list[str]):
    """
    Restart ``service`` where it holds no connection to one of ``endpoints``
    (``address:port``) of the hosts it splits a model with: a llama-server whose worker's
    ``ggml-rpc-server`` restarted (and dropped the layers it held, which the server has to
    load again), or a Ray worker node that lost its head's GCS (and has to join again). Use
    the restart it reports to warm the model up again.

    .. code:: python

        inference.rpc_connected(service="llama-server", endpoints=["10.0.0.12:50052"])
    """
    established: list[str] = host.get_fact(EstablishedPeers)
    peers = set(established)
    lost = [endpoint for endpoint in endpoints if endpoint not in peers]
    if not lost:
        host.noop(f"{service} holds its workers' connections ({', '.join(endpoints)})")
        return
    yield f"systemctl restart {shlex.quote(service)}"
