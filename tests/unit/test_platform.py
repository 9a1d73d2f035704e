"""The gateway, router and secret store, as pure logic: routes and fallbacks from placements,
who may read which secret, the fleet CA, and the rendered configs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gpufleet.inventory import validate_file
from gpufleet.models import HostSpec, RouterDatabase, RouterRedis
from gpufleet.operations.vault import read_policy
from gpufleet.paths import render_template
from gpufleet.pki import FleetCA, certificate_names
from gpufleet.roles.router import render_config
from gpufleet.roles.vault import mlock_setting
from gpufleet.routing import backends, fallbacks, gateway_upstreams, router_config
from gpufleet.secrets import parse_vault_reference, secret_uses

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def homelab() -> dict[str, HostSpec]:
    return validate_file(ROOT / "inventory/homelab.py")


@pytest.fixture(scope="module")
def lab() -> dict[str, HostSpec]:
    return validate_file(ROOT / "inventory/lab.py")


def test_same_alias_same_priority_is_one_load_balanced_group(homelab):
    groups = {}
    for backend in backends(homelab):
        groups.setdefault(backend.group, set()).add(backend.host)
    # Seed 004: "Embeddings: all except Pis" - six hosts share one model group.
    assert groups["S-LOC-FRE-nomic-embed-text"] == {
        "old-office-pc", "evo-x2", "atomman-x7-ti", "mac-mini-m4-pro", "borgcube", "retromac",
    }  # fmt: skip


def test_backups_follow_the_redundancy_map(homelab):
    """Seed 004's map, row by row: primary, backup 1, backup 2, the cloud last."""
    router = homelab["pi5l"].litellm
    chains = {k: v for entry in fallbacks(homelab, router) for k, v in entry.items()}
    hosts = {}
    for backend in backends(homelab):
        hosts.setdefault(backend.group, set()).add(backend.host)
    # M Vision: Akshat-PC, Old-Office-PC (priority 2), Mac Mini (priority 3), then the cloud.
    vision = "M-LOC-FRE-llama3.2-vision-11b"
    assert hosts[vision] == {"akshat-pc"}
    assert hosts[f"{vision}.backup1"] == {"old-office-pc"}
    assert hosts[f"{vision}.backup2"] == {"mac-mini-m4-pro"}
    assert chains[vision] == [
        f"{vision}.backup1", f"{vision}.backup2", "M-CLD-PAY-gemini-flash-2.0",
    ]  # fmt: skip
    # XL Code: Akshat-PC, GTR9-Pro (CPU), EVO-X2 (CPU), then the cloud.
    coder = "XL-LOC-FRE-qwen2.5-coder-32b"
    assert (hosts[coder], hosts[f"{coder}.backup1"], hosts[f"{coder}.backup2"]) == (
        {"akshat-pc"}, {"gtr9-pro"}, {"evo-x2"},
    )  # fmt: skip
    assert chains["XL-LOC-FRE-deepseek-coder-236b"][-1] == "XL-CLD-PAY-claude-opus-4.5"
    assert chains[coder][:2] == [f"{coder}.backup1", f"{coder}.backup2"]
    # The 72B on the GPU and its Q4 copies on the three CPU boxes back each other up.
    assert hosts["XL-LOC-FRE-qwen2.5-72b-q4-cpu"] == {"gtr9-pro", "evo-x2", "ms-s1"}
    assert chains["XL-LOC-FRE-qwen2.5-72b"][0] == "XL-LOC-FRE-qwen2.5-72b-q4-cpu"
    assert chains["XL-LOC-FRE-qwen2.5-72b-q4-cpu"][0] == "XL-LOC-FRE-qwen2.5-72b"
    # L Code: Akshat-PC, Old-Office-PC, MS01.
    assert chains["L-LOC-FRE-codestral-22b"][:2] == [
        "XL-LOC-FRE-qwen2.5-coder-32b-q4", "M-LOC-FRE-codellama-13b",
    ]  # fmt: skip
    # Every chain ends in the cloud; the seven paid models are declared.
    assert all(chain[-1].split("-")[1] == "CLD" for chain in chains.values()), chains
    assert len(router.cloud_models) == 7


