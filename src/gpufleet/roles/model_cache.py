"""The fleet's model cache: each GGUF file the fleet downloads, and each Ollama model its
Linux Ollama hosts pull, fetched from its origin once, verified, and served to the other hosts
by NGINX.

Runbook it replaces: list the model files every host downloads; fetch each to one machine on
the LAN and check its checksum; serve that folder read-only over HTTP to those hosts only;
point every host at it, keeping the origin as the fallback; check each file again where it
lands.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from gpufleet.bundle import FILES, GGUF, OLLAMA, SIMPLE, WHEELS, bundle_files
from gpufleet.model_cache import CACHE_PATH, OLLAMA_PATH, cache_host, cached_files, cached_models
from gpufleet.models import HostSpec
from gpufleet.operations import config, downloads, inference, ollama
from gpufleet.operations.downloads import VerifiedFile
from gpufleet.paths import render_template
from gpufleet.roles.steps import ollama_tool

SITE = "/etc/nginx/conf.d/gpufleet-model-cache.conf"


@deploy("Model cache")
def model_cache(spec: HostSpec, specs: Mapping[str, HostSpec]) -> None:
    """
    On the ``model_cache`` host: every GGUF file the fleet's llama.cpp placements download,
    and every Ollama model its Linux Ollama hosts pull, fetched from its origin once and
    verified, and served by NGINX to the hosts that fetch them (the firewall lets in no one
    else). Every host of the run waits until the cache serves before any fetches from it.

    .. code:: python

        model_cache(host_spec(), fleet_specs())
    """
    cache = cache_host(specs)
    if cache is None:
        host.noop("the fleet has no model cache")
        return
    if cache.name == spec.name:
        serve_cache(spec, specs)
    else:
        host.noop(f"{cache.name} is the fleet's model cache")
    # One operation every host of the run shares (one call site): pyinfra orders operations
    # as a graph of each host's sequence, so none passes this point before the cache host
    # has reached it, serving; no host asks the cache for a model before that.
    server.shell(
        name=f"{cache.name} serves the fleet's models (the others fetch from it after this)",
        commands=["true"],
        _if=lambda: False,
    )


def serve_cache(spec: HostSpec, specs: Mapping[str, HostSpec]) -> None:
    """The cache itself: its files fetched and checked, its NGINX site, listening."""
    settings = spec.model_cache
    wanted = cached_files(specs)
    files.directory(
        name="Model cache folder", path=settings.root, user="root", group="root", mode="755"
    )
    bundle = Path(settings.bundle) if settings.bundle else None
    for cached in wanted:
        if bundle is not None:
            from_bundle(bundle / f"{GGUF}/{cached.sha256}", f"{settings.root}/{cached.sha256}")
        downloads.verified_download(
            name=f"Cache {cached.sha256[:12]} (for {', '.join(cached.hosts)})",
            src=cached.origin,
            dest=f"{settings.root}/{cached.sha256}",
            sha256=cached.sha256,
            mode="644",
        )
    models = cached_models(specs)
    if models and bundle is not None:
        ollama_store_from_bundle(bundle / OLLAMA, settings.ollama_root, [m.tag for m in models])
    elif models:
        ollama_tool()
        ollama.stored(
            name=f"Cache Ollama models ({', '.join(m.tag for m in models)})",
            store=settings.ollama_root,
            models=[m.tag for m in models],
            sources=[f"registry={settings.ollama_registry}"],
            owner="root",
        )
    if bundle is not None:
        engine_files_from_bundle(bundle, settings.bundle_root)
    apt.packages(name="NGINX", packages=["nginx"], no_recommends=True)
    # Debian's default site also claims default_server on port 80.
    default_site = files.link(
        name="Disable Debian's default site", path="/etc/nginx/sites-enabled/default", present=False
    )
    site = config.config_file(
        name="Model cache site (checked by nginx -t)",
        dest=SITE,
        render=lambda: render_template(
            "model_cache/model-cache.conf.j2",
            address=str(settings.address),
            port=settings.port,
            location=CACHE_PATH,
            root=settings.root,
            ollama_location=OLLAMA_PATH,
            ollama_root=settings.ollama_root if models else None,
            bundle_root=settings.bundle_root,
            bundle_folders=[FILES, WHEELS, SIMPLE] if bundle is not None else [],
        ),
        validate="nginx -t -q",
    )
    started = systemd.service(name="Run nginx", service="nginx", running=True, enabled=True)
    reloaded = systemd.service(
        name="Reload nginx", service="nginx", reloaded=True, _if=any_changed(default_site, site)
    )
    inference.listening(
        name="Model cache listening",
        service="nginx",
        port=settings.port,
        _if=any_changed(started, reloaded),
    )


def from_bundle(local: Path, dest: str) -> None:
    """Put the bundle's copy of a file where the cache keeps it, unless a verified one is
    there: the download step that follows finds it, checks its sha256 and records it, and
    fetches nothing."""
    found = host.get_fact(VerifiedFile, path=dest)
    if found is not None and found["stamp"]:
        return
    files.put(name=f"{Path(dest).name[:12]} from the bundle", src=str(local), dest=dest, mode="644")


def ollama_store_from_bundle(store: Path, dest: str, models: list[str]) -> None:
    """The bundle's Ollama models (manifests and blobs, checked by ``gpufleet bundle import``)
    copied into the cache's store where it does not hold them whole; blobs first, each
    manifest last, so a store never names a blob it lacks."""
    from gpufleet.facts.ollama import OllamaStore
    from gpufleet.ollama_fetch import digests, manifest_path, name_and_tag

    whole = host.get_fact(OllamaStore, store=dest)
    for model in models:
        if "{}:{}".format(*name_and_tag(model)) in whole:
            continue
        manifest = manifest_path(store, model)
        for digest, _ in digests(json.loads(manifest.read_text())):
            blob = digest.replace(":", "-")
            files.put(
                name=f"{model}: blob {blob[7:19]} from the bundle",
                src=str(store / "blobs" / blob),
                dest=f"{dest}/blobs/{blob}",
                mode="644",
            )
        files.put(
            name=f"{model}: manifest from the bundle",
            src=str(manifest),
            dest=f"{dest}/{manifest.relative_to(store)}",
            mode="644",
        )


def engine_files_from_bundle(bundle: Path, root: str) -> None:
    """The bundle's engine files (by sha256) and wheels with their package index, where the
    cache serves them (``/files/``, ``/wheels/``, ``/simple/``)."""
    files.directory(name="Bundle folder", path=root, user="root", group="root", mode="755")
    for relative, sha256 in bundle_files(bundle):
        top = relative.split("/", 1)[0]
        if top == FILES:
            dest = f"{root}/{relative}"
            from_bundle(bundle / relative, dest)
            downloads.verified_download(
                name=f"Bundle file {sha256[:12]}", src=f"file://{dest}", dest=dest, sha256=sha256
            )
        elif top in (WHEELS, SIMPLE):
            files.put(
                name=f"Bundle {relative}", src=str(bundle / relative), dest=f"{root}/{relative}",
                mode="644",
            )  # fmt: skip
