"""The few Vault (and OpenBao: same API) calls the fleet needs, from the control machine.

Initialization, unsealing and every secret read go over HTTPS from the control machine, so
unseal keys and tokens never pass through a host's process list, shell history or pyinfra's
output. Example::

    vault = fleet_vault(specs)            # the vault group's server, token from its init file
    vault.kv_put("kv", "gpufleet/litellm", {"master_key": secrets.token_hex(32)})
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpufleet.models import HostSpec


class VaultError(RuntimeError):
    pass


@dataclass
class VaultClient:
    address: str
    token: str | None = None
    ca_file: str | None = None
    timeout: float = 10
    token_file: Path | None = None
    """An init file to take the root token from once it exists (a first run writes it after
    this client was made)."""

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        import requests  # imported here: pyinfra's CLI patches sockets before first use

        if self.token is None and self.token_file is not None and self.token_file.exists():
            self.token = json.loads(self.token_file.read_text())["root_token"]
        headers = {"X-Vault-Token": self.token} if self.token else {}
        try:
            response = requests.request(
                method,
                f"{self.address}/v1/{path}",
                json=body,
                headers=headers,
                timeout=timeout or self.timeout,
                verify=self.ca_file or True,
            )
        except requests.RequestException as error:
            raise VaultError(f"{self.address} cannot be reached ({type(error).__name__})") from None
        if response.status_code == 404 and method == "GET":
            return None
        if response.status_code >= 400:
            # Error bodies name paths and reasons, never secret values.
            errors = response.json().get("errors", []) if response.content else []
            raise VaultError(f"{method} {path}: HTTP {response.status_code} {'; '.join(errors)}")
        return response.json() if response.content else None

    def reachable(self) -> bool:
        try:
            self.request("GET", "sys/seal-status")
        except VaultError:
            return False
        return True

    def initialized(self) -> bool:
        return bool(self.request("GET", "sys/init")["initialized"])

    def sealed(self) -> bool:
        return bool(self.request("GET", "sys/seal-status")["sealed"])

    def initialize(self, shares: int, threshold: int) -> dict[str, Any]:
        body = {"secret_shares": shares, "secret_threshold": threshold}
        # Generating the keys and the first raft write can take a while on a busy machine.
        result: dict[str, Any] = self.request("PUT", "sys/init", body, timeout=120)
        return result

    def unseal(self, keys: list[str]) -> None:
        for key in keys:
            if not self.request("PUT", "sys/unseal", {"key": key}, timeout=60)["sealed"]:
                return
        raise VaultError("still sealed after every key in the init file")

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


def init_file(spec: HostSpec) -> Path:
    """Where the control machine keeps this Vault server's unseal keys and root token."""
    return Path(os.path.expanduser(spec.vault.init_file.format(host=spec.name)))


def vault_address(spec: HostSpec) -> str:
    from gpufleet.routing import service_address

    return f"https://{service_address(spec)}:{spec.vault.port}"


def ca_file(spec: HostSpec) -> str:
    return str(Path(os.path.expanduser(spec.fleet_ca_dir)) / "ca.crt")


def client_for(spec: HostSpec) -> VaultClient:
    """A client for the Vault server on ``spec``'s host, with the root token from its init
    file once there is one (``VAULT_TOKEN`` overrides)."""
    token = os.environ.get("VAULT_TOKEN")
    return VaultClient(vault_address(spec), token, ca_file(spec), token_file=init_file(spec))


def vault_host(specs: dict[str, HostSpec]) -> HostSpec | None:
    return next((s for s in specs.values() if "vault" in s.groups), None)


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


def write_init_file(path: Path, result: dict[str, Any]) -> None:
    """Keys and root token to a new 0600 file (its folder 0700), never through a wider mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump({"keys": result["keys_base64"], "root_token": result["root_token"]}, out)
