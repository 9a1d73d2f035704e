"""Operations on a Vault/OpenBao server's state, through its API from the control machine.

Each one reads the server while the deploy is planned (reads only: a dry run changes
nothing) and does its work when it runs, so unseal keys, the root token and generated
secrets never appear in a plan, an operation's arguments or a log line.
"""

from __future__ import annotations

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
from gpufleet.vault import VaultClient, VaultError, client_for, init_file, write_init_file


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


@operation()
def initialized(spec: HostSpec):
    """
    Initialize the server once; the unseal keys and root token go to a new 0600 file on the
    control machine (``vault.init_file``), nowhere else.

    .. code:: python

        vault.initialized(spec=host_spec())
    """
    if _now_or_pending(lambda c: c.initialized(), spec):
        host.noop(f"{spec.name}: Vault is initialized; keys in {init_file(spec)}")
        return

    def initialize(client: VaultClient) -> None:
        if client.initialized():
            return
        path = init_file(spec)
        if path.exists():
            raise VaultError(f"{path} exists but the server is new; move the old file away")
        write_init_file(path, client.initialize(spec.vault.key_shares, spec.vault.key_threshold))

    yield _run(initialize, spec)


@operation()
def unsealed(spec: HostSpec, force: bool = False):
    """
    Unseal the server with the keys of the init file when it is sealed (after every start).

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
            import json

            client.unseal(json.loads(init_file(spec).read_text())["keys"])

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
            client.request("POST", f"sys/auth/{path}", {"type": kind})

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
            {"token_policies": [name], "token_ttl": token_ttl, "secret_id_ttl": "0"},
        )

    yield _run(write, spec)


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
            client.request("POST", f"{mount}/config/ca", {"pem_bundle": ca.bundle()})
        client.request("POST", f"{mount}/roles/{role}", settings)

    yield _run(configure, spec)