def test_lab_backup_is_the_cpu_host(lab):
    config = router_config(lab["lab-infra-1"], lab)
    entries = {e["model_name"]: e for e in config.settings["model_list"]}
    primary = entries["XS-LOC-FRE-gemma3-270m"]["litellm_params"]
    backup = entries["XS-LOC-FRE-gemma3-270m.backup1"]["litellm_params"]
    assert primary["api_base"] == "http://10.200.0.11:8080/v1"
    # The backup runs on the router's own host: reached on loopback.
    assert backup["api_base"] == "http://127.0.0.1:8080/v1"
    assert config.settings["router_settings"]["fallbacks"] == [
        {"XS-LOC-FRE-gemma3-270m": ["XS-LOC-FRE-gemma3-270m.backup1"]}
    ]


def test_router_config_holds_references_never_values(lab, homelab):
    for specs, router in ((lab, "lab-infra-1"), (homelab, "pi5l")):
        config = router_config(specs[router], specs)
        text = render_config(config.settings)
        keys = re.findall(r"api_key: (\S+)", text) + re.findall(r"master_key: (\S+)", text)
        assert keys and all(k == "none" or k.startswith("os.environ/") for k in keys)
        for variable in re.findall(r"os\.environ/(\w+)", text):
            assert config.environment[variable].startswith(("vault:", "file:"))
        assert yaml.safe_load(text)["model_list"]


def test_cloud_models_only_as_declared(homelab):
    config = router_config(homelab["pi5l"], homelab)
    cloud = [e for e in config.settings["model_list"] if "-CLD-" in e["model_name"]]
    declared = [c.name for c in homelab["pi5l"].litellm.cloud_models]
    assert sorted(e["model_name"] for e in cloud) == sorted(declared)
    for entry in cloud:
        provider = entry["litellm_params"]["model"].split("/")[0]
        variable = entry["litellm_params"]["api_key"].removeprefix("os.environ/")
        assert config.environment[variable] == f"vault:kv/gpufleet/cloud#{provider}"


def test_vllm_backend_gets_its_key_by_reference(lab):
    config = router_config(lab["lab-infra-1"], lab)
    vllm = next(e for e in config.settings["model_list"] if e["model_info"]["engine"] == "vllm")
    variable = vllm["litellm_params"]["api_key"].removeprefix("os.environ/")
    assert config.environment[variable] == lab["lab-pve-1"].secrets["vllm_api_key"]


def test_secret_uses_name_the_reader_and_what_is_generated(homelab):
    uses = secret_uses(homelab)
    by_field = {(u.host, u.field): u for u in uses}
    assert by_field[("pi5l", "gateway.clients.laptop")].service == "gateway"
    assert by_field[("pi5l", "LITELLM_MASTER_KEY")].generate
    cloud = [u for u in uses if u.reference == "vault:kv/gpufleet/cloud#anthropic"]
    assert cloud and not any(u.generate for u in cloud)  # a provider's key is never invented


def test_policy_reads_only_the_services_own_paths(homelab):
    uses = [u for u in secret_uses(homelab) if u.service == "gateway"]
    policy = read_policy(uses)
    assert 'path "kv/data/gpufleet/gateway"' in policy
    assert 'path "kv/data/gpufleet/litellm"' in policy  # the gateway sends the router's key
    assert "cloud" not in policy and "vllm" not in policy
    assert set(re.findall(r"capabilities = \[(.*)\]", policy)) == {'"read"'}


def test_vault_reference_parts():
    assert parse_vault_reference("vault:kv/gpufleet/vllm#api_key") == (
        "kv",
        "gpufleet/vllm",
        "api_key",
    )


def test_gateway_routes_to_the_router_and_optionally_each_engine(lab):
    spec = lab["lab-infra-1"]
    [router] = gateway_upstreams(spec, lab)
    assert (router.name, router.servers, router.route) == ("litellm", ("127.0.0.1:4000",), "/v1/")
    direct = spec.model_copy(
        update={"gateway": spec.gateway.model_copy(update={"direct_routes": True})}
    )
    routes = {u.route: u.servers for u in gateway_upstreams(direct, lab)}
    assert routes["/engines/lab-gpu-1/llama.cpp/"] == ("10.200.0.11:8080",)
    assert routes["/engines/lab-pve-1/vllm/"] == ("10.200.0.13:8000",)


