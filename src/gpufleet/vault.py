"""The few Vault (and OpenBao: same API) calls the fleet needs, from the control machine.

Initialization, unsealing and every secret read go over HTTPS from the control machine, so
unseal keys and tokens never pass through a host's process list, shell history or pyinfra's
output. Example::

    vault = fleet_vault(specs)            # the vault group's server, the deploy's own token
    vault.kv_put("kv", "gpufleet/litellm", {"master_key": secrets.token_hex(32)})

What the control machine keeps, beside ``vault.init_file`` (``<folder>/<name>.json``), each
file 0600 in a 0700 folder, written to a temporary name, synced and linked into place:

``<name>.share-1`` ... ``<name>.share-N``
    one unseal key share each (any ``key_threshold`` of them unseal the server);
``<name>.json``
    how many shares and the threshold, and the root token only until the first setup is done
    (then it is revoked and dropped from the file);
``<name>.deploy.json``
    the ``gpufleet-deploy`` AppRole's role_id and secret_id: what every later deploy logs in
    with, its policy allowing exactly the fleet's paths.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpufleet.models import HostSpec

KV_UPGRADING = "Upgrading from non-versioned to versioned data"
"""What a KV version 2 mount answers (HTTP 400) while it upgrades its storage."""
KV_UPGRADE_WAIT_S = 30


class VaultError(RuntimeError):
    pass


@dataclass
class VaultClient:
    address: str
    token: str | None = None
    ca_file: str | None = None
    timeout: float = 10
    token_file: Path | None = None
    """An init file: until a token is set, the root token it holds during the first setup,
    else a login with the deploy AppRole saved beside it (a first run writes both after this
    client was made)."""

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
        raw: bytes | None = None,
    ) -> Any:
        """One request with the client's token (logged in again once if it expired). ``raw``:
        a body that is not JSON (a raft snapshot); the answer is then the bytes."""
        if self.token is None and self.token_file is not None:
            self.token = stored_token(self, self.token_file)
        try:
            return self.send(method, path, body, timeout, self.token, raw)
        except VaultError as error:
            # A deploy token that expired during a long run: log in again, once.
            logged_in = self.token_file is not None and self.token in _LOGINS.values()
            if "HTTP 403" not in str(error) or not logged_in or self.token_file is None:
                raise
            _LOGINS.clear()
            self.token = stored_token(self, self.token_file)
            return self.send(method, path, body, timeout, self.token, raw)

    def send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
        token: str | None = None,
        raw: bytes | None = None,
    ) -> Any:
        """One request with exactly ``token`` (None: none at all)."""
        import requests  # imported here: pyinfra's CLI patches sockets before first use

        headers = {"X-Vault-Token": token} if token else {}
        deadline = time.monotonic() + KV_UPGRADE_WAIT_S
        while True:
            try:
                response = _session(self.address, self.ca_file).request(
                    method,
                    f"{self.address}/v1/{path}",
                    json=body,
                    data=raw,
                    headers=headers,
                    timeout=timeout or self.timeout,
                    verify=self.ca_file or True,
                )
            except requests.RequestException as error:
                raise VaultError(
                    f"{self.address} cannot be reached ({type(error).__name__})"
                ) from None
            # A KV version 2 mount just enabled (or restored) upgrades its storage first,
            # answering 400 meanwhile, for "a brief period": asked again, not failed.
            upgrading = response.status_code == 400 and KV_UPGRADING in response.text
            if not upgrading or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if response.status_code == 404 and method == "GET":
            return None
        if response.status_code >= 400:
            # Error bodies name paths and reasons, never secret values.
            errors = response.json().get("errors", []) if response.content else []
            raise VaultError(f"{method} {path}: HTTP {response.status_code} {'; '.join(errors)}")
        if raw is not None or path.startswith("sys/storage/raft/snapshot"):
            return response.content
        return response.json() if response.content else None

    # Unauthenticated: a sealed server cannot log anyone in.
    def reachable(self) -> bool:
        try:
            self.send("GET", "sys/seal-status")
        except VaultError:
            return False
        return True

    def initialized(self) -> bool:
        return bool(self.send("GET", "sys/init")["initialized"])

    def sealed(self) -> bool:
        return bool(self.send("GET", "sys/seal-status")["sealed"])

    def initialize(self, shares: int, threshold: int) -> dict[str, Any]:
        body = {"secret_shares": shares, "secret_threshold": threshold}
        # Generating the keys and the first raft write can take a while on a busy machine;
        # an answer lost to a client time-out is a server whose keys nobody has.
        result: dict[str, Any] = self.send("PUT", "sys/init", body, timeout=INIT_TIMEOUT)
        return result

    def unseal(self, keys: list[str]) -> None:
        for key in keys:
            if not self.send("PUT", "sys/unseal", {"key": key}, timeout=60)["sealed"]:
                return
        raise VaultError("still sealed after every share on this machine")

    def mounts(self) -> dict[str, Any]:
        return {k.rstrip("/"): v for k, v in self.request("GET", "sys/mounts")["data"].items()}

    def auth_methods(self) -> dict[str, Any]:
        return {k.rstrip("/"): v for k, v in self.request("GET", "sys/auth")["data"].items()}

    def policy(self, name: str) -> str | None:
        found = self.request("GET", f"sys/policies/acl/{name}")
        return None if found is None else str(found["data"]["policy"])

    def approle(self, name: str) -> dict[str, Any] | None:
        found = self.request("GET", f"auth/approle/role/{name}")
        return None if found is None else dict(found["data"])

    def kv_get(self, mount: str, path: str) -> dict[str, Any]:
        found = self.request("GET", f"{mount}/data/{path}")
        return {} if found is None else dict(found["data"]["data"] or {})

    def kv_put(self, mount: str, path: str, data: dict[str, Any]) -> None:
        self.request("POST", f"{mount}/data/{path}", {"data": data})


INIT_TIMEOUT = 300
"""Seconds ``sys/init`` may take before the client gives up on its answer."""
DEPLOY_ROLE = "gpufleet-deploy"
"""The policy and AppRole every deploy after the first setup works with."""


def init_file(spec: HostSpec) -> Path:
    """Where the control machine keeps this Vault server's init record (root token only
    while the first setup runs)."""
    return Path(os.path.expanduser(spec.vault.init_file.format(host=spec.name)))


def share_file(init: Path, number: int) -> Path:
    """Unseal key share ``number`` (from 1) of the server whose init record is ``init``."""
    return init.with_name(f"{init.stem}.share-{number}")


def deploy_credentials_file(init: Path) -> Path:
    return init.with_name(f"{init.stem}.deploy.json")


def read_record(init: Path) -> dict[str, Any]:
    return dict(json.loads(init.read_text())) if init.exists() else {}


def read_shares(init: Path) -> list[str]:
    """The unseal key shares kept on this machine (an init file of an earlier release holds
    them itself, under ``keys``)."""
    record = read_record(init)
    if "keys" in record:
        return list(record["keys"])
    found = (share_file(init, n) for n in range(1, int(record.get("shares", 0)) + 1))
    return [path.read_text().strip() for path in found if path.exists()]


def answer_saved(init: Path) -> bool:
    """Whether this machine holds the answer of the server's initialization."""
    return init.exists() or share_file(init, 1).exists()


