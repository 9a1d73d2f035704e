"""Offline bundles: everything an inventory's fleet downloads, fetched once on a machine that
reaches the internet, checked, and carried to a fleet that does not.

A bundle is a folder laid out as the fleet's model cache serves it, with ``bundle.json``
listing every file by its sha256::

    bundle/
      bundle.json        what is in it: kind, name, origin, sha256, size of each file
      gguf/<sha256>      the GGUF files llama.cpp placements download
      ollama/            an Ollama model store of the models Linux Ollama hosts pull
      files/<sha256>     what engines install, pinned by sha256 (llama.cpp's source or
                         binary, Ollama's release archive, Vault's binary)
      wheels/, simple/   LiteLLM's hash-locked wheels, and a package index of them

``gpufleet bundle export INVENTORY DEST`` makes it (again: what is there and right is kept);
``gpufleet bundle import BUNDLE INVENTORY`` checks every file against ``bundle.json`` and
that the bundle holds all the inventory needs, and says what to set so the fleet uses it:
the model cache host takes the bundle's files instead of fetching them from their origins
(``model_cache.bundle``), and the engines fetch theirs from the cache. vLLM's wheels are not
bundled (their set depends on each host's platform and CUDA): an air-gapped vLLM host runs
the container image from a local registry, or installs from a PyPI mirror (``pip_index``).
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from gpufleet.model_cache import cache_host, cached_files, cached_models
from gpufleet.models import HostSpec

MANIFEST = "bundle.json"
FILES = "files"
GGUF = "gguf"
OLLAMA = "ollama"
WHEELS = "wheels"
SIMPLE = "simple"
DEFAULT_REGISTRY = "https://registry.ollama.ai"


class BundleError(RuntimeError):
    pass


@dataclass(frozen=True)
class Artifact:
    """One thing the fleet downloads, as the bundle keeps it."""

    kind: str
    """gguf, ollama (a model: its manifest and blobs), file (an engine's download), wheels
    (a hash-locked requirements file's wheels)."""
    name: str
    """What it is, in words: the model tag, ``llama.cpp source``, ``litellm 1.x wheels``."""
    origin: str
    """Where it comes from: a URL, a registry, a lock file."""
    sha256: str = ""
    """Its checksum where the inventory pins one (gguf, file); a model's blobs are checked
    against their digests, a lock's wheels against its hashes."""
    used_by: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        """Where it lies in the bundle."""
        if self.kind == "gguf":
            return f"{GGUF}/{self.sha256}"
        if self.kind == "file":
            return f"{FILES}/{self.sha256}"
        if self.kind == "ollama":
            return OLLAMA
        return WHEELS


def needed(specs: Mapping[str, HostSpec]) -> list[Artifact]:
    """What the inventory's fleet downloads that a bundle carries, in inventory order."""
    from gpufleet.engines.ollama import release_sha256
    from gpufleet.locks import shipped_litellm_lock

    found: list[Artifact] = []
    for cached in cached_files(specs):
        found.append(
            Artifact("gguf", cached.sha256[:12], cached.origin, cached.sha256, cached.hosts)
        )
    cache = cache_host(specs)
    registry = cache.model_cache.ollama_registry if cache is not None else DEFAULT_REGISTRY
    for model in cached_models(specs):
        found.append(Artifact("ollama", model.tag, registry, "", model.hosts))
    pinned: dict[tuple[str, str], tuple[str, list[str]]] = {}

    def pin(url: str | None, sha256: str | None, what: str, host: str) -> None:
        if url and sha256:
            pinned.setdefault((url, sha256), (what, []))[1].append(host)

    for spec in specs.values():
        uses = {p.engine for p in spec.models}
        if "llama.cpp" in uses:
            settings = spec.llamacpp
            if settings.binary_url:
                pin(settings.binary_url, settings.binary_sha256, "llama-server binary", spec.name)
            else:
                pin(settings.source_url, settings.source_sha256, "llama.cpp source", spec.name)
        if "ollama" in uses and spec.os != "macos" and spec.ollama.install == "release":
            arch = "arm64" if spec.arch == "aarch64" else "amd64"
            url = spec.ollama.url.format(version=spec.ollama.version, arch=arch)
            pin(url, release_sha256(spec.ollama, arch), f"Ollama {spec.ollama.version}", spec.name)
        if "vault" in spec.groups:
            pin(spec.vault.binary_url, spec.vault.binary_sha256, "Vault binary", spec.name)
    for (url, sha256), (what, hosts) in pinned.items():
        found.append(Artifact("file", what, url, sha256, tuple(hosts)))
    locks: dict[str, tuple[str, list[str]]] = {}
    for spec in specs.values():
        if "router" in spec.groups:
            router = spec.litellm
            lock = router.requirements_lock or str(shipped_litellm_lock(router.version))
            locks.setdefault(lock, (f"litellm[proxy] {router.version} wheels", []))[1].append(
                spec.name
            )
    for lock, (what, hosts) in locks.items():
        found.append(Artifact("wheels", what, lock, "", tuple(hosts)))
    return found


# --- export ---------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _download(url: str, target: Path, sha256: str) -> None:
    """``url`` to ``target``, kept only if its sha256 is ``sha256``; a file there with that
    sha256 already is kept as it is."""
    if target.exists() and sha256_of(target) == sha256:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    if url.startswith("/"):
        url = Path(url).as_uri()
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)
    got = sha256_of(partial)
    if got != sha256:
        partial.unlink()
        raise BundleError(f"{url}: sha256 {got}, not the inventory's {sha256}")
    partial.rename(target)


def download_wheels(lock: str, folder: Path, index: str | None, platforms: list[str]) -> None:
    """The wheels a hash-locked requirements file names, as pip downloads them for the
    fleet's Python (Debian 12's 3.11) on each of ``platforms``, checked against the lock."""
    for platform in platforms:
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--require-hashes", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.11", "--implementation", "cp", "--platform", platform,
            "-r", lock, "-d", str(folder),
        ]  # fmt: skip
        if index:
            command += ["--index-url", index]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BundleError(f"pip download of {lock} for {platform}: {done.stderr.strip()}")


