"""testinfra and real traffic: OpenBao holding every key, the LiteLLM router, the NGINX
gateway in front. A client reaches the llama.cpp server on another lab host through
NGINX -> LiteLLM; the cases seed 002 and 004 ask for are requests, not file checks."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import time

import pytest
import requests

from gpufleet import lab
from gpufleet.secrets import parse_vault_reference, secret_uses
from gpufleet.vault import (
    client_for,
    deploy_credentials_file,
    init_file,
    read_shares,
    share_file,
)

from .conftest import ROOT, SPECS, llama_headers, pyinfra, redis_cli, ssh, vault_secrets

INFRA = "10.200.0.12"
GPU = "10.200.0.11"
GATEWAY = f"https://{INFRA}"
MODEL = "XS-LOC-FRE-gemma3-270m"
EMBEDDING_ALIAS = "XS-LOC-FRE-all-minilm-l6-v2"
SITE = "/etc/nginx/conf.d/gpufleet-gateway.conf"
REDIS_PASSWORD = SPECS["lab-infra-1"].litellm.redis.password


@pytest.fixture(scope="module")
def vault(lab_session):
    return client_for(SPECS["lab-infra-1"])


@pytest.fixture(scope="module")
def secret_values(vault) -> dict[str, str]:
    """Every secret value of the lab run: Vault's keys, the vLLM file key, unseal keys, token."""
    values = vault_secrets(vault)
    values["vllm file key"] = (lab.lab_dir() / lab.VLLM_KEY_FILE).read_text().strip()
    path = init_file(SPECS["lab-infra-1"])
    values.update({f"unseal key {i}": k for i, k in enumerate(read_shares(path))})
    deploy = json.loads(deploy_credentials_file(path).read_text())
    values["deploy secret_id"] = deploy["secret_id"]
    values["deploy token"] = str(vault.token)
    return values


