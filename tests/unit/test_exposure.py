"""Closed by default, decided from the inventory: where each service listens, who the firewall
lets in, and the nftables rules that follow (checked by the real ``nft -c`` where it runs)."""

from __future__ import annotations

import shutil
import subprocess
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from gpufleet.exposure import describe_exposures, exposures
from gpufleet.inventory import validate_file
from gpufleet.roles.firewall import ruleset

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def homelab():
    return validate_file(ROOT / "inventory/homelab.py")


@pytest.fixture(scope="module")
def lab():
    return validate_file(ROOT / "inventory/lab.py")


def by_service(spec, specs):
    return {e.service: e for e in exposures(spec, specs)}


def test_what_only_its_own_host_uses_listens_on_loopback(homelab):
    pi5l = homelab["pi5l"]  # router, gateway, monitoring and Vault in one
    found = by_service(pi5l, homelab)
    for service in ("litellm", "node exporter", "nginx exporter", "prometheus", "redis"):
        assert found[service].address == "127.0.0.1", service
        assert not found[service].guarded
    # The decision is what the services are given.
    assert pi5l.litellm.address == IPv4Address("127.0.0.1")
    assert pi5l.node_exporter_address == IPv4Address("127.0.0.1")
    # Vault is reached by the control machine, wherever it is, and asks for a token.
    assert found["vault"].address == "0.0.0.0" and not found["vault"].guarded


def test_what_other_hosts_use_lets_in_only_them(homelab):
    pi5l = homelab["pi5l"]
    router_addresses = (str(pi5l.lan_address), str(pi5l.tailscale_address))
    ollama = by_service(homelab["akshat-pc"], homelab)["ollama"]
    assert (ollama.address, ollama.clients, ollama.guarded) == ("0.0.0.0", ("pi5l",), True)
    assert ollama.sources == router_addresses
    assert homelab["akshat-pc"].ollama.address == IPv4Address("0.0.0.0")
    node = by_service(homelab["pi5-01"], homelab)["node exporter"]
    assert node.sources == router_addresses  # pi5l is the monitoring host too


def test_admin_sources_reach_every_port_and_vault_is_guarded_then(lab):
    infra = by_service(lab["lab-infra-1"], lab)
    for service in ("litellm", "prometheus", "vault", "llama-server"):
        assert infra[service].address == "0.0.0.0"
        assert infra[service].sources == ("10.200.0.1/32",), service
    gpu = by_service(lab["lab-gpu-1"], lab)["llama-server"]
    assert gpu.sources == ("10.200.0.1/32", "10.200.0.12")


def test_an_address_the_inventory_gives_is_kept(homelab):
    spec = homelab["akshat-pc"]
    pinned = spec.model_copy(
        update={"ollama": spec.ollama.model_copy(update={"address": IPv4Address("10.0.0.5")})}
    )
    specs = {**homelab, "akshat-pc": pinned}
    assert by_service(pinned, specs)["ollama"].address == "10.0.0.5"


def test_the_ruleset_resets_all_but_the_clients():
    text = ruleset(*_one_router_one_engine())
    assert 'iif "lo" accept' in text
    assert "tcp dport 8080 ip saddr { 10.9.0.2 } accept" in text
    assert "tcp dport 8080 reject with tcp reset" in text
    assert text.index("tcp dport 8080 ip saddr") < text.index("tcp dport 8080 reject")
    assert "dport 22" not in text  # sshd is never touched


def _one_router_one_engine():
    from gpufleet.exposure import decide_fleet
    from gpufleet.models import HostSpec

    raw = {
        "engine": HostSpec.model_validate(
            {
                "name": "engine",
                "groups": ["gpu_nodes"],
                "lan_address": "10.9.0.1",
                "hardware": {"cores": 4, "ram_gb": 16},
                "models": [
                    {
                        "model": "m",
                        "engine": "llama.cpp",
                        "source": "/m.gguf",
                        "alias": "S-LOC-FRE-m",
                    }
                ],
                "secrets": {"llamacpp_api_key": "file:/keys/llama"},
            }
        ),
        "router": HostSpec.model_validate(
            {
                "name": "router",
                "groups": ["router", "monitoring"],
                "lan_address": "10.9.0.2",
                "hardware": {"cores": 4, "ram_gb": 16},
            }
        ),
    }
    specs = decide_fleet(raw)
    return specs["engine"], specs


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed here")
@pytest.mark.parametrize("inventory", ["inventory/lab.py", "inventory/homelab.py"])
def test_nft_accepts_every_hosts_ruleset(inventory, tmp_path):
    specs = validate_file(ROOT / inventory)
    for name, spec in specs.items():
        if spec.os == "macos":
            continue
        rules = tmp_path / f"{name}.nft"
        rules.write_text(ruleset(spec, specs))
        checked = subprocess.run(["nft", "-c", "-f", str(rules)], capture_output=True, text=True)
        if "Operation not permitted" in checked.stderr:
            pytest.skip("nft -c needs CAP_NET_ADMIN")
        assert checked.returncode == 0, f"{name}: {checked.stderr}"


def test_gpufleet_firewall_tells_where_each_port_listens(homelab):
    text = describe_exposures(homelab)
    assert "  litellm          127.0.0.1:4000         this host only" in text
    assert "  ollama           0.0.0.0:11434        from 10.0.0.111, 100.77.119.64" in text
    assert "  vault            0.0.0.0:8200         from anywhere (asks for credentials)" in text