WHEEL_PLATFORMS = {"x86_64": "manylinux_2_36_x86_64", "aarch64": "manylinux_2_36_aarch64"}
"""The wheel platform of each architecture's hosts (Debian 12's glibc is 2.36)."""


def simple_index(wheels: Path, index: Path) -> None:
    """A package index (PEP 503) of the wheels in ``wheels``, each link with its sha256, so
    pip installs from it with ``--index-url`` and ``--require-hashes``."""
    projects: dict[str, list[Path]] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        project = re.sub(r"[-_.]+", "-", wheel.name.split("-", 1)[0]).lower()
        projects.setdefault(project, []).append(wheel)
    index.mkdir(parents=True, exist_ok=True)
    links = []
    for project, files in projects.items():
        folder = index / project
        folder.mkdir(exist_ok=True)
        anchors = "".join(
            f'<a href="../../{WHEELS}/{html.escape(w.name)}#sha256={sha256_of(w)}">'
            f"{html.escape(w.name)}</a>\n"
            for w in files
        )
        page = f"<!DOCTYPE html>\n<html><body>\n{anchors}</body></html>\n"
        (folder / "index.html").write_text(page)
        links.append(f'<a href="{project}/">{project}</a>\n')
    (index / "index.html").write_text(
        "<!DOCTYPE html>\n<html><body>\n" + "".join(links) + "</body></html>\n"
    )


def export(
    specs: Mapping[str, HostSpec],
    dest: Path,
    progress: Callable[[str], None] = lambda _: None,
    pip_index: str | None = None,
) -> list[Artifact]:
    """Fetch everything ``specs`` downloads into ``dest``, each checked, and write
    ``bundle.json``. What is there already and right is kept, so an export that stopped
    half-way goes on where it stopped."""
    from gpufleet.ollama_fetch import main as fetch_ollama

    artifacts = needed(specs)
    dest.mkdir(parents=True, exist_ok=True)
    arches = sorted({spec.arch for spec in specs.values() if "router" in spec.groups})
    for artifact in artifacts:
        progress(f"{artifact.kind} {artifact.name} from {artifact.origin}")
        if artifact.kind in ("gguf", "file"):
            _download(artifact.origin, dest / artifact.path, artifact.sha256)
        elif artifact.kind == "ollama":
            code = fetch_ollama(
                ["--store", str(dest / OLLAMA), "--model", artifact.name,
                 "--from", f"registry={artifact.origin}"]
            )  # fmt: skip
            if code != 0:
                where = artifact.origin
                raise BundleError(f"Ollama model {artifact.name}: {where} did not serve it")
        else:
            platforms = [WHEEL_PLATFORMS[arch] for arch in arches if arch in WHEEL_PLATFORMS]
            download_wheels(artifact.origin, dest / WHEELS, pip_index, platforms)
    if any(a.kind == "wheels" for a in artifacts):
        simple_index(dest / WHEELS, dest / SIMPLE)
    files = {
        str(path.relative_to(dest)): {"sha256": sha256_of(path), "size": path.stat().st_size}
        for path in sorted(dest.rglob("*"))
        if path.is_file() and path.name != MANIFEST and not path.name.endswith(".partial")
    }
    manifest = {"artifacts": [asdict(a) for a in artifacts], "files": files}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return artifacts


