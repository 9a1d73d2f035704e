"""Offline bundles: ``gpufleet bundle export`` fetches what an inventory's fleet downloads
from real HTTP origins (on loopback), each file checked; ``gpufleet bundle import`` finds a
file that changed or is missing; the model cache takes the bundle's files instead of their
origins; and LiteLLM's locked wheels install from the bundle's package index."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpufleet.bundle import (
    MANIFEST,
    BundleError,
    bundle_settings,
    download_wheels,
    export,
    needed,
    simple_index,
    verify,
)
from gpufleet.cli import main
from gpufleet.inventory import validate_file
from gpufleet.lab import registry_layout
from gpufleet.preview import plan, profiles_for


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[tuple[str, Path, Callable[[], list[str]]]]:
    """Origins on loopback, Python's own HTTP server in a process of its own (pyinfra's
    gevent owns this process's threads): (base URL, the folder served, the paths asked)."""
    folder = tmp_path / "origin"
    folder.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "origin.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
             "--directory", str(folder)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)

    def asked() -> list[str]:
        return re.findall(r'"GET (\S+) HTTP', log.read_text())

    yield f"http://127.0.0.1:{port}", folder, asked
    server.terminate()
    server.wait(timeout=10)


def served_file(folder: Path, name: str, data: bytes) -> str:
    (folder / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def fleet(
    tmp_path: Path, base: str, folder: Path, cache_extra: dict | None = None, name: str = "fleet"
) -> Path:
    """A cache host and a model host: a GGUF llama.cpp builds from a pinned source for, and
    an Ollama model from a pinned release, every origin on loopback."""
    gguf = served_file(folder, "model.gguf", b"GGUF" + b"\1" * 4096)
    source = served_file(folder, "llama.cpp.tar.gz", b"source" * 100)
    release = served_file(folder, "ollama-amd64.tar.zst", b"ollama" * 100)
    registry_layout(folder / "model.gguf", folder / "registry", "gemma3:270m", "gemma3")
    box = {
        "ssh_hostname": "10.9.0.2",
        "lan_address": "10.9.0.2",
        "hardware": {"cpu": "virtual", "cores": 8, "ram_gb": 32},
        "models": [
            {"model": "gemma3:270m", "engine": "llama.cpp", "source": f"{base}/model.gguf",
             "sha256": gguf, "alias": "XS-LOC-FRE-gemma3-270m", "context": 2048},
            {"model": "gemma3:270m", "alias": "XS-LOC-FRE-gemma3-270m-ollama"},
        ],
        "llamacpp": {"source_url": f"{base}/llama.cpp.tar.gz", "source_sha256": source},
        "ollama": {"url": f"{base}/ollama-{{arch}}.tar.zst", "sha256": release},
    }  # fmt: skip
    cache = {
        "ssh_hostname": "10.9.0.1",
        "lan_address": "10.9.0.1",
        "hardware": {"cpu": "virtual", "cores": 4, "ram_gb": 8},
        "model_cache": {"ollama_registry": f"{base}/registry", **(cache_extra or {})},
    }
    path = tmp_path / f"{name}.py"
    path.write_text(
        "true, false, null = True, False, None\n"
        f"cpu_nodes = [('cache-1', {json.dumps(cache)}), ('box-1', {json.dumps(box)})]\n"
        "model_cache = ['cache-1']\n"
    )
    return path


def test_export_fetches_each_download_once_checked_and_lists_it(tmp_path, origin):
    base, folder, asked = origin
    specs = validate_file(fleet(tmp_path, base, folder))
    found = {(a.kind, a.name) for a in needed(specs)}
    assert sorted(kind for kind, _ in found) == ["file", "file", "gguf", "ollama"]
    assert {("file", "llama.cpp source"), ("ollama", "gemma3:270m")} <= found
    assert any(kind == "file" and name.startswith("Ollama ") for kind, name in found)
    bundle = tmp_path / "bundle"
    export(specs, bundle)
    listed = json.loads((bundle / MANIFEST).read_text())["files"]
    for relative, expected in listed.items():
        assert hashlib.sha256((bundle / relative).read_bytes()).hexdigest() == expected["sha256"]
    gguf = next(a for a in needed(specs) if a.kind == "gguf")
    assert f"gguf/{gguf.sha256}" in listed
    assert any(
        name.startswith("ollama/manifests/registry.ollama.ai/library/gemma3/") for name in listed
    )
    assert verify(bundle, specs) == []
    # A second export keeps what is there and right: no file is fetched again.
    before = len(asked())
    export(specs, bundle)
    again = asked()[before:]
    assert [p for p in again if "/blobs/" in p or p.endswith((".gguf", ".tar.gz", ".zst"))] == []


def test_import_finds_a_changed_file_and_what_the_inventory_needs_that_is_missing(tmp_path, origin):
    base, folder, _ = origin
    specs = validate_file(fleet(tmp_path, base, folder))
    bundle = tmp_path / "bundle"
    export(specs, bundle)
    blob = max((bundle / "ollama/blobs").iterdir(), key=lambda b: b.stat().st_size)
    blob.write_bytes(b"\0" * blob.stat().st_size)
    gguf = next(a for a in needed(specs) if a.kind == "gguf")
    (bundle / gguf.path).unlink()
    found = {(f.path, f.problem) for f in verify(bundle, specs)}
    assert (f"ollama/blobs/{blob.name}", "its sha256 is not the one bundle.json records") in found
    assert (gguf.path, "missing") in found
    with pytest.raises(BundleError, match="export the bundle again"):
        verify(tmp_path / "nothing", specs)


def test_import_says_what_to_set_for_the_fleet_to_take_it_from_its_cache(tmp_path, origin, capsys):
    base, folder, _ = origin
    path = fleet(tmp_path, base, folder)
    specs = validate_file(path)
    bundle = tmp_path / "bundle"
    export(specs, bundle)
    settings = bundle_settings(bundle, specs)
    source = next(a for a in needed(specs) if a.name == "llama.cpp source")
    assert ("cache-1", f'model_cache: {{"bundle": "{bundle}"}}') in settings
    url = f"http://10.9.0.1:8090/files/{source.sha256}"
    assert ("box-1", f'llamacpp: {{"source_url": "{url}"}}') in settings
    assert main(["bundle", "import", str(bundle), str(path)]) == 0
    assert "every file checked" in capsys.readouterr().out
    blob = next((bundle / "files").iterdir())
    blob.write_bytes(b"changed")
    assert main(["bundle", "import", str(bundle), str(path)]) != 0


def test_the_cache_takes_the_bundles_files_instead_of_their_origins(tmp_path, origin):
    base, folder, _ = origin
    specs = validate_file(fleet(tmp_path, base, folder))
    bundle = tmp_path / "bundle"
    export(specs, bundle)
    path = fleet(tmp_path, base, folder, {"bundle": str(bundle)}, name="bundled")
    profiles = profiles_for(str(path), ["cache-1"])
    planned = plan(
        str(path),
        ["deploys/inference.py"],
        lambda h, f, a: profiles[h].answer(f, a),
        ["cache-1"],
    )["cache-1"]
    names = [o.name for o in planned]
    commands = [c for o in planned for c in o.commands]
    gguf = next(a for a in needed(specs) if a.kind == "gguf")
    assert f"Model cache | {gguf.sha256[:12]} from the bundle" in names
    assert any(n.startswith("Model cache | gemma3:270m: manifest from the bundle") for n in names)
    # Nothing is fetched from an origin: the Ollama copier does not run, the GGUF is checked
    # where the bundle put it.
    assert not any("ollama_fetch.py" in c for c in commands)


def tiny_wheel(folder: Path, name: str = "tinypkg", version: str = "1.0") -> Path:
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{name}/__init__.py", "VALUE = 1\n")
        archive.writestr(
            f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        archive.writestr(
            f"{dist}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{dist}/RECORD", "")
    return wheel


def test_locked_wheels_come_into_the_bundle_and_install_from_its_package_index(tmp_path, origin):
    base, folder, asked = origin
    (folder / "wheels").mkdir()
    wheel = tiny_wheel(folder / "wheels")
    simple_index(folder / "wheels", folder / "simple")  # the origin: a package index
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    requirements = lock(tmp_path, digest)
    bundle = folder / "bundle"
    download_wheels(
        str(requirements), bundle / "wheels", f"{base}/simple/", ["manylinux_2_36_x86_64"]
    )
    simple_index(bundle / "wheels", bundle / "simple")
    assert (bundle / "wheels" / wheel.name).read_bytes() == wheel.read_bytes()
    # A host installs it from the bundle's index, as the router does: hashes required.
    target = tmp_path / "installed"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--require-hashes", "--index-url", f"{base}/bundle/simple/",
         "--target", str(target), "-r", str(requirements)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (target / "tinypkg/__init__.py").read_text() == "VALUE = 1\n"
    assert any(p.startswith("/bundle/wheels/tinypkg-1.0") for p in asked())
    # A wheel that is not the lock's is refused.
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    simple_index(folder / "wheels", folder / "simple")
    with pytest.raises(BundleError, match="pip download"):
        download_wheels(
            str(requirements), tmp_path / "other", f"{base}/simple/", ["manylinux_2_36_x86_64"]
        )


def lock(tmp_path: Path, digest: str) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text(f"tinypkg==1.0 --hash=sha256:{digest}\n")
    return path