def post(path: str, key: str | None, ca: str, retries: int = 30, **body) -> requests.Response:
    """A request through the gateway; waits out the per-key budget other tests spent."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for _ in range(retries):
        reply = requests.post(
            f"{GATEWAY}{path}", json=body, headers=headers, verify=ca, timeout=120
        )
        if reply.status_code != 429:
            return reply
        time.sleep(1.5)
    return reply


def tls_handshake(port: int, ca: str, max_version: ssl.TLSVersion | None = None):
    """The protocol and (DER) certificate a lab-infra-1 listener presents to a client
    that trusts only the fleet CA."""
    context = ssl.create_default_context(cafile=ca)
    if max_version is not None:
        context.maximum_version = max_version
    with (
        socket.create_connection((INFRA, port)) as raw,
        context.wrap_socket(raw, server_hostname="lab-infra-1") as tls,
    ):
        return tls.version(), tls.getpeercert(binary_form=True)


def predicted_tokens(address: str) -> float:
    metrics = requests.get(f"http://{address}:8080/metrics", headers=llama_headers(), timeout=10)
    metrics = metrics.text
    line = next(x for x in metrics.splitlines() if x.startswith("llamacpp:tokens_predicted_total"))
    return float(line.split()[-1])


def completes_through_the_gateway(alias: str, address: str, client_key: str, fleet_ca) -> None:
    """A client's completion of ``alias`` comes through NGINX and LiteLLM, and the
    llama-server at ``address`` generated its tokens (llama.cpp counts what it produced)."""
    before = predicted_tokens(address)
    reply = post(
        "/v1/chat/completions",
        client_key,
        fleet_ca,
        model=alias,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=8,
    )
    assert reply.status_code == 200, reply.text
    produced = reply.json()["usage"]["completion_tokens"]
    assert produced > 0
    assert predicted_tokens(address) >= before + produced


# --- the secret store ------------------------------------------------------------------------


def test_openbao_is_initialized_unsealed_and_its_keys_stay_on_this_machine(vault):
    assert vault.initialized() and not vault.sealed()
    path = init_file(SPECS["lab-infra-1"])
    spec = SPECS["lab-infra-1"].vault
    shares = [share_file(path, n) for n in range(1, spec.key_shares + 1)]
    credentials = deploy_credentials_file(path)
    for kept in (path, *shares, credentials):
        assert oct(kept.stat().st_mode & 0o777) == "0o600", kept
    # The setup's root token is gone from this machine; deploys work as gpufleet-deploy.
    assert "root_token" not in json.loads(path.read_text())
    assert vault.request("GET", "auth/token/lookup-self")["data"]["policies"] == [
        "default",
        "gpufleet-deploy",
    ]
    # Not on the host: not in a file outside the encrypted store, not in any log.
    for secret in (*read_shares(path), json.loads(credentials.read_text())["secret_id"]):
        found = ssh(INFRA, f"grep -rlF {secret} /etc /opt /usr/local /root /var/log /tmp || true")
        assert found.strip() == ""
        assert secret not in ssh(INFRA, "journalctl --no-pager -o cat")


def test_the_deploy_token_cannot_do_what_a_deploy_does_not(vault):
    from gpufleet.vault import VaultError

    for method, path, body in (
        ("GET", "sys/raw/core/keyring", None),
        ("POST", "auth/token/create", {"policies": ["root"]}),
        ("PUT", "sys/policies/acl/gpufleet-deploy", {"policy": 'path "*" {}'}),
        ("POST", "sys/auth/userpass", {"type": "userpass"}),
    ):
        with pytest.raises(VaultError, match=r"HTTP (403|405)"):
            vault.request(method, path, body)


def test_openbao_speaks_only_tls_13_with_a_fleet_certificate(fleet_ca):
    assert tls_handshake(8200, fleet_ca)[0] == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        tls_handshake(8200, fleet_ca, max_version=ssl.TLSVersion.TLSv1_2)


def test_every_fleet_key_is_256_random_bits_and_distinct(secret_values):
    references = {
        u.reference for u in secret_uses(SPECS) if u.generate and u.reference.startswith("vault:")
    }
    generated = {secret_values[r] for r in references}
    assert len(references) >= 2  # the gateway client's key and the router's master key
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in generated)
    assert len(generated) == len(references)


def approle_token(vault, service: str) -> str:
    role = f"auth/approle/role/gpufleet-{service}"
    role_id = vault.request("GET", f"{role}/role-id")["data"]["role_id"]
    secret_id = vault.request("POST", f"{role}/secret-id")["data"]["secret_id"]
    login = vault.request(
        "POST", "auth/approle/login", {"role_id": role_id, "secret_id": secret_id}
    )
    return str(login["auth"]["client_token"])


def test_each_service_approle_reads_its_own_secrets_and_nothing_else(vault):
    from gpufleet.vault import VaultClient, VaultError

    gateway = VaultClient(vault.address, approle_token(vault, "gateway"), vault.ca_file)
    assert gateway.kv_get("kv", "gpufleet/gateway")["lab_client"]
    router = VaultClient(vault.address, approle_token(vault, "litellm"), vault.ca_file)
    assert router.kv_get("kv", "gpufleet/litellm")["master_key"]
    with pytest.raises(VaultError, match="403"):
        router.kv_get("kv", "gpufleet/gateway")  # the router never needs client keys
    with pytest.raises(VaultError, match="403"):
        gateway.request("GET", "sys/mounts")


# --- the router and the gateway on the host --------------------------------------------------


@pytest.mark.hosts("lab-infra-1")
def test_keys_live_only_in_tight_files(lab_host, secret_values):
    env = lab_host.testinfra.file("/etc/litellm/litellm.env")
    assert (env.mode, env.user, env.group) == (0o600, "root", "root")
    keys = lab_host.testinfra.file("/etc/nginx/gpufleet/api-keys.map")
    assert (keys.mode, keys.user, keys.group) == (0o640, "root", "www-data")
    tls_key = lab_host.testinfra.file("/etc/nginx/tls/gateway.key")
    assert tls_key.mode == 0o640 and tls_key.group == "root"
    for public in ("/etc/litellm/config.yaml", SITE, "/etc/systemd/system/litellm.service"):
        content = lab_host.testinfra.file(public).content_string
        assert not any(v in content for v in secret_values.values()), public
    config = lab_host.testinfra.file("/etc/litellm/config.yaml").content_string
    assert "master_key: os.environ/LITELLM_MASTER_KEY" in config


@pytest.mark.hosts("lab-infra-1")
def test_router_and_gateway_run_and_nginx_accepts_its_config(lab_host):
    for service in ("openbao", "litellm", "nginx"):
        assert lab_host.testinfra.service(service).is_running, service
        assert lab_host.testinfra.service(service).is_enabled, service
    assert lab_host.testinfra.run("nginx -t").rc == 0
    assert lab_host.testinfra.socket("tcp://0.0.0.0:4000").is_listening
    assert lab_host.testinfra.socket("tcp://0.0.0.0:443").is_listening


# --- a client's view ---------------------------------------------------------------------------


def test_plain_http_is_redirected_to_https():
    reply = requests.get(f"http://{INFRA}/v1/models", allow_redirects=False, timeout=10)
    assert reply.status_code == 301
    assert reply.headers["Location"] == f"https://{INFRA}/v1/models"


def test_gateway_certificate_comes_from_vault_pki_under_the_fleet_ca(vault, fleet_ca):
    version, der = tls_handshake(443, fleet_ca)
    assert version == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        tls_handshake(443, fleet_ca, max_version=ssl.TLSVersion.TLSv1_2)
    serial = format(
        int(
            subprocess.run(
                ["openssl", "x509", "-inform", "DER", "-noout", "-serial"],
                input=der,
                capture_output=True,
                check=True,
            )
            .stdout.decode()
            .split("=")[1],
            16,
        ),
        "x",
    )
    issued = vault.request("LIST", "pki/certs")["data"]["keys"]
    assert any(s.replace(":", "").lstrip("0") == serial.lstrip("0") for s in issued)


def test_requests_without_a_valid_key_get_401(fleet_ca, client_key):
    for key in (None, "0" * 64, client_key[:-1]):
        reply = post("/v1/chat/completions", key, fleet_ca, model=MODEL, messages=[])
        assert reply.status_code == 401, key
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        assert reply.json()["error"]["code"] == 401


def test_a_client_gets_a_real_completion_through_nginx_and_litellm(fleet_ca, client_key):
    # The primary on lab-gpu-1 generates it.
    completes_through_the_gateway(MODEL, GPU, client_key, fleet_ca)


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


def test_an_embedding_model_answers_v1_embeddings_through_the_gateway(fleet_ca, client_key):
    """all-MiniLM-L6-v2, served by llama-server on lab-pve-1 and routed by LiteLLM as an
    embedding model: real vectors, close for sentences that mean the same."""
    texts = [
        "A man is playing a guitar.",
        "Someone is strumming a guitar.",
        "The stock market fell sharply today.",
    ]
    reply = post("/v1/embeddings", client_key, fleet_ca, model=EMBEDDING_ALIAS, input=texts)
    assert reply.status_code == 200, reply.text
    vectors = [item["embedding"] for item in sorted(reply.json()["data"], key=lambda d: d["index"])]
    assert [len(v) for v in vectors] == [384, 384, 384]
    same, unrelated = _cosine(vectors[0], vectors[1]), _cosine(vectors[0], vectors[2])
    assert same > 0.5 > unrelated, (same, unrelated)


def test_streaming_arrives_in_chunks(fleet_ca, client_key):
    headers = {"Authorization": f"Bearer {client_key}"}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count to five."}],
        "max_tokens": 12,
        "stream": True,
    }
    with requests.post(
        f"{GATEWAY}/v1/chat/completions",
        json=body,
        headers=headers,
        verify=fleet_ca,
        stream=True,
        timeout=120,
    ) as reply:
        assert reply.status_code == 200
        events = [line for line in reply.iter_lines() if line.startswith(b"data: ")]
    assert len(events) >= 3 and events[-1] == b"data: [DONE]"


def test_a_killed_primary_falls_back_to_the_backup(fleet_ca, client_key, vault):
    ssh(GPU, "systemctl stop llama-server")
    try:
        # The CPU backup on lab-infra-1 answers.
        completes_through_the_gateway(MODEL, INFRA, client_key, fleet_ca)
        # The failure is recorded in the routers' shared Redis, not in one process's memory.
        mount, path, key = parse_vault_reference(REDIS_PASSWORD)
        password = str(vault.kv_get(mount, path)[key])
        deadline = time.monotonic() + 20  # LiteLLM writes to Redis a moment after replying
        while True:
            failures = redis_cli(INFRA, "--scan --pattern 'deployment:lab-gpu-1/*'", password)
            if f"deployment:lab-gpu-1/llama.cpp/{MODEL}:" in failures:
                break
            assert time.monotonic() < deadline, failures
            time.sleep(1)
    finally:
        ssh(GPU, "systemctl start llama-server")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://{GPU}:8080/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)


def test_a_burst_over_the_budget_gets_429(fleet_ca, client_key):
    spec = SPECS["lab-infra-1"].gateway
    time.sleep(60 / spec.rate_per_minute * (spec.burst + 1))  # let the budget refill
    headers = {"Authorization": f"Bearer {client_key}"}
    codes = [
        requests.get(f"{GATEWAY}/v1/models", headers=headers, verify=fleet_ca, timeout=30)
        for _ in range(spec.burst + 6)
    ]
    statuses = [r.status_code for r in codes]
    assert statuses[: spec.burst] == [200] * spec.burst
    assert 429 in statuses
    limited = next(r for r in codes if r.status_code == 429)
    assert limited.json()["error"]["code"] == 429 and limited.headers["Retry-After"] == "60"


# --- a bad template never takes the gateway down ----------------------------------------------


def test_a_config_nginx_rejects_fails_the_deploy_and_the_old_one_keeps_serving(fleet_ca):
    site_before = ssh(INFRA, f"sha256sum {SITE}")
    gateway = SPECS["lab-infra-1"].gateway.model_dump(mode="json")
    gateway["extra_directives"] = ["proxy_buffering maybe;"]
    broken = pyinfra(
        "deploys/gateway.py",
        "-y",
        "--limit",
        "lab-infra-1",
        "--data",
        f"gateway={json.dumps(gateway)}",
    )
    assert broken.returncode != 0
    assert "rejected by `nginx -t -q`" in broken.stderr
    assert "proxy_buffering" in broken.stderr  # nginx's own words name the bad directive
    assert ssh(INFRA, f"sha256sum {SITE}") == site_before
    assert ssh(INFRA, "systemctl is-active nginx").strip() == "active"
    assert requests.get(f"{GATEWAY}/health", verify=fleet_ca, timeout=10).text == "ok\n"


def served_names(der: bytes) -> str:
    return subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-noout", "-ext", "subjectAltName"],
        input=der,
        capture_output=True,
        check=True,
    ).stdout.decode()


def test_a_certificate_of_your_own_is_served_and_the_fleet_one_comes_back(fleet_ca, tmp_path):
    from gpufleet.pki import FleetCA

    own = FleetCA.ensure(lab.lab_dir() / "ca").issue(
        "ai.example.lan", ["ai.example.lan", "lab-infra-1"], [INFRA], days=30
    )
    (tmp_path / "own.crt").write_text(own[0])
    key = tmp_path / "own.key"
    key.touch(mode=0o600)
    key.write_text(own[1])
    gateway = SPECS["lab-infra-1"].gateway.model_dump(mode="json")
    gateway.update(certificate_file=str(tmp_path / "own.crt"), private_key=f"file:{key}")
    data = f"gateway={json.dumps(gateway)}"
    provided = pyinfra("deploys/gateway.py", "-y", "--limit", "lab-infra-1", "--data", data)
    assert provided.returncode == 0, provided.stderr[-2000:]
    assert "DNS:ai.example.lan" in served_names(tls_handshake(443, fleet_ca)[1])
    assert own[1].strip() not in provided.stderr + json.dumps(provided.report)
    back = pyinfra("deploys/gateway.py", "-y", "--limit", "lab-infra-1")
    assert back.returncode == 0, back.stderr[-2000:]
    names = served_names(tls_handshake(443, fleet_ca)[1])
    assert "ai.example.lan" not in names and "DNS:lab-infra-1" in names


# --- secrets never leak ------------------------------------------------------------------------


def test_no_secret_value_in_plans_outputs_logs_or_git(lab_session, secret_values):
    outputs = []
    for runs in lab_session.runs.values():
        for run in (runs.dry, runs.first, runs.second):
            outputs.append(run.stderr + json.dumps(run.report))
    logs = {address: ssh(address, "journalctl --no-pager -o cat") for address in (INFRA, GPU)}
    logs["nginx"] = ssh(INFRA, "cat /var/log/nginx/*.log")
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    repository = b"".join(
        (ROOT / name.decode()).read_bytes()
        for name in tracked
        if name and (ROOT / name.decode()).is_file()  # templates/ is a link to a folder
    )
    for name, value in secret_values.items():
        assert not any(value in output for output in outputs), name
        assert not any(value in log for log in logs.values()), name
        assert value.encode() not in repository, name
    assert b"def nginx_gateway" in repository  # the scan read the tracked tree


def test_on_the_hosts_secrets_sit_only_in_the_files_meant_for_them(secret_values):
    expected = {
        INFRA: {
            "/etc/litellm/litellm.env",
            "/etc/nginx/gpufleet/api-keys.map",
            "/etc/nginx/gpufleet/upstream-auth.conf",
            "/etc/redis/gpufleet.conf",
            "/etc/postgresql/gpufleet/litellm.password",
        },
        "10.200.0.13": {"/etc/gpufleet/vllm.env"},
        GPU: set(),
        "10.200.0.14": set(),
    }
    where = "/etc /opt /usr/local /var/log /var/lib/gpufleet /root/.ssh /tmp /home"
    for address, files in expected.items():
        found = subprocess.run(
            ["ssh", "-F", str(lab.ssh_config_path()), address, f"grep -rlF -f - {where}; true"],
            input="\n".join(secret_values.values()) + "\n",
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.split()
        assert set(found) == files, address
        for path in found:
            mode = int(ssh(address, f"stat -c %a {path}").strip(), 8)
            assert mode & 0o007 == 0, f"{address}:{path} is readable by others"
