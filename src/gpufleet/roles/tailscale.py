"""Tailscale: every host on the tailnet under the name the inventory gives it.

Runbook it replaces: ``curl -fsSL https://tailscale.com/install.sh | sh``, then
``tailscale up --authkey tskey-...`` typed (and kept in the shell history) on each machine.
Here the package comes from Tailscale's signed apt repository (or a mirror of it), the auth key
from Vault into a 0600 file on tmpfs that ``tailscale up`` reads and that is removed right
after, and only a node that is not logged in is ever asked to log in.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, server

from gpufleet.facts.system import release_codename
from gpufleet.facts.tailscale import TailscaleServe, TailscaleStatus
from gpufleet.models import HostSpec
from gpufleet.operations import config
from gpufleet.roles.steps import run_service, signed_apt_repository
from gpufleet.secrets import read_secret
from gpufleet.vault import fleet_vault

KEYRING = "/usr/share/keyrings/tailscale-archive-keyring.gpg"
AUTH_KEY_FILE = "/run/gpufleet-tailscale.authkey"
"""On tmpfs, 0600, present only while ``tailscale up`` runs."""


def tailnet_hostname(spec: HostSpec) -> str:
    """The node's name on the tailnet: ``tailscale.hostname``, else the first label of
    ``tailscale_name``, else the inventory name."""
    if spec.tailscale.hostname:
        return spec.tailscale.hostname
    if spec.tailscale_name:
        return spec.tailscale_name.split(".")[0]
    return spec.name


@deploy("Tailscale")
def tailscale(spec: HostSpec, specs: dict[str, HostSpec]) -> None:
    """
    Install Tailscale from its apt repository, join the tailnet once, keep the hostname, and
    optionally serve the router over HTTPS on the tailnet.

    .. code:: python

        tailscale(host_spec(), fleet_specs())
    """
    settings = spec.tailscale
    if spec.os == "macos":
        host.noop(
            "on macOS Tailscale is the app (App Store or tailscale.com): install it and log in "
            "once; gpufleet reaches the Mac by its tailnet name"
        )
        return

    # 1. Tailscale's repository, signed by its own key only.
    codename = release_codename()
    signed_apt_repository(
        "Tailscale",
        key_url=f"{settings.repo_url}/{codename}.noarmor.gpg",
        keyring=KEYRING,
        uri=settings.repo_url,
        suite=codename,
        components=["main"],
        fingerprint=settings.key_fingerprint,
    )
    apt.packages(name="Tailscale", packages=["tailscale"], no_recommends=True)
    run_service("tailscaled")

    # 2. Log in only when not logged in: a logged-in node is never re-authenticated.
    wanted = tailnet_hostname(spec)
    state = host.get_fact(TailscaleStatus)
    if state is None or state["backend_state"] != "Running":
        vault = fleet_vault(specs)
        config.config_file(
            name="Auth key for this login (from the secret store; removed after)",
            dest=AUTH_KEY_FILE,
            mode="600",
            render=lambda: read_secret(settings.auth_key, vault),
        )
        tags = f" --advertise-tags={','.join(settings.tags)}" if settings.tags else ""
        server.shell(
            name=f"Join the tailnet as {wanted}",
            commands=[
                f"tailscale up --auth-key=file:{AUTH_KEY_FILE} --hostname={wanted}{tags}; "
                f"joined=$?; rm -f {AUTH_KEY_FILE}; exit $joined"
            ],
        )
    else:
        host.noop(f"on the tailnet as {state['dns_name'] or state['hostname']}")
        if state["hostname"] != wanted:
            server.shell(
                name=f"Tailnet hostname {wanted}", commands=[f"tailscale set --hostname={wanted}"]
            )

    # 3. The router's API on the tailnet, with Tailscale's own certificate.
    if settings.serve_router and "router" in spec.groups:
        target = f"http://127.0.0.1:{spec.litellm.port}"
        if f"443/ -> {target}" not in host.get_fact(TailscaleServe):
            server.shell(
                name="Serve the router on the tailnet (HTTPS 443)",
                commands=[f"tailscale serve --bg --https=443 {target}"],
            )
