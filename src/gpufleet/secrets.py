"""Secret references resolved on the control machine, at deploy time.

``file:/path`` reads a file that only its owner may read (0600 or stricter);
``vault:<mount>/<path>#<key>`` reads a KV v2 secret from Vault (VAULT_ADDR, VAULT_TOKEN).
Values are written to the target only into files of mode 0600/0640, never logged.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpufleet.models import HostSpec
    from gpufleet.vault import VaultClient


class SecretError(RuntimeError):
    pass


@dataclass(frozen=True)
class SecretUse:
    """One place the fleet needs a secret: which service reads it, from which host's data."""

    host: str
    field: str
    reference: str
    service: str
    """Who reads it on its host (vllm, litellm, gateway): the AppRole that may read it."""
    generate: bool
    """True for keys the fleet issues itself (API keys); False for keys someone else issues
    (a cloud provider's), which must be put in Vault by hand."""


def secret_uses(specs: dict[str, HostSpec]) -> list[SecretUse]:
    """Every secret reference of the fleet, with the service that reads it."""
    from gpufleet.engines import ENGINES
    from gpufleet.routing import router_config, router_hosts

    # An engine's secret is read by that engine's service; one someone else issues (a
    # Hugging Face token, an NGC key) is never generated. Other names: the prefix's service.
    readers = {s.secret: (e.service, s.issued_by is None) for e in ENGINES for s in e.secret_env}
    uses = []
    for spec in specs.values():
        for name, reference in spec.secrets.items():
            service, generate = readers.get(name, (name.split("_")[0], True))
            uses.append(SecretUse(spec.name, f"secrets.{name}", reference, service, generate))
        if "router" in spec.groups:
            config = router_config(spec, specs)
            clouds = {c.api_key for c in spec.litellm.cloud_models}
            for variable, reference in config.environment.items():
                generate = reference not in clouds
                uses.append(SecretUse(spec.name, variable, reference, "litellm", generate))
            if config.database_url is not None:
                reference = config.database_url.password
                uses.append(SecretUse(spec.name, "DATABASE_URL", reference, "litellm", True))
        if "monitoring" in spec.groups and spec.grafana.enabled:
            reference = spec.grafana.admin_password
            uses.append(SecretUse(spec.name, "grafana.admin_password", reference, "grafana", True))
        if "monitoring" in spec.groups:
            for i, webhook in enumerate(spec.alertmanager.webhooks):
                if webhook.url_is_secret:  # a URL that carries a token
                    field = f"alertmanager.webhooks[{i}].url"
                    uses.append(SecretUse(spec.name, field, webhook.url, "alertmanager", False))
        if spec.tailscale.enabled and spec.os != "macos":
            reference = spec.tailscale.auth_key
            uses.append(SecretUse(spec.name, "tailscale.auth_key", reference, "tailscale", False))
        if "router" in spec.groups and spec.litellm.database.enabled:
            reference = spec.litellm.database.password
            uses.append(
                SecretUse(spec.name, "litellm.database.password", reference, "postgres", True)
            )
        if "gateway" in spec.groups:
            for client, reference in spec.gateway.clients.items():
                field = f"gateway.clients.{client}"
                uses.append(SecretUse(spec.name, field, reference, "gateway", True))
            if spec.gateway.private_key:
                reference = spec.gateway.private_key
                uses.append(
                    SecretUse(spec.name, "gateway.private_key", reference, "gateway", False)
                )
            for router in router_hosts(specs):
                ref = router.litellm.master_key
                uses.append(SecretUse(spec.name, "litellm.master_key", ref, "gateway", True))
    return uses


def parse_vault_reference(reference: str) -> tuple[str, str, str]:
    """``vault:kv/gpufleet/vllm#api_key`` -> ``("kv", "gpufleet/vllm", "api_key")``."""
    location, _, key = reference.removeprefix("vault:").partition("#")
    mount, _, path = location.partition("/")
    return mount, path, key


def read_secret(reference: str, vault: VaultClient | None = None) -> str:
    """The value a reference points at; raises :class:`SecretError` naming the reference.
    ``vault`` is the fleet's Vault; without it, VAULT_ADDR and VAULT_TOKEN name one."""
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
        from gpufleet.vault import VaultClient, VaultError

        mount, secret_path, key = parse_vault_reference(reference)
        if vault is None:
            address, token = os.environ.get("VAULT_ADDR"), os.environ.get("VAULT_TOKEN")
            if not address or not token:
                raise SecretError(f"{reference}: set VAULT_ADDR and VAULT_TOKEN to read it")
            vault = VaultClient(address, token, os.environ.get("VAULT_CACERT"))
        try:
            data = vault.kv_get(mount, secret_path)
        except VaultError as error:
            raise SecretError(f"{reference}: {error}") from None
        if key not in data:
            raise SecretError(
                f"{reference}: no key {key!r} at {mount}/{secret_path}; deploys/vault.py "
                "generates the fleet's own keys"
            )
        return str(data[key])
    raise SecretError(f"{reference}: not a secret reference (vault:... or file:...)")
