"""NGINX in front of the fleet on the ``gateway`` group: TLS 1.3 with a certificate from the
fleet CA, HTTP redirected to HTTPS, a bearer key per client, a request budget per key, and
streaming-friendly proxying to the LiteLLM router (and, if asked, to each engine).

Runbook it replaces (seed 002's config, fixed): ``limit_req_zone`` belongs in the http block,
not a server; keys are checked by NGINX itself from a root-only map, not an SSO round trip;
every change is checked by ``nginx -t`` before a reload, and a rejected file is put back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt, files, systemd
from pyinfra.operations.util import any_changed

from gpufleet.fields import WORD_PATTERN
from gpufleet.models import HostSpec
from gpufleet.operations import config
from gpufleet.operations.config import WantedFile
from gpufleet.paths import render_template
from gpufleet.pki import FleetCA
from gpufleet.roles.fleet_ca import FLEET_CA_ON_HOST, gateway_name, server_names, trust_fleet_ca
from gpufleet.roles.steps import run_service
from gpufleet.routing import gateway_upstreams, router_hosts
from gpufleet.secrets import SecretError, read_secret
from gpufleet.vault import VaultClient, fleet_vault, vault_host

SECRETS_DIR = "/etc/nginx/gpufleet"
TLS_DIR = "/etc/nginx/tls"
SITE = "/etc/nginx/conf.d/gpufleet-gateway.conf"
INFERENCE_PATHS = (
    "chat/completions",
    "completions",
    "embeddings",
    "models",
    r"models/[A-Za-z0-9_.:-]+",
)
"""The router's paths clients reach below ``/v1/`` (OpenAI's inference API); the rest of
LiteLLM's API is for its admin and is not routed."""


def certificate_issuer(spec: HostSpec, specs: dict[str, HostSpec], ca: FleetCA):
    """Vault's PKI engine where the fleet has Vault, else the fleet CA on this machine."""
    names, ips = server_names(spec)
    names = sorted({*names, gateway_name(spec)})
    days = spec.gateway.cert_days
    server = vault_host(specs)
    if server is None:
        return names, ips, lambda: ca.issue(gateway_name(spec), names, ips, days)

    def issue_from_vault() -> tuple[str, str]:
        client = fleet_vault(specs)
        assert client is not None
        issued = client.request(
            "POST",
            f"{server.vault.pki_mount}/issue/gateway",
            {
                "common_name": gateway_name(spec),
                "alt_names": ",".join(names),
                "ip_sans": ",".join(ips),
                "ttl": f"{days * 24}h",
            },
        )["data"]
        return issued["certificate"] + "\n" + issued["issuing_ca"] + "\n", issued["private_key"]

    return names, ips, issue_from_vault


MAP_VALUE = re.compile(WORD_PATTERN)
KEY_VALUE = re.compile(r"^[A-Za-z0-9._~+/=-]{16,256}$")
"""What a bearer key may hold: a token's characters (RFC 6750), at least 16 of them. Nothing
that could end a quoted NGINX string or start a directive."""


def key_map(clients: Mapping[str, str], read: Callable[[str], str]) -> str:
    """NGINX's map from ``Authorization`` header to client name, one exact line per client.
    A name or key that could end the quoted string (and add a regex entry that matches any
    header) is refused here too, whatever let it through; the key is never shown."""
    lines = []
    for client, reference in sorted(clients.items()):
        if not MAP_VALUE.match(client):
            raise ValueError(f"gateway.clients: {client!r} is not a plain client name")
        key = read(reference)
        if not KEY_VALUE.match(key):
            raise SecretError(
                f"{reference}: the key of gateway client {client} holds characters a bearer "
                "token does not (or is shorter than 16); store a hex or base64 key"
            )
        lines.append(f'"Bearer {key}" "{client}";\n')
    return "".join(lines)


def site_config(spec: HostSpec, specs: dict[str, HostSpec]) -> str:
    """The gateway's NGINX site on ``spec``: keys and certificates are included by path."""
    gateway = spec.gateway
    return render_template(
        "gateway/gateway.conf.j2",
        secrets_dir=SECRETS_DIR,
        upstreams=gateway_upstreams(spec, specs),
        rate_per_minute=gateway.rate_per_minute,
        burst=gateway.burst,
        http_port=gateway.http_port,
        https_port=gateway.https_port,
        server_name=gateway_name(spec),
        cert=f"{TLS_DIR}/gateway.crt",
        key=f"{TLS_DIR}/gateway.key",
        read_timeout_s=gateway.read_timeout_s,
        extra_directives=gateway.extra_directives,
        stub_status_port=gateway.stub_status_port,
        inference_paths="|".join(INFERENCE_PATHS),
    )


def _authorization(reference: str, vault: VaultClient | None) -> str:
    return f'proxy_set_header Authorization "Bearer {read_secret(reference, vault)}";\n'


