"""The Redis the routers share (lab-infra-1): Debian's redis-server, bound to loopback as the
lab inventory says, a password from Vault, and LiteLLM pointed at it."""

import pytest
import requests

from gpufleet.secrets import parse_vault_reference
from gpufleet.vault import client_for

from .conftest import SPECS, redis_cli

INFRA = "10.200.0.12"
MODEL = "XS-LOC-FRE-gemma3-270m"


def vault_value(reference: str) -> str:
    mount, path, key = parse_vault_reference(reference)
    return str(client_for(SPECS["lab-infra-1"]).kv_get(mount, path)[key])


@pytest.fixture(scope="module")
def redis_password(lab_session) -> str:
    return vault_value(SPECS["lab-infra-1"].litellm.redis.password)


@pytest.mark.hosts("lab-infra-1")
def test_redis_runs_on_loopback_only_with_its_settings_readable_by_redis_only(lab_host):
    service = lab_host.testinfra.service("redis-server")
    assert service.is_running and service.is_enabled
    assert lab_host.testinfra.socket("tcp://127.0.0.1:6379").is_listening
    assert not lab_host.testinfra.socket("tcp://0.0.0.0:6379").is_listening
    assert not lab_host.testinfra.socket("tcp://10.200.0.12:6379").is_listening
    settings = lab_host.testinfra.file("/etc/redis/gpufleet.conf")
    assert (settings.mode, settings.user, settings.group) == (0o640, "root", "redis")
    main = lab_host.testinfra.file("/etc/redis/redis.conf").content_string.strip()
    assert main.splitlines()[-1] == "include /etc/redis/gpufleet.conf"


def test_redis_wants_the_password_from_vault(redis_password):
    assert len(redis_password) == 64 and int(redis_password, 16) >= 0
    assert "NOAUTH" in redis_cli(INFRA, "ping", None)
    assert "WRONGPASS" in redis_cli(INFRA, "ping", "0" * 64)
    assert redis_cli(INFRA, "ping", redis_password).strip() == "PONG"
    maxmemory = redis_cli(INFRA, "config get maxmemory", redis_password).split()[-1]
    assert maxmemory == str(256 * 1024 * 1024)


@pytest.mark.hosts("lab-infra-1")
def test_the_router_is_pointed_at_redis_by_reference(lab_host, redis_password):
    config = lab_host.testinfra.file("/etc/litellm/config.yaml").content_string
    assert "redis_host: 127.0.0.1" in config
    assert "redis_password: os.environ/REDIS_PASSWORD" in config
    assert redis_password not in config
    environment = lab_host.testinfra.check_output("cat /etc/litellm/litellm.env")
    assert f"REDIS_PASSWORD={redis_password}" in environment.splitlines()


def test_the_router_keeps_its_usage_counts_in_redis(redis_password):
    master_key = vault_value(SPECS["lab-infra-1"].litellm.master_key)
    reply = requests.post(
        f"http://{INFRA}:4000/v1/chat/completions",
        headers={"Authorization": f"Bearer {master_key}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text[:300]
    keys = redis_cli(INFRA, "--scan --pattern 'global_router:*'", redis_password).split()
    # LiteLLM counts requests per deployment per minute in Redis, for every router to see.
    assert any(key.startswith(f"global_router:lab-gpu-1/llama.cpp/{MODEL}:") for key in keys)