_LOGINS: dict[tuple[str, Path], str] = {}
"""Deploy tokens by server and credentials file: one login per deploy run, not per request."""


def stored_token(client: VaultClient, init: Path) -> str | None:
    """The root token while the first setup runs, else a token of the deploy AppRole, else
    None (nothing saved yet)."""
    record = read_record(init)
    if record.get("root_token"):
        return str(record["root_token"])
    credentials = deploy_credentials_file(init)
    if not credentials.exists():
        return None
    key = (client.address, credentials)
    if key not in _LOGINS:
        login = client.send("POST", "auth/approle/login", json.loads(credentials.read_text()))
        _LOGINS[key] = str(login["auth"]["client_token"])
    return _LOGINS[key]


def generate_root(client: VaultClient, shares: list[str], openbao: bool) -> str:
    """A new root token from a threshold of unseal key shares (``operator generate-root``).

    OpenBao 2.6 turned the unauthenticated ``sys/generate-root`` off and asks for a token
    allowed ``sys/generate-root-token/*`` (the deploy's) besides the shares; HashiCorp
    Vault keeps the unauthenticated endpoints."""
    prefix = "sys/generate-root-token" if openbao else "sys/generate-root"
    client.request("DELETE", f"{prefix}/attempt")  # a stale attempt would refuse a new one
    started = client.request("PUT", f"{prefix}/attempt", {})
    started = started.get("data", started)
    for share in shares:
        body = {"key": share, "nonce": started["nonce"]}
        progress = client.request("PUT", f"{prefix}/update", body)
        progress = progress.get("data", progress)
        if progress["complete"]:
            # The token's bytes XORed with the one-time password, base64 without padding.
            encoded = progress["encoded_token"]
            raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
            return bytes(a ^ b for a, b in zip(raw, started["otp"].encode(), strict=True)).decode()
    client.request("DELETE", f"{prefix}/attempt")
    raise VaultError(
        f"a new root token needs {started['required']} unseal key shares; this machine has "
        f"{len(shares)}"
    )


