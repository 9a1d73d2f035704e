"""Operations on a Vault/OpenBao server's state, through its API from the control machine.

Each one reads the server while the deploy is planned (reads only: a dry run changes
nothing) and does its work when it runs, so unseal keys, the root token and generated
secrets never appear in a plan, an operation's arguments or a log line.

Tokens: the first setup works with the root token of the init answer, revoked at its end
(``root_revoked``); every later run with the ``gpufleet-deploy`` AppRole (``deploy_access``),
and the few writes its policy does not allow (an auth method, the deploy policy itself, the
PKI's CA) with a root token made from the unseal key shares and revoked right after.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable

from pyinfra import host
from pyinfra.api import FunctionCommand, operation
from pyinfra.api.host import Host
from pyinfra.api.state import State

from gpufleet.models import HostSpec
from gpufleet.pki import FleetCA
from gpufleet.secrets import SecretUse, parse_vault_reference
from gpufleet.vault import (
    DEPLOY_ROLE,
    VaultClient,
    VaultError,
    answer_saved,
    client_for,
    deploy_credentials_file,
    forget_root_token,
    init_file,
    read_record,
    read_shares,
    root_client,
    save_init_answer,
    write_private,
)


def _now_or_pending(check: Callable[[VaultClient], bool], spec: HostSpec) -> bool:
    """Whether ``check`` holds now; False while the server cannot answer (first run)."""
    try:
        return check(client_for(spec))
    except VaultError:
        return False


def _wait_until_reachable(client: VaultClient, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not client.reachable():
        if time.monotonic() > deadline:
            raise VaultError(f"{client.address} did not answer within {seconds:.0f} s")
        time.sleep(0.5)


def _wait_for_leader(client: VaultClient, seconds: float = 60) -> None:
    """Until the unsealed node leads (raft elects one a moment after unsealing); writes
    before that fail with 'local node not active'."""
    deadline = time.monotonic() + seconds
    while not client.send("GET", "sys/leader").get("leader_address"):
        if time.monotonic() > deadline:
            raise VaultError(f"{client.address} elected no leader within {seconds:.0f} s")
        time.sleep(0.5)


def _run(work: Callable[[VaultClient], None], spec: HostSpec) -> FunctionCommand:
    def execute(state: State, host: Host) -> bool:
        client = client_for(spec)
        try:
            _wait_until_reachable(client)
            work(client_for(spec))  # again: the token may have appeared meanwhile
        except VaultError as error:
            host.log_styled(f"Vault: {error}", fg="red")
            return False
        return True

    return FunctionCommand(execute, (), {})


def lost_answer(spec: HostSpec, why: str) -> VaultError:
    """The server was initialized but its answer never reached this machine."""
    path = init_file(spec)
    return VaultError(
        f"{spec.name} is initialized but {why}: no unseal key share or root token of it is "
        f"saved on this machine ({path.parent}). If that answer is kept elsewhere, put its "
        f"shares in {path.stem}.share-1 ... (0600) and its record in {path.name}, and run "
        f"again. If it is lost, the server can never be unsealed again, and `operator "
        "generate-root` and `operator rekey` both need a threshold of those shares: a new "
        "server holds nothing yet, so stop it, empty its data folder and run again to "
        "initialize it afresh"
    )


@operation()
def initialized(spec: HostSpec):
    """
    Initialize the server once. Its answer is written to the control machine before
    anything else: each unseal key share to a 0600 file of its own, then the root token (to
    ``vault.init_file``), each synced to disk; nowhere else.

    .. code:: python

        vault.initialized(spec=host_spec())
    """
    path = init_file(spec)

    def kept() -> bool:
        """Initialized elsewhere is fine when you bring a token of your own (VAULT_TOKEN)."""
        return answer_saved(path) or bool(os.environ.get("VAULT_TOKEN"))

    if _now_or_pending(lambda c: c.initialized(), spec) and kept():
        host.noop(f"{spec.name}: Vault is initialized; its shares are in {path.parent}")
        return

    def initialize(client: VaultClient) -> None:
        if client.initialized():
            if not kept():  # by someone else, or by a run whose answer was lost
                raise lost_answer(spec, "its answer is not on this machine")
            return
        if answer_saved(path):
            raise VaultError(f"{path} exists but the server is new; move the old files away")
        try:
            answer = client.initialize(spec.vault.key_shares, spec.vault.key_threshold)
        except VaultError as error:
            # A time-out may hide a server that finished: never go on as if nothing happened.
            _wait_until_reachable(client)
            if client.initialized():
                raise lost_answer(spec, f"its answer was lost on the way ({error})") from None
            raise
        save_init_answer(path, answer, spec.vault.key_threshold)

    yield _run(initialize, spec)


@operation()
def unsealed(spec: HostSpec, force: bool = False):
    """
    Unseal the server with the share files of the control machine when it is sealed (after
    every start).

    + force: unseal attempt even if the server was unsealed when planned (use with ``_if``
      after a restart)

    .. code:: python

        vault.unsealed(spec=spec, force=True, _if=restarted.did_change)
    """
    if not force and _now_or_pending(lambda c: not c.sealed(), spec):
        host.noop(f"{spec.name}: Vault is unsealed")
        return

    def unseal(client: VaultClient) -> None:
        if client.sealed():
            shares = read_shares(init_file(spec))
            if not shares:
                raise VaultError(f"no unseal key share next to {init_file(spec)}")
            client.unseal(shares)
            _wait_for_leader(client)

    yield _run(unseal, spec)


@operation()
def secrets_engine(
    spec: HostSpec,
    path: str,
    kind: str,
    options: dict[str, str] | None = None,
    max_lease_ttl: str | None = None,
):
    """
    Enable a secrets engine (``kv`` version 2, ``pki``) at ``path``.

    .. code:: python

        vault.secrets_engine(spec=spec, path="kv", kind="kv", options={"version": "2"})
    """
    if _now_or_pending(lambda c: path in c.mounts(), spec):
        host.noop(f"{path}/ is mounted")
        return

    def enable(client: VaultClient) -> None:
        if path not in client.mounts():
            body: dict[str, object] = {"type": kind, "options": options or {}}
            if max_lease_ttl:
                body["config"] = {"max_lease_ttl": max_lease_ttl}
            client.request("POST", f"sys/mounts/{path}", body)

    yield _run(enable, spec)


@operation()
def auth_method(spec: HostSpec, path: str, kind: str):
    """
    Enable an auth method, e.g. AppRole.

    .. code:: python

        vault.auth_method(spec=spec, path="approle", kind="approle")
    """
    if _now_or_pending(lambda c: path in c.auth_methods(), spec):
        host.noop(f"auth/{path} is enabled")
        return

    def enable(client: VaultClient) -> None:
        if path not in client.auth_methods():
            with root_client(spec) as root:  # sys/auth/* asks for sudo
                root.request("POST", f"sys/auth/{path}", {"type": kind})

    yield _run(enable, spec)


def read_policy(uses: list[SecretUse]) -> str:
    """A policy that may read exactly the KV v2 secrets ``uses`` name, nothing else."""
    paths = sorted({parse_vault_reference(u.reference)[:2] for u in uses})
    return "".join(
        f'path "{mount}/data/{path}" {{\n  capabilities = ["read"]\n}}\n' for mount, path in paths
    )


@operation()
def approle(spec: HostSpec, service: str, policy: str, token_ttl: str = "1h"):
    """
    A least-privilege policy ``gpufleet-<service>`` and an AppRole of the same name bound to
    it alone, for a service that reads its secrets itself.

    .. code:: python

        vault.approle(spec=spec, service="litellm", policy=read_policy(uses))
    """
    name = f"gpufleet-{service}"

    def in_place(client: VaultClient) -> bool:
        role = client.approle(name)
        return (
            client.policy(name) == policy and role is not None and role["token_policies"] == [name]
        )

    if _now_or_pending(in_place, spec):
        host.noop(f"policy and AppRole {name} are in place")
        return

    def write(client: VaultClient) -> None:
        client.request("PUT", f"sys/policies/acl/{name}", {"policy": policy})
        client.request(
            "POST",
            f"auth/approle/role/{name}",
            {"token_policies": name, "token_ttl": token_ttl, "secret_id_ttl": "0"},
        )

    yield _run(write, spec)


def deploy_policy(
    service_policies: dict[str, str],
    kv_paths: list[tuple[str, str]],
    mounts: list[str],
    pki_mount: str | None,
    openbao: bool,
) -> str:
    """Exactly what a deploy after the first setup does, as a JSON policy: read the mounts
    and auth methods and enable ``mounts``; write each service's policy with its computed
    text alone and its AppRole bound to that policy alone (so the deploy can never grant
    more than the inventory says), and hand out that AppRole's credentials; read and write
    the fleet's KV paths; issue the gateway's certificate. Never: an auth method, another
    policy, its own policy, importing a CA, ``sys/raw``, ``sudo`` paths. ``openbao``: OpenBao
    asks for a token on ``sys/generate-root-token/*`` besides the shares."""
    crud = ["create", "read", "update"]
    paths: dict[str, dict[str, object]] = {
        "sys/mounts": {"capabilities": ["read"]},
        "sys/auth": {"capabilities": ["read"]},
        f"sys/policies/acl/{DEPLOY_ROLE}": {"capabilities": ["read"]},
        f"auth/approle/role/{DEPLOY_ROLE}": {"capabilities": ["read"]},
    }
    for mount in mounts:
        paths[f"sys/mounts/{mount}"] = {"capabilities": crud}
    if openbao:
        paths["sys/generate-root-token/*"] = {"capabilities": ["read", "update", "delete"]}
    for service, text in sorted(service_policies.items()):
        name = f"gpufleet-{service}"
        paths[f"sys/policies/acl/{name}"] = {
            "capabilities": crud,
            "allowed_parameters": {"policy": [text]},
        }
        paths[f"auth/approle/role/{name}"] = {
            "capabilities": crud,
            # A list is compared whole, and a policy cannot hold a list of lists: the role
            # is written with its one policy as a string.
            "allowed_parameters": {"token_policies": [name], "token_ttl": [], "secret_id_ttl": []},
        }
        paths[f"auth/approle/role/{name}/role-id"] = {"capabilities": ["read"]}
        paths[f"auth/approle/role/{name}/secret-id"] = {"capabilities": ["update"]}
    for mount, path in sorted(set(kv_paths)):
        paths[f"{mount}/data/{path}"] = {"capabilities": crud}
    if pki_mount:
        paths[f"{pki_mount}/cert/ca"] = {"capabilities": ["read"]}
        paths[f"{pki_mount}/roles/gateway"] = {"capabilities": crud}
        paths[f"{pki_mount}/issue/gateway"] = {"capabilities": ["update"]}
        paths[f"{pki_mount}/certs"] = {"capabilities": ["list"]}
    return json.dumps({"path": paths}, indent=2, sort_keys=True)


@operation()
def deploy_access(spec: HostSpec, policy: str, token_ttl: str = "1h"):
    """
    The ``gpufleet-deploy`` policy and an AppRole bound to it alone, its role_id and a
    secret_id saved 0600 beside the init record: what every deploy after the first setup
    logs in with. Written with a root token (the setup's, or one made from the shares and
    revoked after), as the deploy's own policy does not let it change itself.

    .. code:: python

        vault.deploy_access(spec=spec, policy=vault.deploy_policy(...))
    """
    credentials = deploy_credentials_file(init_file(spec))

    def in_place(client: VaultClient) -> bool:
        role = client.approle(DEPLOY_ROLE)
        return (
            credentials.exists()
            and client.policy(DEPLOY_ROLE) == policy
            and role is not None
            and role["token_policies"] == [DEPLOY_ROLE]
        )

    if _now_or_pending(in_place, spec):
        host.noop(f"policy and AppRole {DEPLOY_ROLE} are in place; credentials in {credentials}")
        return

    def write(client: VaultClient) -> None:
        role = f"auth/approle/role/{DEPLOY_ROLE}"
        with root_client(spec) as root:
            root.request("PUT", f"sys/policies/acl/{DEPLOY_ROLE}", {"policy": policy})
            body = {"token_policies": DEPLOY_ROLE, "token_ttl": token_ttl, "secret_id_ttl": "0"}
            root.request("POST", role, body)
            if not credentials.exists():
                role_id = root.request("GET", f"{role}/role-id")["data"]["role_id"]
                secret_id = root.request("POST", f"{role}/secret-id")["data"]["secret_id"]
                secret = json.dumps({"role_id": role_id, "secret_id": secret_id})
                write_private(credentials, secret)

    yield _run(write, spec)


@operation()
def root_revoked(spec: HostSpec):
    """
    Revoke the first setup's root token and drop it from the init record, once the deploy
    AppRole's credentials are saved; later runs log in with those (hardening guide: no root
    token kept beyond setup).

    .. code:: python

        vault.root_revoked(spec=spec)
    """
    path = init_file(spec)
    record = read_record(path)
    # No record yet: a first run, whose init writes the token after this is planned.
    settled = path.exists() or bool(os.environ.get("VAULT_TOKEN"))
    if settled and "root_token" not in record and "keys" not in record:
        host.noop(f"no root token kept; deploys log in as {DEPLOY_ROLE}")
        return

    def revoke(client: VaultClient) -> None:
        if not deploy_credentials_file(path).exists():
            raise VaultError(
                f"root token kept: no {DEPLOY_ROLE} credentials to work with after it "
                f"({deploy_credentials_file(path)})"
            )
        record = read_record(path)
        if "root_token" not in record and "keys" not in record:
            return  # a token of your own (VAULT_TOKEN) did the setup
        token = record.get("root_token")
        if token:
            try:
                client.send("POST", "auth/token/revoke-self", token=token)
            except VaultError as error:
                if "HTTP 403" not in str(error):  # 403: revoked already
                    raise
        forget_root_token(path, spec.vault.key_threshold)

    yield _run(revoke, spec)


def _missing(client: VaultClient, uses: list[SecretUse]) -> list[SecretUse]:
    missing = []
    for use in uses:
        mount, path, key = parse_vault_reference(use.reference)
        if key not in client.kv_get(mount, path):
            missing.append(use)
    return missing


@operation()
def generated_secrets(spec: HostSpec, uses: list[SecretUse]):
    """
    Generate every missing key the fleet issues itself: ``secrets.token_hex(32)`` (256 bits
    from the OS's CSPRNG), written straight into Vault. A missing key someone else issues
    (a cloud provider's) fails the operation with the command that stores it.

    .. code:: python

        vault.generated_secrets(spec=spec, uses=secret_uses(specs))
    """
    uses = [u for u in uses if u.reference.startswith("vault:")]
    try:
        pending = _missing(client_for(spec), uses)
    except VaultError:
        pending = uses
    if not pending:
        host.noop(f"all {len(uses)} secret references resolve")
        return

    def generate(client: VaultClient) -> None:
        for use in _missing(client, uses):
            mount, path, key = parse_vault_reference(use.reference)
            if not use.generate:
                raise VaultError(
                    f"{use.host}: {use.field} names {use.reference}, which is not there; "
                    f"store the provider's key with `bao kv patch -mount={mount} {path} {key}=-`"
                )
            data = client.kv_get(mount, path)
            data[key] = secrets.token_hex(32)
            client.kv_put(mount, path, data)

    yield _run(generate, spec)


@operation()
def pki_from_fleet_ca(spec: HostSpec, ca: FleetCA, mount: str, role: str, domains: list[str]):
    """
    Let the PKI engine at ``mount`` issue from the fleet CA (imported once), through a role
    that allows only ``domains`` and IP SANs.

    .. code:: python

        vault.pki_from_fleet_ca(spec=spec, ca=ca, mount="pki", role="gateway", domains=["pi5l"])
    """
    settings = {
        "allowed_domains": sorted(domains),
        "allow_bare_domains": True,
        "allow_subdomains": False,
        "allow_ip_sans": True,
        "server_flag": True,
        "client_flag": False,
        "key_type": "ec",
        "key_bits": 256,
        "max_ttl": 9000 * 3600,  # seconds: how Vault reports it back
    }

    def issuer_is_fleet_ca(client: VaultClient) -> bool:
        try:
            issuer = client.request("GET", f"{mount}/cert/ca")
        except VaultError:  # "no default issuer" until the CA is imported
            return False
        return issuer is not None and issuer["data"]["certificate"].strip() == ca.pem().strip()

    def in_place(client: VaultClient) -> bool:
        found = client.request("GET", f"{mount}/roles/{role}")
        if found is None or not issuer_is_fleet_ca(client):
            return False
        return all(found["data"].get(k) == v for k, v in settings.items())

    if _now_or_pending(in_place, spec):
        host.noop(f"{mount}/ issues from the fleet CA for {', '.join(sorted(domains))}")
        return

    def configure(client: VaultClient) -> None:
        if not issuer_is_fleet_ca(client):
            # The bundle holds the CA's key: the deploy policy never allows importing one.
            with root_client(spec) as root:
                root.request("POST", f"{mount}/config/ca", {"pem_bundle": ca.bundle()})
        client.request("POST", f"{mount}/roles/{role}", settings)

    yield _run(configure, spec)
