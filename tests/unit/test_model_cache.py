"""The fleet's model cache: which files it keeps, where each host fetches them from, who may
reach it, and the inference deploy planned from the profiles: the cache fetches each file
from its origin first, every other host from the cache (its origin the fallback)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gpufleet.exposure import exposures
from gpufleet.inventory import validate_file
from gpufleet.model_cache import cache_host, cache_url, cached_files
from gpufleet.models import HostSpec
from gpufleet.paths import render_template
from gpufleet.preview import plan, profiles_for

ROOT = Path(__file__).parents[2]
LAB = str(ROOT / "inventory/lab.py")
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@pytest.fixture(scope="module")
def lab():
    return validate_file(LAB)


def test_each_file_is_kept_once_whoever_places_it(lab):
    files = {f.sha256: f for f in cached_files(lab)}
    gemma = files[GEMMA_SHA256]
    # Five hosts place the same Gemma GGUF: one file in the cache, fetched from its origin.
    assert set(gemma.hosts) == {"lab-gpu-1", "lab-lxc-1", "lab-infra-1", "lab-cpu-1", "lab-amd-1"}
    assert gemma.origin.endswith("/models/gemma-3-270m-q4_k_m.gguf")
    assert len(files) == 2  # and the embedding model lab-pve-1 serves


def test_hosts_fetch_from_the_cache_and_the_cache_host_from_itself(lab):
    assert cache_host(lab).name == "lab-infra-1"
    assert cache_url(lab["lab-gpu-1"], lab, GEMMA_SHA256) == (
        f"http://10.200.0.12:8090/gguf/{GEMMA_SHA256}"
    )
    # Its own allow-list does not name it: it asks its own loopback.
    assert cache_url(lab["lab-infra-1"], lab, GEMMA_SHA256).startswith("http://127.0.0.1:8090/")
    without = {n: s.model_copy(update={"groups": ("cpu_nodes",)}) for n, s in lab.items()}
    assert cache_url(without["lab-gpu-1"], without, GEMMA_SHA256) is None


def test_only_the_hosts_that_fetch_reach_the_cache(lab):
    cache = {e.service: e for e in exposures(lab["lab-infra-1"], lab)}["model cache"]
    assert cache.guarded and cache.address == "0.0.0.0"
    assert set(cache.clients) == {"lab-gpu-1", "lab-pve-1", "lab-lxc-1", "lab-cpu-1", "lab-amd-1"}
    assert str(lab["lab-infra-1"].model_cache.address) == "0.0.0.0"


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed here")
def test_the_cache_site_is_one_nginx_accepts(tmp_path):
    site = render_template(
        "model_cache/model-cache.conf.j2",
        address="127.0.0.1",
        port=8090,
        location="/gguf/",
        root=str(tmp_path / "models"),
    )
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;\n"
        f"events {{}}\nhttp {{\n{site.replace('/var/log/nginx/', str(tmp_path) + '/')}\n}}\n"
    )
    result = subprocess.run(
        ["nginx", "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


NO_GPU = {
    "pci": [], "nvidia_smi": [], "nvidia_smi_error": None, "driver_version": None,
    "module_flavour": None,
}  # fmt: skip


def test_the_cache_fetches_first_and_the_others_fetch_from_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    from gpufleet.facts import gpu as gpu_facts

    monkeypatch.setenv("GPUFLEET_LAB_DIR", str(tmp_path / "lab"))
    monkeypatch.setattr(gpu_facts, "_reports", {})
    profiles = profiles_for(LAB)

    def answer(host: str, fact: str, arguments: str) -> Any:
        if fact == "gpufleet.facts.gpu.NvidiaGpus":
            return NO_GPU
        return profiles[host].answer(fact, arguments)

    hosts = plan(LAB, ["deploys/inference.py"], answer)
    cached = [op for op in hosts["lab-infra-1"] if f"Cache {GEMMA_SHA256[:12]}" in op.name]
    assert cached and cached[0].changes
    (fetched,) = cached[0].commands
    assert "/models/gemma-3-270m-q4_k_m.gguf" in fetched and "/gguf/" not in fetched
    download = next(op for op in hosts["lab-gpu-1"] if "Download XS-LOC-FRE-gemma3-270m" in op.name)
    (command,) = download.commands
    from_cache = command.index(f"http://10.200.0.12:8090/gguf/{GEMMA_SHA256}")
    from_origin = command.index("/models/gemma-3-270m-q4_k_m.gguf")
    assert from_cache < from_origin


def test_one_host_caches_the_fleets_models(tmp_path):
    from gpufleet.inventory import InventoryError

    inventory = tmp_path / "two_caches.py"
    inventory.write_text(
        "cpu_nodes = [\n"
        "    ('nas-1', {'ssh_hostname': '10.9.0.1', 'hardware': {'cores': 4, 'ram_gb': 8}}),\n"
        "    ('nas-2', {'ssh_hostname': '10.9.0.2', 'hardware': {'cores': 4, 'ram_gb': 8}}),\n"
        "]\n"
        "model_cache = ['nas-1', 'nas-2']\n"
    )
    with pytest.raises(InventoryError) as error:
        validate_file(inventory)
    assert "host 'nas-2': groups: nas-1 is the fleet's model cache already" in str(error.value)


def test_the_monitoring_host_reaches_the_cache_to_probe_it(lab):
    """A monitoring host that fetches no model still reaches the cache: its blackbox probe
    asks the cache's health path."""
    monitor = HostSpec.model_validate(
        {
            "name": "mon-1",
            "groups": ["monitoring"],
            "lan_address": "10.200.0.99",
            "hardware": {"cores": 2, "ram_gb": 4},
        }
    )
    fleet = {**lab, "mon-1": monitor}
    cache = {e.service: e for e in exposures(lab["lab-infra-1"], fleet)}["model cache"]
    assert "mon-1" in cache.clients
