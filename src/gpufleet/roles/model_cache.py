"""The fleet's model cache: each GGUF file the fleet downloads, and each Ollama model its
Linux Ollama hosts pull, fetched from its origin once, verified, and served to the other hosts
by NGINX.

Runbook it replaces: list the model files every host downloads; fetch each to one machine on
the LAN and check its checksum; serve that folder read-only over HTTP to those hosts only;
point every host at it, keeping the origin as the fallback; check each file again where it
lands.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from gpufleet.model_cache import CACHE_PATH, OLLAMA_PATH, cache_host, cached_files, cached_models
from gpufleet.models import HostSpec
from gpufleet.operations import config, downloads, inference, ollama
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
    for cached in wanted:
        downloads.verified_download(
            name=f"Cache {cached.sha256[:12]} (for {', '.join(cached.hosts)})",
            src=cached.origin,
            dest=f"{settings.root}/{cached.sha256}",
            sha256=cached.sha256,
            mode="644",
        )
    models = cached_models(specs)
    if models:
        ollama_tool()
        ollama.stored(
            name=f"Cache Ollama models ({', '.join(m.tag for m in models)})",
            store=settings.ollama_root,
            models=[m.tag for m in models],
            sources=[f"registry={settings.ollama_registry}"],
            owner="root",
        )
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
