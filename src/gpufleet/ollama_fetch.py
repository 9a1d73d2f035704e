"""Copy an Ollama model (its manifest and the blobs it names) into an Ollama model store,
every blob checked against its sha256 digest before it is kept.

Runs on the target host (copied there by the deploy), with the Python standard library only:

    python3 ollama_fetch.py --store /usr/share/ollama/.ollama/models --model gemma3:270m \\
        --from store=http://10.0.0.5:8090/ollama --from registry=https://registry.ollama.ai

Each ``--from`` is asked in order until one serves the whole model: ``registry=URL`` speaks
the registry's API (``/v2/<name>/manifests/<tag>``, ``/v2/<name>/blobs/<digest>``), as
registry.ollama.ai and its mirrors do; ``store=URL`` is another store's folders over HTTP
(``/manifests/registry.ollama.ai/<name>/<tag>``, ``/blobs/sha256-<hex>``), as the fleet's
model cache serves them. Blobs go in first and the manifest last, so Ollama never lists a
model whose blobs are not all there. With ``--optional``, a model no source serves is left
for ``ollama pull``; otherwise the run fails naming each source and why.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
import urllib.response
from pathlib import Path

REGISTRY_HOST = "registry.ollama.ai"
"""Where Ollama files its models' manifests in the store (``manifests/<host>/...``)."""
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    )
)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
CHUNK = 1 << 20


class FetchError(RuntimeError):
    pass


def name_and_tag(model: str) -> tuple[str, str]:
    """``gemma3:270m`` -> (``library/gemma3``, ``270m``); a model without a namespace is the
    library's, without a tag ``latest``."""
    name, _, tag = model.partition(":")
    if "/" not in name:
        name = f"library/{name}"
    return name, tag or "latest"


def manifest_path(store: Path, model: str) -> Path:
    name, tag = name_and_tag(model)
    return store / "manifests" / REGISTRY_HOST / name / tag


def blob_path(store: Path, digest: str) -> Path:
    return store / "blobs" / digest.replace(":", "-")


def _urls(kind: str, base: str, model: str) -> tuple[str, str]:
    """The manifest's URL, and the blobs' URL with ``{digest}`` (``sha256:<hex>``, the
    registry's spelling) or ``{file}`` (``sha256-<hex>``, a store's) left to fill in."""
    name, tag = name_and_tag(model)
    base = base.rstrip("/")
    if kind == "registry":
        return f"{base}/v2/{name}/manifests/{tag}", f"{base}/v2/{name}/blobs/{{digest}}"
    return f"{base}/manifests/{REGISTRY_HOST}/{name}/{tag}", f"{base}/blobs/{{file}}"


def _get(url: str) -> urllib.response.addinfourl:
    request = urllib.request.Request(url, headers={"Accept": MANIFEST_TYPES})
    return urllib.request.urlopen(request, timeout=30)


def digests(manifest: dict) -> list[tuple[str, int]]:
    """(digest, size) of the config and every layer a manifest names, each checked to be a
    sha256 digest (a manifest that names anything else is refused)."""
    entries = [manifest.get("config") or {}, *manifest.get("layers", [])]
    found = []
    for entry in entries:
        digest, size = entry.get("digest", ""), entry.get("size")
        if not DIGEST.match(str(digest)) or not isinstance(size, int) or size < 0:
            raise FetchError(f"the manifest names {digest!r} (size {size!r}), not a sha256 blob")
        found.append((digest, size))
    return found


def _keep_blob(url: str, digest: str, size: int, target: Path, owner: str | None) -> None:
    partial = target.with_name(target.name + ".partial")
    hasher = hashlib.sha256()
    with _get(url) as response, open(partial, "wb") as out:
        while chunk := response.read(CHUNK):
            hasher.update(chunk)
            out.write(chunk)
    got = "sha256:" + hasher.hexdigest()
    if got != digest or partial.stat().st_size != size:
        partial.unlink()
        raise FetchError(f"{url}: sha256 {got[7:19]}..., not the manifest's {digest[7:19]}...")
    _own(partial, owner)
    partial.rename(target)


def _own(path: Path, owner: str | None) -> None:
    path.chmod(0o644 if path.is_file() else 0o755)
    if owner:
        shutil.chown(path, owner, owner)


def _folders(path: Path, owner: str | None) -> None:
    """Make ``path`` and the missing folders above it, owned by ``owner``."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir()
        _own(folder, owner)


def fetch(store: Path, model: str, kind: str, base: str, owner: str | None) -> int:
    """Copy ``model`` from one source; returns the bytes fetched (0: all there already)."""
    manifest_url, blob_url = _urls(kind, base, model)
    with _get(manifest_url) as response:
        raw = response.read()
    manifest = json.loads(raw)
    fetched = 0
    _folders(store / "blobs", owner)
    for digest, size in digests(manifest):
        target = blob_path(store, digest)
        if target.exists() and target.stat().st_size == size:
            continue
        url = blob_url.format(digest=digest, file=target.name)
        _keep_blob(url, digest, size, target, owner)
        fetched += size
    target = manifest_path(store, model)
    _folders(target.parent, owner)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(raw)
    _own(partial, owner)
    os.replace(partial, target)
    return fetched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, type=Path)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--from", dest="sources", action="append", required=True)
    parser.add_argument("--owner", help="user (and group) to own what is written")
    parser.add_argument("--optional", action="store_true")
    args = parser.parse_args(argv)
    failed = False
    for model in args.model:
        reasons = []
        for source in args.sources:
            kind, _, base = source.partition("=")
            if kind not in ("registry", "store") or not base:
                parser.error(f"--from {source!r}: give registry=URL or store=URL")
            try:
                fetched = fetch(args.store, model, kind, base, args.owner)
            except (urllib.error.URLError, OSError, ValueError, FetchError) as error:
                reasons.append(f"{base}: {getattr(error, 'reason', error)}")
                continue
            print(f"{model}: from {base} ({fetched} bytes fetched, every blob verified)")
            break
        else:
            where = "; ".join(reasons)
            if args.optional:
                print(f"{model}: no source served it ({where}); left for ollama pull")
            else:
                print(f"{model}: no source served it: {where}", file=sys.stderr)
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