# --- import ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    path: str
    problem: str


def verify(bundle: Path, specs: Mapping[str, HostSpec]) -> list[Finding]:
    """Every file of the bundle against ``bundle.json`` (its sha256 and size), and every
    artifact the inventory needs against what the bundle holds. Empty: the bundle is whole
    and covers the inventory."""
    from gpufleet.facts.ollama import parse_store

    try:
        manifest = json.loads((bundle / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise BundleError(f"{bundle / MANIFEST}: {error}; export the bundle again") from None
    findings = []
    for relative, expected in manifest.get("files", {}).items():
        path = bundle / relative
        if ".." in Path(relative).parts or not path.is_file():
            findings.append(Finding(relative, "missing"))
        elif path.stat().st_size != expected["size"] or sha256_of(path) != expected["sha256"]:
            findings.append(Finding(relative, "its sha256 is not the one bundle.json records"))
    listed = set(manifest.get("files", {}))
    store = _store_listing(bundle / OLLAMA)
    whole = parse_store(store)
    for artifact in needed(specs):
        if artifact.kind in ("gguf", "file") and artifact.path not in listed:
            findings.append(Finding(artifact.path, f"{artifact.name} is not in the bundle"))
        elif artifact.kind == "gguf" or artifact.kind == "file":
            path = bundle / artifact.path
            if path.is_file() and sha256_of(path) != artifact.sha256:
                findings.append(Finding(artifact.path, "not the sha256 the inventory pins"))
        elif artifact.kind == "ollama":
            from gpufleet.ollama_fetch import name_and_tag

            if "{}:{}".format(*name_and_tag(artifact.name)) not in whole:
                findings.append(Finding(OLLAMA, f"Ollama model {artifact.name} is not whole"))
        elif not any(name.startswith(f"{WHEELS}/") for name in listed):
            findings.append(Finding(WHEELS, f"{artifact.name} are not in the bundle"))
    return findings


def _store_listing(store: Path) -> list[str]:
    """What the store fact lists for a store on this machine."""
    lines: list[str] = []
    for manifest in sorted((store / "manifests").rglob("*")) if store.is_dir() else []:
        if manifest.is_file():
            lines += [f"== {manifest.relative_to(store)}", manifest.read_text().replace("\n", "")]
    lines.append("== blobs")
    blobs = store / "blobs"
    for blob in sorted(blobs.iterdir()) if blobs.is_dir() else []:
        lines.append(f"{blob.name} {blob.stat().st_size}")
    return lines


def bundle_files(bundle: Path) -> Iterator[tuple[str, str]]:
    """(path in the bundle, sha256) of every file ``bundle.json`` lists."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    for relative, expected in manifest["files"].items():
        yield relative, expected["sha256"]


def bundle_settings(bundle: Path, specs: Mapping[str, HostSpec]) -> list[tuple[str, str]]:
    """(host, the setting to add) for a fleet to take ``bundle`` from its model cache: the
    cache's ``model_cache.bundle``, and each engine file's and lock's URL on the cache."""
    from gpufleet.routing import service_address

    cache = cache_host(specs)
    if cache is None:
        raise BundleError(
            "the inventory has no model_cache host: add one (the host that serves the bundle "
            "to the others), then import again"
        )
    base = f"http://{service_address(cache)}:{cache.model_cache.port}"
    found = [(cache.name, f'model_cache: {{"bundle": "{bundle}"}}')]
    for artifact in needed(specs):
        url = f"{base}/{FILES}/{artifact.sha256}"
        for host in artifact.used_by:
            if artifact.kind == "file" and artifact.name == "llama.cpp source":
                found.append((host, f'llamacpp: {{"source_url": "{url}"}}'))
            elif artifact.kind == "file" and artifact.name == "llama-server binary":
                found.append((host, f'llamacpp: {{"binary_url": "{url}"}}'))
            elif artifact.kind == "file" and artifact.name.startswith("Ollama"):
                found.append((host, f'ollama: {{"url": "{url}", "sha256": "{artifact.sha256}"}}'))
            elif artifact.kind == "file" and artifact.name == "Vault binary":
                found.append((host, f'vault: {{"binary_url": "{url}"}}'))
            elif artifact.kind == "wheels":
                found.append((host, f'litellm: {{"pip_index": "{base}/{SIMPLE}/"}}'))
    return list(dict.fromkeys(found))
