"""Ollama's models through the fleet's model cache: the copier fetches a model's manifest and
blobs from a registry's API or another store over real HTTP (on loopback), keeps only blobs
whose sha256 is their digest, and leaves a store Ollama reads; the cache keeps the models the
fleet's Linux Ollama hosts pull, and they copy from it."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpufleet.exposure import exposures
from gpufleet.facts.ollama import OllamaStore, parse_store
from gpufleet.inventory import validate_file
from gpufleet.lab import registry_layout
from gpufleet.model_cache import cache_clients, cached_models, ollama_cache_source, pulled_models
from gpufleet.ollama_fetch import main, manifest_path, name_and_tag

ROOT = Path(__file__).parents[2]


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A folder served over HTTP on loopback: (base URL, folder, paths asked)."""
    folder = tmp_path / "served"
    folder.mkdir()
    asked: list[str] = []

    class Recording(Quiet):
        def do_GET(self) -> None:
            asked.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Recording, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder, asked
    server.shutdown()


def a_model(tmp_path: Path) -> Path:
    weights = tmp_path / "weights.gguf"
    weights.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    return weights


def store_listing(store: Path) -> list[str]:
    """What :class:`OllamaStore`'s command prints for ``store``, made here from the files."""
    lines = []
    for manifest in sorted((store / "manifests").rglob("*")):
        if manifest.is_file():
            lines += [f"== {manifest.relative_to(store)}", manifest.read_text()]
    lines.append("== blobs")
    lines += [f"{b.name} {b.stat().st_size}" for b in sorted((store / "blobs").iterdir())]
    return lines


def test_a_model_comes_from_the_registry_api_whole_and_verified(tmp_path, served):
    base, folder, asked = served
    registry_layout(a_model(tmp_path), folder / "registry", "gemma3:270m", "gemma3")
    store = tmp_path / "store"
    assert main(["--store", str(store), "--model", "gemma3:270m",
                 "--from", f"registry={base}/registry"]) == 0  # fmt: skip
    manifest = json.loads(manifest_path(store, "gemma3:270m").read_text())
    for entry in [manifest["config"], *manifest["layers"]]:
        blob = store / "blobs" / entry["digest"].replace(":", "-")
        assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == entry["digest"]
    # Where Ollama looks for it: manifests/registry.ollama.ai/library/gemma3/270m.
    assert manifest_path(store, "gemma3:270m").relative_to(store).parts == (
        "manifests", "registry.ollama.ai", "library", "gemma3", "270m",
    )  # fmt: skip
    assert parse_store(store_listing(store)) == {"library/gemma3:270m"}
    # A second run asks for the manifest again and fetches no blob.
    asked.clear()
    assert main(["--store", str(store), "--model", "gemma3:270m",
                 "--from", f"registry={base}/registry"]) == 0  # fmt: skip
    assert asked == ["/registry/v2/library/gemma3/manifests/270m"]


def test_a_blob_that_is_not_its_digest_is_never_kept(tmp_path, served, capsys):
    base, folder, _ = served
    registry_layout(a_model(tmp_path), folder / "registry", "gemma3:270m", "gemma3")
    blobs = folder / "registry/v2/library/gemma3/blobs"
    weights = max(blobs.iterdir(), key=lambda b: b.stat().st_size)
    weights.unlink()
    weights.write_bytes(b"GGUF" + b"\0" * (256 * 64))  # the same size, other bytes
    store = tmp_path / "store"
    assert main(["--store", str(store), "--model", "gemma3:270m",
                 "--from", f"registry={base}/registry"]) == 1  # fmt: skip
    assert "not the manifest's" in capsys.readouterr().err
    assert not (store / "blobs" / weights.name.replace(":", "-")).exists()
    assert not manifest_path(store, "gemma3:270m").exists()
    assert parse_store(store_listing(store)) == set()


def test_a_store_serves_another_store_and_the_next_source_stands_in_for_one_down(tmp_path, served):
    base, folder, _ = served
    registry_layout(a_model(tmp_path), folder / "registry", "gemma3:270m", "gemma3")
    cache = folder / "cache"
    assert main(["--store", str(cache), "--model", "gemma3:270m",
                 "--from", f"registry={base}/registry"]) == 0  # fmt: skip
    store = tmp_path / "host-store"
    down = "store=http://127.0.0.1:9/ollama"  # nothing listens on the discard port
    assert main(["--store", str(store), "--model", "gemma3:270m",
                 "--from", down, "--from", f"store={base}/cache"]) == 0  # fmt: skip
    assert sorted(p.name for p in (store / "blobs").iterdir()) == sorted(
        p.name for p in (cache / "blobs").iterdir()
    )


