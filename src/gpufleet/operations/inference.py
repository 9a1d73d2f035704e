"""Operations for inference servers: building llama-server, warming models up."""

from __future__ import annotations

import hashlib
import shlex

from pyinfra import host
from pyinfra.api import FactBase, OperationError, operation
from pyinfra.facts.files import File, FileContents
from pyinfra.facts.systemd import SystemdStatus

from gpufleet.engines.llamacpp import LLAMA_SERVER
from gpufleet.paths import HOST_STATE, state_folder, state_record

BUILD_ROOT = "/var/cache/gpufleet/llama.cpp"
WARMUP_SCRIPT = "/usr/local/lib/gpufleet/warmup.py"
WARMUP_RECORDS = f"{HOST_STATE}/warmup"
CHAT_REQUEST = "/v1/chat/completions"
"""What the warm-up tool asks when told nothing else: an OpenAI-compatible completion."""
BASE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)
CCACHE_FLAGS = ("-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache")


def build_stamp(source_sha256: str, cmake_flags: list[str]) -> str:
    """What a built llama-server was made from: the source checksum and the build flags."""
    return hashlib.sha256(" ".join([source_sha256, *cmake_flags]).encode()).hexdigest()


@operation()
def llama_server_built(
    tarball: str,
    source_sha256: str,
    subdir: str = "",
    cmake_flags: list[str] | None = None,
    ccache: bool = False,
    jobs: int = 2,
):
    """
    Build ``llama-server`` from a llama.cpp source tarball and install it; a binary built
    from the same source with the same flags is kept.

    + tarball: the downloaded (and verified) source tarball on the host
    + source_sha256: its checksum, part of what decides whether to rebuild
    + subdir: folder of the llama.cpp tree below the tarball's top folder
    + cmake_flags: extra CMake flags (``-DGGML_CUDA=ON`` on NVIDIA hosts)
    + ccache: compile through ccache (CCACHE_DIR=/var/cache/ccache)
    + jobs: parallel compile jobs

    .. code:: python

        inference.llama_server_built(
            tarball="/var/cache/gpufleet/llama.cpp/src.tar.gz",
            source_sha256="b0a2...", subdir="llama.cpp", cmake_flags=["-DGGML_NATIVE=OFF"],
        )
    """
    flags = [*BASE_FLAGS, *(cmake_flags or []), *(CCACHE_FLAGS if ccache else ())]
    stamp = build_stamp(source_sha256, flags)
    stamp_file = f"{LLAMA_SERVER}.gpufleet-build"
    recorded = host.get_fact(FileContents, path=stamp_file)
    if host.get_fact(File, path=LLAMA_SERVER) and recorded and recorded[0] == stamp:
        host.noop(f"llama-server already built from {source_sha256[:12]} with these flags")
        return
    source = f"{BUILD_ROOT}/src-{source_sha256[:12]}"
    tree = f"{source}/{subdir}".rstrip("/")
    build = f"{BUILD_ROOT}/build-{stamp[:12]}"
    env = "CCACHE_DIR=/var/cache/ccache " if ccache else ""
    yield f"rm -rf {source} {build} && mkdir -p {source}"
    yield f"tar -xzf {shlex.quote(tarball)} -C {source} --strip-components=1"
    yield f"{env}cmake -S {tree} -B {build} -G Ninja {' '.join(flags)}"
    yield f"{env}cmake --build {build} --target llama-server -j {jobs}"
    yield f"install -m 755 {build}/bin/llama-server {LLAMA_SERVER}"
    yield state_record(stamp_file, stamp)
    yield f"rm -rf {source} {build}"


@operation()
def warmed_up(
    base_url: str,
    health_path: str,
    model: str,
    timeout: int = 300,
    api_key_env: str | None = None,
    env_file: str | None = None,
    request_path: str = CHAT_REQUEST,
):
    """
    Wait for a server to be healthy, then ask ``model`` one short question at
    ``request_path`` (an embedding model: one embedding at its embeddings path, as its engine
    says) and record the time to first token and the tokens per second in
    /var/lib/gpufleet/warmup/<model>.json.
    Fails the deploy, naming the model, when it does not answer within ``timeout`` seconds.
    Run it with ``_if`` on the service's restart: a converged host does not warm up again.

    .. code:: python

        inference.warmed_up(
            base_url="http://127.0.0.1:8080", health_path="/health", model="S-LOC-FRE-x",
            _if=restart.did_change,
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
    command = f"{state_folder(WARMUP_RECORDS)} && " + " ".join(shlex.quote(a) for a in arguments)
    if env_file:
        command = f"set -a && . {env_file} && set +a && {command}"
    yield command


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