@contextmanager
def root_client(spec: HostSpec) -> Iterator[VaultClient]:
    """A client with a root token, for what the deploy policy does not allow: the first
    setup's (kept until the setup is done), else one generated from the shares and revoked
    as soon as the work is done."""
    client = client_for(spec)
    path = init_file(spec)
    root = read_record(path).get("root_token")
    if os.environ.get("VAULT_TOKEN") or root:
        yield VaultClient(client.address, client.token or root, client.ca_file)
        return
    openbao = spec.vault.flavor == "openbao"
    if openbao and stored_token(client, path) is None:
        raise VaultError(
            f"this needs a root token, and there are neither {DEPLOY_ROLE} credentials "
            f"({deploy_credentials_file(path)}) nor a root token ({path}) to make one with; "
            "make one with `bao operator generate-root` and the unseal key shares, then run "
            "again with VAULT_TOKEN set to it (and revoke it after)"
        )
    client.token = stored_token(client, path)
    generated = generate_root(client, read_shares(path), openbao)
    root_session = VaultClient(client.address, generated, client.ca_file)
    try:
        yield root_session
    finally:
        root_session.request("POST", "auth/token/revoke-self")


def vault_address(spec: HostSpec) -> str:
    from gpufleet.routing import service_address

    return f"https://{service_address(spec)}:{spec.vault.port}"


def ca_file(spec: HostSpec) -> str:
    return str(Path(os.path.expanduser(spec.fleet_ca_dir)) / "ca.crt")


def client_for(spec: HostSpec) -> VaultClient:
    """A client for the Vault server on ``spec``'s host, with the token saved beside its
    init file once there is one (``VAULT_TOKEN`` overrides)."""
    token = os.environ.get("VAULT_TOKEN")
    return VaultClient(vault_address(spec), token, ca_file(spec), token_file=init_file(spec))


def vault_host(specs: dict[str, HostSpec]) -> HostSpec | None:
    return next((s for s in specs.values() if "vault" in s.groups), None)


_SESSIONS: dict[tuple[str, str | None], Any] = {}


def _session(address: str, ca_file: str | None) -> Any:
    """One HTTP session per Vault and CA for the process: a run's requests reuse its
    connections instead of a TCP and TLS handshake (and the CA file read again) each."""
    import requests

    key = (address, ca_file)
    if key not in _SESSIONS:
        _SESSIONS[key] = requests.Session()
    return _SESSIONS[key]