def test_optional_leaves_a_model_no_source_has_for_ollama_pull(tmp_path, served, capsys):
    base, _, _ = served
    store = tmp_path / "store"
    arguments = ["--store", str(store), "--model", "qwen2.5:14b", "--from", f"store={base}/no"]
    assert main(arguments) == 1
    assert main([*arguments, "--optional"]) == 0
    assert "left for ollama pull" in capsys.readouterr().out


def test_a_manifest_naming_anything_but_sha256_blobs_is_refused(tmp_path, served):
    base, folder, _ = served
    manifests = folder / "registry/v2/library/evil/manifests"
    manifests.mkdir(parents=True)
    (manifests / "latest").write_text(
        json.dumps({"config": {"digest": "sha256:../../../etc/passwd", "size": 1}, "layers": []})
    )
    store = tmp_path / "store"
    assert main(["--store", str(store), "--model", "evil",
                 "--from", f"registry={base}/registry"]) == 1  # fmt: skip
    assert not (store / "manifests").exists()


def test_names_and_tags_as_ollama_spells_them():
    assert name_and_tag("gemma3:270m") == ("library/gemma3", "270m")
    assert name_and_tag("nomic-embed-text") == ("library/nomic-embed-text", "latest")
    assert name_and_tag("someone/model:q4") == ("someone/model", "q4")


def test_the_store_fact_counts_a_model_whole_only_with_every_blob_at_its_size():
    manifest = {
        "config": {"digest": "sha256:" + "a" * 64, "size": 10},
        "layers": [{"digest": "sha256:" + "b" * 64, "size": 20}],
    }
    listing = [
        "== manifests/registry.ollama.ai/library/gemma3/270m",
        json.dumps(manifest),
        "== manifests/registry.ollama.ai/library/qwen2.5/14b",
        '{"config": {"digest": "sha256:' + "c" * 64 + '", "size": 5}, "layers": []}',
        "== blobs",
        f"sha256-{'a' * 64} 10",
        f"sha256-{'b' * 64} 20",
        f"sha256-{'c' * 64} 4",  # cut short
    ]
    assert parse_store(listing) == {"library/gemma3:270m"}
    assert parse_store([]) == set()
    assert "cd /srv/x 2>/dev/null || exit 0" in OllamaStore().command("/srv/x")


# --- the fleet ------------------------------------------------------------------------------


def test_the_lab_cache_keeps_lab_gpu_1s_ollama_model_and_lets_it_in():
    specs = validate_file(ROOT / "inventory/lab.py")
    assert [m.tag for m in cached_models(specs)] == ["gemma3:270m"]
    assert pulled_models(specs["lab-gpu-1"]) == ["gemma3:270m"]
    assert "lab-gpu-1" in cache_clients(specs)
    assert ollama_cache_source(specs["lab-gpu-1"], specs) == "store=http://10.200.0.12:8090/ollama"
    assert ollama_cache_source(specs["lab-infra-1"], specs) == "store=http://127.0.0.1:8090/ollama"
    cache = {e.service: e for e in exposures(specs["lab-infra-1"], specs)}["model cache"]
    assert "lab-gpu-1" in cache.clients


def test_models_of_other_registries_and_macs_are_not_cached():
    from gpufleet.models import HostSpec

    spec = HostSpec(
        name="box",
        hardware={"cores": 8, "ram_gb": 64},
        models=[
            {"model": "hf.co/someone/repo:Q4_K_M"},
            {"model": "qwen2.5:14b", "alias": "M-LOC-FRE-qwen2.5-14b"},
            {"model": "qwen2.5:14b", "alias": "M-LOC-FRE-qwen2.5-14b-b", "priority": 2},
            {"model": "gemma3:270m", "engine": "llama.cpp", "source": "/srv/g.gguf"},
        ],
    )
    assert pulled_models(spec) == ["qwen2.5:14b"]
    assert pulled_models(spec.model_copy(update={"os": "macos"})) == []
