"""Models fetched once, on the lab: lab-infra-1, the model cache, fetches each GGUF file from
the lab mirror (its origin); every other host that serves it fetches it from lab-infra-1's
NGINX, and checks its sha256 where it lands."""

from __future__ import annotations

import re

from gpufleet import lab
from gpufleet.engines.llamacpp import gguf_path
from gpufleet.model_cache import cached_files

from .conftest import SPECS, ssh

CACHE = "lab-infra-1"
CACHE_ADDRESS = str(SPECS[CACHE].lan_address)
GET = re.compile(r'^(\S+) .*"GET (\S+) HTTP/[\d.]+" (\d+)')


def requests_in(log: str) -> list[tuple[str, str, str]]:
    """(client, path, status) of every GET in an access log."""
    return [m.groups() for line in log.splitlines() if (m := GET.match(line))]


def test_each_model_file_comes_from_its_origin_once_for_the_cache_alone(lab_session):
    origin = requests_in((lab.lab_dir() / "mirror.log").read_text())
    for cached in cached_files(SPECS):
        path = "/" + cached.origin.split("/", 3)[3]
        clients = [client for client, asked, _ in origin if asked == path]
        assert clients and set(clients) == {CACHE_ADDRESS}, (path, clients)


def test_every_other_host_fetches_its_model_from_the_cache(lab_session):
    served = requests_in(ssh(CACHE_ADDRESS, "cat /var/log/nginx/gpufleet-model-cache.log"))
    for cached in cached_files(SPECS):
        fetchers = {
            client
            for client, path, status in served
            if path == f"/gguf/{cached.sha256}" and status == "200"
        }
        others = {str(SPECS[name].lan_address) for name in cached.hosts if name != CACHE}
        assert fetchers >= others, (cached.sha256[:12], fetchers, others)
        for name in cached.hosts:
            spec = SPECS[name]
            placement = next(p for p in spec.models if p.sha256 == cached.sha256)
            digest = ssh(str(spec.lan_address), f"sha256sum {gguf_path(placement)}").split()[0]
            assert digest == cached.sha256, name
    stored = ssh(CACHE_ADDRESS, f"ls {SPECS[CACHE].model_cache.root}").split()
    assert sorted(stored) == sorted(f.sha256 for f in cached_files(SPECS))


def test_the_cache_serves_files_by_their_checksum_and_nothing_else(lab_session):
    sha256 = cached_files(SPECS)[0].sha256
    url = f"http://{CACHE_ADDRESS}:{SPECS[CACHE].model_cache.port}/gguf/{sha256}"
    head = f"curl -s -o /dev/null -m 5 -I -w '%{{http_code}}' {url} || true"
    assert ssh(str(SPECS["lab-gpu-1"].lan_address), head) == "200"
    # Nothing but the files by their checksum: no listing, no other path.
    listing = (
        f"curl -s -o /dev/null -m 5 -w '%{{http_code}}' http://{CACHE_ADDRESS}:8090/gguf/ || true"
    )
    assert ssh(str(SPECS["lab-gpu-1"].lan_address), listing) in ("403", "404")


def test_an_ollama_model_comes_from_its_registry_once_and_to_its_host_from_the_cache(
    lab_session,
):
    from gpufleet.model_cache import cached_models
    from gpufleet.ollama_fetch import name_and_tag
    from gpufleet.roles.ollama import STORE

    origin = requests_in((lab.lab_dir() / "mirror.log").read_text())
    served = requests_in(ssh(CACHE_ADDRESS, "cat /var/log/nginx/gpufleet-model-cache.log"))
    for model in cached_models(SPECS):
        name, tag = name_and_tag(model.tag)
        registry = f"/{lab.OLLAMA_REGISTRY}/v2/{name}"
        from_origin = [(c, p) for c, p, s in origin if p.startswith(registry) and s == "200"]
        blobs = {p.rsplit("/", 1)[1] for _, p in from_origin if "/blobs/" in p}
        # The registry is asked by the cache alone, and each blob once.
        assert {c for c, _ in from_origin} == {CACHE_ADDRESS}, from_origin
        assert blobs and len(blobs) == len([p for _, p in from_origin if "/blobs/" in p])
        for host in model.hosts:
            address = str(SPECS[host].lan_address)
            fetched = {
                p.rsplit("/", 1)[1]
                for c, p, s in served
                if c == address and p.startswith("/ollama/blobs/") and s == "200"
            }
            # Every blob from the cache, in Ollama's store, its sha256 its digest, Ollama's.
            assert fetched == {b.replace(":", "-") for b in blobs}, (host, fetched)
            listing = ssh(
                address,
                f"cd {STORE}/blobs && sha256sum {' '.join(sorted(fetched))} && "
                f"stat -c %U {' '.join(sorted(fetched))} "
                f"{STORE}/manifests/registry.ollama.ai/{name}/{tag}",
            ).splitlines()
            sums = dict(line.split()[::-1] for line in listing[: len(fetched)])
            assert all(sums[f] == f.removeprefix("sha256-") for f in fetched), sums
            assert set(listing[len(fetched) :]) == {"ollama"}
