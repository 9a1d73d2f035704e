"""The Redis the routers share (lab-infra-1): Debian's redis-server, bound to loopback as the
lab inventory says, a password from Vault, and LiteLLM pointed at it."""

import time

import pytest
import requests

from gpufleet.secrets import parse_vault_reference
from gpufleet.vault import client_for

from .conftest import SPECS, redis_cli

INFRA = "10.200.0.12"
VLLM = "XS-LOC-FRE-gemma3-270m-vllm"


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


def test_a_failing_engine_is_recorded_in_redis_for_every_router(redis_password):
    # lab-pve-1's vLLM is configured but cannot run here: a request to it fails, and the
    # router records the failure (and the cooldown that follows) in Redis, not in its memory.
    master_key = vault_value(SPECS["lab-infra-1"].litellm.master_key)
    for _ in range(2):
        reply = requests.post(
            f"http://{INFRA}:4000/v1/chat/completions",
            headers={"Authorization": f"Bearer {master_key}"},
            json={"model": VLLM, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            timeout=120,
        )
        assert reply.status_code >= 500 or reply.status_code == 429, reply.text[:300]
    deployment = f"deployment:lab-pve-1/vllm/{VLLM}:"
    deadline = time.monotonic() + 20
    while True:
        keys = redis_cli(INFRA, f"--scan --pattern '{deployment}*'", redis_password).split()
        if keys or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {key.removeprefix(deployment) for key in keys} & {"allowed_fails", "cooldown"}, keys