def render_gateway(spec: HostSpec, specs: dict[str, HostSpec]) -> str:
    from gpufleet.roles.gateway import site_config

    return site_config(spec, specs)


def test_gateway_config_fixes_seed_002(homelab):
    text = render_gateway(homelab["pi5l"], homelab)
    server_at = text.index("server {")
    # limit_req_zone is only valid in the http block: before any server block.
    assert text.index("limit_req_zone $gpufleet_client") < server_at
    assert "zone=gpufleet_per_key:10m rate=100r/m" in text
    assert "ssl_protocols TLSv1.3;" in text and "TLSv1.2" not in text
    assert "proxy_buffering off;" in text and "proxy_read_timeout 300s;" in text
    assert "return 301 https://" in text
    assert "limit_req zone=gpufleet_per_key burst=20 nodelay;" in text
    assert not re.search(r"[0-9a-f]{32}", text)  # keys live in the 0640 include files only
    assert "include /etc/nginx/gpufleet/api-keys.map;" in text
    # Clients reach the router's inference API only, never its admin paths.
    assert "location ~ ^/v1/(chat/completions|completions|embeddings|models|" in text
    assert "location /key/" not in text and "location / " not in text


def test_fleet_ca_issues_certificates_that_name_the_host(tmp_path):
    ca = FleetCA.ensure(tmp_path / "ca")
    assert oct(ca.key.stat().st_mode & 0o777) == "0o600"
    assert oct(ca.folder.stat().st_mode & 0o777) == "0o700"
    cert, key = ca.issue("pi5l", ["pi5l", "localhost"], ["10.0.0.111", "127.0.0.1"], days=30)
    names, issuer = certificate_names(cert)
    assert names == {"DNS:pi5l", "DNS:localhost", "IP:10.0.0.111", "IP:127.0.0.1"}
    assert "gpufleet fleet CA" in issuer
    assert "PRIVATE KEY" in key and "PRIVATE KEY" not in cert
    assert FleetCA.ensure(tmp_path / "ca").fingerprint() == ca.fingerprint()  # made once


def test_mlock_per_platform(lab):
    spec = lab["lab-infra-1"]
    assert mlock_setting(spec, None)[0] is True  # OpenBao 2 has no mlock at all
    vault = spec.vault.model_copy(update={"flavor": "hashicorp", "storage": "file"})
    hashicorp = spec.model_copy(update={"vault": vault})
    assert mlock_setting(hashicorp, None) == (False, "")
    assert mlock_setting(hashicorp, "lxc")[0] is True
    raft = hashicorp.model_copy(update={"vault": vault.model_copy(update={"storage": "raft"})})
    assert mlock_setting(raft, None)[0] is True


def test_routes_command_shows_groups_fallbacks_and_references_only(lab):
    from gpufleet.routing import describe_routes

    text = describe_routes(lab)
    assert "fallback XS-LOC-FRE-gemma3-270m -> XS-LOC-FRE-gemma3-270m.backup1" in text
    assert "openai/XS-LOC-FRE-gemma3-270m @ http://127.0.0.1:8080/v1" in text
    assert "key LITELLM_MASTER_KEY <- vault:kv/gpufleet/litellm#master_key" in text
    assert "/v1/ -> 127.0.0.1:4000" in text