@deploy("Gateway")
def nginx_gateway(spec: HostSpec, specs: dict[str, HostSpec]) -> None:
    """
    Converge the NGINX gateway on a host of the ``gateway`` group.

    .. code:: python

        nginx_gateway(host_spec(), fleet_specs())
    """
    gateway = spec.gateway
    ca = trust_fleet_ca(spec)
    apt.packages(name="NGINX", packages=["nginx"], no_recommends=True)
    # Debian's default site also claims default_server on port 80.
    default_site = files.link(
        name="Disable Debian's default site", path="/etc/nginx/sites-enabled/default", present=False
    )
    files.directory(name="Keys folder", path=SECRETS_DIR, group="www-data", mode="750")
    files.directory(name="TLS folder", path=TLS_DIR, mode="755")

    # 1. Certificate: your own, or from the fleet CA (Vault's PKI engine where there is Vault).
    vault = fleet_vault(specs)
    certificate: list[OperationMeta]
    if gateway.certificate_file and gateway.private_key:
        provided, key_reference = Path(gateway.certificate_file).expanduser(), gateway.private_key
        certificate = [
            config.file_set(
                name="Gateway certificate and key (provided)",
                files=[
                    WantedFile(f"{TLS_DIR}/gateway.crt", provided.read_text),
                    WantedFile(
                        f"{TLS_DIR}/gateway.key",
                        lambda: read_secret(key_reference, vault) + "\n",
                        mode="640",
                    ),
                ],
                validate="nginx -t -q",
            )
        ]
    else:
        names, ips, issue = certificate_issuer(spec, specs, ca)
        certificate = [
            config.tls_certificate(
                name="Gateway certificate",
                cert=f"{TLS_DIR}/gateway.crt",
                key=f"{TLS_DIR}/gateway.key",
                names=names,
                ips=ips,
                ca_cert=FLEET_CA_ON_HOST,
                issue=issue,
                min_days_left=max(gateway.cert_days // 3, 1),
            )
        ]

    # 2. Client keys and the router's key: read from the secret store, never shown.
    routers = router_hosts(specs)
    keys = config.config_file(
        name=f"Client keys ({len(gateway.clients)})",
        dest=f"{SECRETS_DIR}/api-keys.map",
        mode="640",
        group="www-data",
        render=lambda: key_map(gateway.clients, partial(read_secret, vault=vault)),
        validate="nginx -t -q",
    )
    upstream_auth = config.config_file(
        name="Router key for upstream requests",
        dest=f"{SECRETS_DIR}/upstream-auth.conf",
        mode="640",
        group="www-data",
        render=lambda: "".join(
            f'proxy_set_header Authorization "Bearer {read_secret(r.litellm.master_key, vault)}";\n'
            for r in routers[:1]
        ),
        validate="nginx -t -q",
    )

    # Engines the gateway reaches directly that ask for a key get theirs from the gateway.
    upstreams = gateway_upstreams(spec, specs)
    engine_keys = [
        config.config_file(
            name=f"Key for {upstream.route}",
            dest=f"{SECRETS_DIR}/upstream-{upstream.name}.conf",
            mode="640",
            group="www-data",
            render=partial(_authorization, upstream.key, vault),
        )
        for upstream in upstreams
        if upstream.key
    ]

    # 3. The site, checked by nginx -t before it counts; reload only on change.
    site = config.config_file(
        name="Gateway site (checked by nginx -t)",
        dest=SITE,
        render=lambda: site_config(spec, specs),
        validate="nginx -t -q",
    )
    systemd.service(name="Run nginx", service="nginx", running=True, enabled=True)
    systemd.service(
        name="Reload nginx",
        service="nginx",
        reloaded=True,
        _if=any_changed(default_site, *certificate, keys, upstream_auth, *engine_keys, site),
    )

    # 4. NGINX's counters for Prometheus, read from stub_status on loopback.
    # The flags go first: the package starts the exporter as it installs, and with Debian's
    # default scrape address (127.0.0.1:8080, where a llama-server answers 401) it exits and
    # restarts until systemd's start limit refuses the restart that would load these flags.
    # apt keeps a file that is there already (--force-confold).
    exporter = "prometheus-nginx-exporter"
    exporter_flags = config.config_file(
        name="NGINX exporter flags",
        dest=f"/etc/default/{exporter}",
        render=lambda: (
            "# Managed by gpufleet (deploys/gateway.py).\n"
            f'ARGS="-nginx.scrape-uri=http://127.0.0.1:{gateway.stub_status_port}/stub_status '
            f'-web.listen-address={gateway.exporter_address}:{gateway.exporter_port}"\n'
        ),
    )
    apt.packages(name="NGINX exporter", packages=[exporter], no_recommends=True)
    run_service(exporter, exporter_flags)
