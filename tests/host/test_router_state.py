"""The state the routers share on lab-infra-1: Debian's redis-server, bound to loopback as the
lab inventory says, a password from Vault, and LiteLLM pointed at it; Debian's PostgreSQL with
LiteLLM's role and database, its password from Vault and changed when Vault's changes."""

import re
import secrets
import time

import pytest
import requests

from gpufleet.secrets import parse_vault_reference
from gpufleet.vault import client_for

from .conftest import SPECS, pyinfra, redis_cli, ssh

INFRA = "10.200.0.12"
VLLM = "XS-LOC-FRE-gemma3-270m-vllm"


def vault_value(reference: str) -> str:
    mount, path, key = parse_vault_reference(reference)
    return str(client_for(SPECS["lab-infra-1"]).kv_get(mount, path)[key])


def assert_running_on_loopback_only(lab_host, service: str, port: int) -> None:
    unit = lab_host.testinfra.service(service)
    assert unit.is_running and unit.is_enabled
    assert lab_host.testinfra.socket(f"tcp://127.0.0.1:{port}").is_listening
    for address in ("0.0.0.0", INFRA):
        assert not lab_host.testinfra.socket(f"tcp://{address}:{port}").is_listening


@pytest.fixture(scope="module")
def redis_password(lab_session) -> str:
    return vault_value(SPECS["lab-infra-1"].litellm.redis.password)


@pytest.mark.hosts("lab-infra-1")
def test_redis_runs_on_loopback_only_with_its_settings_readable_by_redis_only(lab_host):
    assert_running_on_loopback_only(lab_host, "redis-server", 6379)
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


def psql_as_litellm(password: str, query: str) -> str:
    """psql over TCP on lab-infra-1's loopback as LiteLLM's role; the password on stdin."""
    database = SPECS["lab-infra-1"].litellm.database
    return ssh(
        INFRA,
        "read -r PGPASSWORD; export PGPASSWORD; "
        f"psql -h 127.0.0.1 -p {database.port} -U {database.user} -d {database.name} -w "
        f"-Atc {query!r} 2>&1 || true",
        stdin=password + "\n",
    )


@pytest.fixture(scope="module")
def database_password(lab_session) -> str:
    return vault_value(SPECS["lab-infra-1"].litellm.database.password)


@pytest.mark.hosts("lab-infra-1")
def test_postgres_listens_on_loopback_only(lab_host):
    assert_running_on_loopback_only(lab_host, "postgresql", 5432)
    password_file = lab_host.testinfra.file("/etc/postgresql/gpufleet/litellm.password")
    assert (password_file.mode, password_file.user, password_file.group) == (
        0o640,
        "root",
        "postgres",
    )


def test_litellm_role_logs_in_with_vaults_password_and_owns_its_database(database_password):
    assert re.fullmatch(r"[0-9a-f]{64}", database_password)
    assert (
        psql_as_litellm(database_password, "select current_user, current_database()").split("\n")[0]
        == "litellm|litellm"
    )
    created = psql_as_litellm(
        database_password, "create table gpufleet_probe (x int); drop table gpufleet_probe"
    )
    assert "ERROR" not in created, created
    assert "password authentication failed" in psql_as_litellm("0" * 64, "select 1")
    stored = ssh(
        INFRA,
        "runuser -u postgres -- psql -Atc "
        "\"select rolpassword from pg_authid where rolname = 'litellm'\"",
    ).strip()
    assert stored.startswith("SCRAM-SHA-256$") and database_password not in stored


@pytest.mark.hosts("lab-infra-1")
def test_the_router_is_kept_off_the_database_as_the_lab_inventory_says(lab_host):
    environment = lab_host.testinfra.check_output("cat /etc/litellm/litellm.env")
    assert "DATABASE_URL" not in environment


def test_a_new_password_in_vault_reaches_postgres_on_the_next_run(database_password):
    reference = SPECS["lab-infra-1"].litellm.database.password
    mount, path, key = parse_vault_reference(reference)
    vault = client_for(SPECS["lab-infra-1"])
    rotated = secrets.token_hex(32)
    vault.kv_put(mount, path, {**vault.kv_get(mount, path), key: rotated})
    try:
        run = pyinfra("deploys/router.py", "--limit", "lab-infra-1", "-y")
        assert run.returncode == 0, run.stderr[-2000:]
        changed = [operation for operation, host in run.changed if host == "lab-infra-1"]
        assert any("Set litellm's password" in operation for operation in changed), changed
        assert rotated not in run.stderr
        assert psql_as_litellm(rotated, "select 1").strip() == "1"
        assert "password authentication failed" in psql_as_litellm(database_password, "select 1")
    finally:
        vault.kv_put(mount, path, {**vault.kv_get(mount, path), key: database_password})
        restored = pyinfra("deploys/router.py", "--limit", "lab-infra-1", "-y")
        assert restored.returncode == 0, restored.stderr[-2000:]
    assert psql_as_litellm(database_password, "select 1").strip() == "1"