def test_routers_share_the_redis_of_the_first_router_that_enables_it(lab, homelab):
    settings = router_config(lab["lab-infra-1"], lab).settings["router_settings"]
    assert settings["redis_host"] == "127.0.0.1"  # on the router's own host
    assert settings["redis_password"] == "os.environ/REDIS_PASSWORD"
    environment = router_config(lab["lab-infra-1"], lab).environment
    assert environment["REDIS_PASSWORD"] == "vault:kv/gpufleet/redis#password"
    # A second router elsewhere reaches the same Redis over the network.
    second = lab["lab-gpu-1"].model_copy(update={"groups": ("router",)})
    fleet = {**lab, "lab-gpu-1": second}
    assert router_config(second, fleet).settings["router_settings"]["redis_host"] == "10.200.0.12"
    # Without Redis, no Redis settings and no password to read.
    plain = lab["lab-infra-1"].model_copy(
        update={"litellm": lab["lab-infra-1"].litellm.model_copy(update={"redis": RouterRedis()})}
    )
    alone = router_config(plain, {**lab, "lab-infra-1": plain})
    assert "redis_host" not in alone.settings["router_settings"]
    assert "REDIS_PASSWORD" not in alone.environment
    uses = {u.field: u for u in secret_uses(homelab) if u.host == "pi5l"}
    assert uses["REDIS_PASSWORD"].generate and uses["REDIS_PASSWORD"].service == "litellm"


def test_redis_settings_carry_bind_password_and_memory_cap():
    text = render_template(
        "redis/gpufleet.conf.j2",
        bind=["127.0.0.1", "10.0.0.111"],
        port=6379,
        password="p" * 64,
        maxmemory_mb=256,
    )
    lines = text.splitlines()
    assert "bind 127.0.0.1 10.0.0.111" in lines
    assert f"requirepass {'p' * 64}" in lines
    assert "maxmemory 256mb" in lines and "protected-mode yes" in lines


def test_routers_reach_litellms_database_by_a_url_built_from_vaults_password(lab, homelab):
    infra = lab["lab-infra-1"]
    # The lab provisions the database but keeps LiteLLM off it (no Prisma engines there).
    assert router_config(infra, lab).database_url is None
    uses = {u.field: u for u in secret_uses(lab) if u.host == "lab-infra-1"}
    assert uses["litellm.database.password"].reference == "vault:kv/gpufleet/postgres#litellm"
    assert uses["litellm.database.password"].generate
    using = infra.model_copy(
        update={
            "litellm": infra.litellm.model_copy(
                update={"database": RouterDatabase(enabled=True, router_uses_it=True)}
            )
        }
    )
    fleet = {**lab, "lab-infra-1": using}
    url = router_config(using, fleet).database_url
    assert url is not None and url.password == "vault:kv/gpufleet/postgres#litellm"
    assert url.render("p@ss/word") == "postgresql://litellm:p%40ss%2Fword@127.0.0.1:5432/litellm"
    # A second router elsewhere reaches it over the network, by the same reference.
    second = lab["lab-gpu-1"].model_copy(update={"groups": ("router",)})
    remote = router_config(second, {**fleet, "lab-gpu-1": second}).database_url
    assert remote is not None and remote.render("x") == (
        "postgresql://litellm:x@10.200.0.12:5432/litellm"
    )
    assert "DATABASE_URL" in {u.field for u in secret_uses(fleet)}
    # homelab's Pi5L runs the stack seed 004 describes: LiteLLM on its own PostgreSQL.
    pi5l = router_config(homelab["pi5l"], homelab).database_url
    assert pi5l is not None and pi5l.template.startswith(
        "postgresql://litellm:{password}@127.0.0.1"
    )


def test_embedding_models_are_routed_through_the_embeddings_api(homelab):
    """Ollama answers an embedding-only model's chat request with HTTP 400: LiteLLM must ask
    its embeddings API (``ollama/``: /api/embed), and health-check it with an embedding."""
    config = router_config(homelab["pi5l"], homelab)
    entries = [e for e in config.settings["model_list"] if "-LOC-" in e["model_name"]]
    embedding = {e["model_name"] for e in entries if e["model_info"]["mode"] == "embedding"}
    assert embedding == {
        "S-LOC-FRE-nomic-embed-text", "M-LOC-FRE-mxbai-embed-large", "M-LOC-FRE-bge-m3",
        "S-LOC-FRE-arctic-embed", "S-LOC-FRE-granite-embed",
    }  # fmt: skip
    for entry in entries:
        params = entry["litellm_params"]
        if entry["model_name"] in embedding:
            assert params["model"] == f"ollama/{entry['model_name']}"
            assert params["api_base"].endswith(":11434")
        else:
            assert params["model"].startswith("ollama_chat/"), params