def fleet_vault(specs: dict[str, HostSpec]) -> VaultClient | None:
    """The fleet's Vault: the first host of the ``vault`` group, else VAULT_ADDR, else None."""
    server = vault_host(specs)
    if server is not None:
        return client_for(server)
    if os.environ.get("VAULT_ADDR"):
        return VaultClient(
            os.environ["VAULT_ADDR"], os.environ.get("VAULT_TOKEN"), os.environ.get("VAULT_CACERT")
        )
    return None


def write_private(path: Path, text: str | bytes, replace: bool = False) -> None:
    """``text`` to ``path``, 0600 in a 0700 folder, never through a wider mode; written to a
    temporary name, synced, then linked into place, so a crash leaves the whole old file or
    the whole new one. Without ``replace`` an existing file is never overwritten."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(text.encode() if isinstance(text, str) else text)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # refuses to overwrite, unlike rename
    finally:
        temporary.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def save_init_answer(path: Path, result: dict[str, Any], threshold: int) -> None:
    """The answer of ``sys/init``: each share to a file of its own, then the record with the
    root token. The shares first: with them a lost root token can be made again."""
    shares = result["keys_base64"]
    for number, share in enumerate(shares, start=1):
        write_private(share_file(path, number), share + "\n")
    record = {"shares": len(shares), "threshold": threshold, "root_token": result["root_token"]}
    write_private(path, json.dumps(record))


def forget_root_token(path: Path, threshold: int) -> None:
    """The init record without its root token (revoked); the shares of an init file of an
    earlier release moved to files of their own."""
    record = read_record(path)
    record.pop("root_token", None)
    if "keys" in record:
        keys = record.pop("keys")
        for number, share in enumerate(keys, start=1):
            if not share_file(path, number).exists():
                write_private(share_file(path, number), share + "\n")
        record.update(shares=len(keys), threshold=threshold)
    write_private(path, json.dumps(record), replace=True)


def take_snapshot(spec: HostSpec) -> bytes:
    """A raft snapshot of the Vault on ``spec`` (every secret, policy, role and the keyring
    the fleet's shares unseal), taken with a root token made from the shares and revoked."""
    if spec.vault.storage != "raft":
        raise VaultError(f"{spec.name}: snapshots need raft storage (vault.storage: raft)")
    with root_client(spec) as root:
        snapshot: bytes = root.request("GET", "sys/storage/raft/snapshot", timeout=300)
        return snapshot


def restore_snapshot(spec: HostSpec, snapshot: bytes) -> None:
    """Put ``snapshot`` into the blank (uninitialized) Vault on ``spec``: initialized for the
    restore alone (one share, kept in memory, gone with the storage it unseals), unsealed,
    leader, then the snapshot forced in. Restart the service after: it comes up sealed, with
    the snapshot's keyring, which the fleet's shares unseal (``deploys/vault.py`` does)."""
    client = VaultClient(client_for(spec).address, None, ca_file(spec))
    if client.initialized():
        raise VaultError(
            f"{spec.name}: Vault is initialized; a snapshot is restored into a blank server "
            "(a rebuilt host, or its data folder emptied with the service stopped)"
        )
    interim = client.initialize(1, 1)
    client.unseal(interim["keys_base64"])
    client.token = interim["root_token"]
    deadline = time.monotonic() + 60
    while True:  # raft elects the node leader a moment after it unseals
        try:
            if client.send("GET", "sys/leader").get("is_self"):
                break
        except VaultError:
            pass
        if time.monotonic() > deadline:
            raise VaultError(f"{spec.name}: no raft leader within 60 s after unsealing")
        time.sleep(1)
    client.request("POST", "sys/storage/raft/snapshot-force", timeout=300, raw=snapshot)
