"""Secret references resolved on the control machine, at deploy time.

``file:/path`` reads a file that only its owner may read (0600 or stricter);
``vault:<mount>/<path>#<key>`` reads a KV v2 secret from Vault (VAULT_ADDR, VAULT_TOKEN).
Values are written to the target only into files of mode 0600/0640, never logged.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class SecretError(RuntimeError):
    pass


def read_secret(reference: str) -> str:
    """The value a reference points at; raises :class:`SecretError` naming the reference."""
    kind, _, where = reference.partition(":")
    if kind == "file":
        path = Path(where)
        try:
            mode = path.stat().st_mode
        except OSError as error:
            raise SecretError(f"{reference}: {error.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(f"{reference}: readable by others; chmod 600 {path}")
        return path.read_text().strip()
    if kind == "vault":
        import requests  # imported here: pyinfra's CLI patches sockets before first use

        location, _, key = where.partition("#")
        mount, _, secret_path = location.partition("/")
        address, token = os.environ.get("VAULT_ADDR"), os.environ.get("VAULT_TOKEN")
        if not address or not token:
            raise SecretError(f"{reference}: set VAULT_ADDR and VAULT_TOKEN to read it")
        response = requests.get(
            f"{address}/v1/{mount}/data/{secret_path}",
            headers={"X-Vault-Token": token},
            timeout=10,
        )
        if response.status_code != 200:
            raise SecretError(f"{reference}: Vault answered HTTP {response.status_code}")
        data = response.json()["data"]["data"]
        if key not in data:
            raise SecretError(f"{reference}: no key {key!r} at {location}")
        return str(data[key])
    raise SecretError(f"{reference}: not a secret reference (vault:... or file:...)")
