"""The fleet CA on the hosts: trusted by each platform host, and the names a host's
certificate carries. Shared by the Vault, gateway and monitoring roles."""

from __future__ import annotations

from pyinfra.operations import apt, files, server

from gpufleet.models import HostSpec
from gpufleet.pki import FleetCA

FLEET_CA_ON_HOST = "/usr/local/share/ca-certificates/gpufleet-fleet-ca.crt"
"""The fleet CA in the host's trust store: its services trust each other's certificates."""


def trust_fleet_ca(spec: HostSpec) -> FleetCA:
    """Put the fleet CA (made on the control machine on first use) in the host's trust store."""
    ca = FleetCA.ensure(spec.fleet_ca_dir)
    apt.packages(
        name="openssl, curl and the CA store", packages=["openssl", "curl", "ca-certificates"]
    )
    trusted = files.put(
        name="Trust the fleet CA", src=str(ca.cert), dest=FLEET_CA_ON_HOST, mode="644"
    )
    server.shell(
        name="Update the CA store", commands=["update-ca-certificates"], _if=trusted.did_change
    )
    return ca


def server_names(spec: HostSpec) -> tuple[list[str], list[str]]:
    """DNS names and IPs a certificate for this host should carry."""
    names = [spec.name, "localhost"] + ([spec.tailscale_name] if spec.tailscale_name else [])
    ips = ["127.0.0.1"] + [str(a) for a in (spec.lan_address, spec.tailscale_address) if a]
    return names, ips


def gateway_name(spec: HostSpec) -> str:
    """The name clients reach the gateway by."""
    return spec.gateway.server_name or spec.tailscale_name or spec.name
