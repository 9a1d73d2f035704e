"""The LiteLLM router on the ``router`` group: one OpenAI-compatible API in front of every
engine of the fleet, with load balancing, retries, cooldowns and fallbacks.

Runbook it replaces: make a venv; ``pip install 'litellm[proxy]'``; hand-write config.yaml
(where seed 003 found a proxy on a port nobody served and ``api_key: fake-key``); export the
keys; start it. Here config.yaml is generated from the inventory's placements and holds no
secret: keys are ``os.environ/NAME`` references filled from a 0600 environment file whose
values come from Vault.
"""

from __future__ import annotations

import hashlib
import shlex
from io import StringIO
from pathlib import Path

import yaml
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import File, FileContents
from pyinfra.operations import apt, files, postgres, server, systemd

from gpufleet import sandbox
from gpufleet.facts.system import Account, PostgresLogin, release_codename
from gpufleet.locks import shipped_litellm_lock
from gpufleet.models import HostSpec
from gpufleet.operations import config
from gpufleet.paths import HOST_STATE, render_template, state_folder, state_record, template
from gpufleet.roles.steps import run_service, run_unit, service_account, wait_until_answering
from gpufleet.routing import router_config, router_hosts, service_address
from gpufleet.secrets import read_secret
from gpufleet.vault import fleet_vault

CODE = "/opt/litellm"
"""The venv and the lock it was installed from: root's, mode 0755; the service only reads it."""
VENV = f"{CODE}/venv"
LOCK = f"{CODE}/requirements.txt"
STATE = "/var/lib/litellm"
"""The service's home and working folder, the only one it writes (caches); root runs nothing
from it."""
INSTALLED = f"{HOST_STATE}/litellm-venv"
"""The sha256 of the lock the venv was installed from, written by root once pip succeeded:
what decides a reinstall, read without running anything in the venv."""
CONFIG_DIR = "/etc/litellm"
CONFIG = f"{CONFIG_DIR}/config.yaml"
ENV_FILE = f"{CONFIG_DIR}/litellm.env"
USER = "litellm"
REDIS_MAIN = "/etc/redis/redis.conf"
REDIS_SETTINGS = "/etc/redis/gpufleet.conf"
REDIS_CHECK = (
    # A config error stops redis-server at once; one that parses keeps running until the
    # timeout. No TCP port (a socket of its own), no saving, its own pid file: the running
    # server is not disturbed.
    f"timeout 2 redis-server {REDIS_MAIN} --port 0 --save '' --appendonly no --dir /tmp "
    "--daemonize no --supervised no --logfile '' --pidfile /tmp/gpufleet-redis-check.pid "
    "--unixsocket /tmp/gpufleet-redis-check.sock >/dev/null 2>&1; test $? -eq 124"
)


def render_config(settings: dict[str, object]) -> str:
    header = "# Managed by gpufleet (deploys/router.py) from the inventory's placements.\n"
    return header + yaml.safe_dump(settings, sort_keys=False, default_flow_style=False)


@deploy("LiteLLM router")
def litellm_router(spec: HostSpec, specs: dict[str, HostSpec]) -> None:
    """
    Converge the LiteLLM proxy on a host of the ``router`` group.

    .. code:: python

        litellm_router(host_spec(), fleet_specs())
    """
    router = spec.litellm
    planned = router_config(spec, specs)

    # 1. A venv installed from the hash-locked requirements, rebuilt when the lock changes.
    apt.packages(name="Python venv", packages=["python3-venv", "python3"], no_recommends=True)
    account = host.get_fact(Account, user=USER)
    if account and account["home"] != STATE:
        # usermod refuses to move the home of a user with running processes.
        systemd.service(
            name=f"Stop LiteLLM: its home moves from {account['home']} to {STATE}",
            service="litellm",
            running=False,
        )
    service_account(USER, home=STATE)
    files.directory(name="State (the service's own)", path=STATE, user=USER, group=USER, mode="750")
    files.directory(name="Code (root's)", path=CODE, user="root", group="root", mode="755")
    lock_path = router.requirements_lock or str(shipped_litellm_lock(router.version))
    lock_text = Path(lock_path).expanduser().read_text()
    lock_sha256 = hashlib.sha256(lock_text.encode()).hexdigest()
    files.put(
        name=f"Hash-locked requirements of litellm[proxy] {router.version}",
        src=StringIO(lock_text),
        dest=LOCK,
        user="root",
        group="root",
        mode="644",
    )
    installed = host.get_fact(FileContents, path=INSTALLED)
    has_venv = host.get_fact(File, path=f"{VENV}/bin/litellm")
    if installed != [lock_sha256] or not has_venv:
        index = f" --index-url {shlex.quote(router.pip_index)}" if router.pip_index else ""
        venv = [
            server.shell(
                name=f"Install litellm[proxy] {router.version} (--require-hashes)",
                # The stamp goes first and comes back last: a half-installed venv is redone.
                commands=[
                    f"rm -f {INSTALLED} && rm -rf {VENV} && python3 -m venv {VENV}",
                    f"{VENV}/bin/pip install --quiet --disable-pip-version-check{index} "
                    f"--require-hashes --no-deps -r {LOCK}",
                    state_folder(HOST_STATE),
                    state_record(INSTALLED, lock_sha256),
                ],
            )
        ]
    else:
        venv = []
        host.noop(f"litellm {router.version} is installed from its lock")

    # 2. Config without secrets, then the secrets in a 0600 file.
    files.directory(name="Config folder", path=CONFIG_DIR, group=USER, mode="750")
    config_yaml = config.config_file(
        name="Router config (no secrets: os.environ/ references)",
        dest=CONFIG,
        mode="640",
        group=USER,
        render=lambda: render_config(planned.settings),
        validate=f"{VENV}/bin/python -c 'import sys, yaml; c = yaml.safe_load(open(sys.argv[1])); "
        f'assert c["model_list"] and c["general_settings"]["master_key"]\' {CONFIG}',
    )
    vault = fleet_vault(specs)
    database_url = planned.database_url
    env_file = config.config_file(
        name=f"Router keys ({len(planned.environment)}, from the secret store)"
        + (" and DATABASE_URL" if database_url else ""),
        dest=ENV_FILE,
        mode="600",
        render=lambda: (
            "".join(
                f"{name}={read_secret(ref, vault)}\n" for name, ref in planned.environment.items()
            )
            + (
                f"DATABASE_URL={database_url.render(read_secret(database_url.password, vault))}\n"
                if database_url
                else ""
            )
        ),
    )

    # 3. The unit; restart on any change, then wait until it answers.
    unit = files.template(
        name="LiteLLM systemd unit",
        src=template("litellm/litellm.service.j2"),
        dest="/etc/systemd/system/litellm.service",
        mode="644",
        run_as=USER,
        env_file=ENV_FILE,
        home=STATE,
        venv=VENV,
        config=CONFIG,
        address=router.address,
        port=router.port,
        sandbox=sandbox.litellm(STATE),
    )
    started, restarted = run_unit("litellm", unit, config_yaml, env_file, *venv)
    wait_until_answering(
        "LiteLLM answers",
        f"http://127.0.0.1:{router.port}",
        "/health/liveliness",
        180,
        started,
        restarted,
    )


@deploy("Router state (Redis)")
def redis_server(spec: HostSpec, specs: dict[str, HostSpec]) -> None:
    """
    Run the Redis the routers share for cooldowns and usage counts: Debian's redis-server,
    bound where the inventory says, with a password from the secret store.

    .. code:: python

        redis_server(host_spec(), fleet_specs())
    """
    settings = spec.litellm.redis
    apt.packages(name="Redis", packages=["redis-server"], no_recommends=True)
    include = files.line(
        name="redis.conf reads gpufleet's settings last",
        path=REDIS_MAIN,
        line=f"include {REDIS_SETTINGS}",
    )
    vault = fleet_vault(specs)
    redis_conf = config.config_file(
        name="Redis settings (bind, password, memory cap; checked by redis-server)",
        dest=REDIS_SETTINGS,
        mode="640",
        group="redis",
        render=lambda: render_template(
            "redis/gpufleet.conf.j2",
            bind=[str(address) for address in settings.bind],
            port=settings.port,
            password=read_secret(settings.password, vault),
            maxmemory_mb=settings.maxmemory_mb,
        ),
        validate=REDIS_CHECK,
    )
    run_service("redis-server", include, redis_conf)


POSTGRES_MAJOR = {"bookworm": 15, "trixie": 17, "jammy": 14, "noble": 16}
"""PostgreSQL major version each release's ``postgresql`` package brings."""
POSTGRES_SECRETS = "/etc/postgresql/gpufleet"


@deploy("LiteLLM database (PostgreSQL)")
def postgres_server(spec: HostSpec, specs: dict[str, HostSpec]) -> None:
    """
    Run LiteLLM's database: Debian's PostgreSQL listening where the inventory says, a role
    and a database for the routers, the role's password from the secret store, and
    ``pg_hba.conf`` letting in the other router hosts only.

    .. code:: python

        postgres_server(host_spec(), fleet_specs())
    """
    settings = spec.litellm.database
    codename = release_codename()
    major = POSTGRES_MAJOR.get(codename)
    if major is None:
        raise DeployError(
            f"{spec.name}: no PostgreSQL version known for release {codename or 'unknown'}; "
            f"supported: {', '.join(POSTGRES_MAJOR)}"
        )
    etc = f"/etc/postgresql/{major}/main"
    apt.packages(name="PostgreSQL", packages=["postgresql"], no_recommends=True)

    # 1. Where it listens, checked by postgres itself before the restart that applies it.
    listening = config.config_file(
        name="PostgreSQL settings (listen addresses, port; checked by postgres -C)",
        dest=f"{etc}/conf.d/gpufleet.conf",
        mode="644",
        owner="postgres",
        group="postgres",
        render=lambda: render_template(
            "postgres/gpufleet.conf.j2",
            # Loopback always: the password check below and local tools connect there.
            bind=list(dict.fromkeys(["127.0.0.1", *(str(a) for a in settings.bind)])),
            port=settings.port,
        ),
        validate=(
            f"runuser -u postgres -- /usr/lib/postgresql/{major}/bin/postgres "
            f"-D /var/lib/postgresql/{major}/main -c config_file={etc}/postgresql.conf "
            "-C listen_addresses >/dev/null"
        ),
    )
    others = [service_address(r) for r in router_hosts(specs) if r.name != spec.name]
    clients = files.template(
        name="pg_hba.conf: local tools, loopback and the other router hosts, by password",
        src=template("postgres/pg_hba.conf.j2"),
        dest=f"{etc}/pg_hba.conf",
        mode="640",
        user="postgres",
        group="postgres",
        database=settings.name,
        user_name=settings.user,
        routers=others,
    )
    run_service("postgresql", listening, clients)

    # 2. Role, database, password: the password is set from a 0640 file psql reads itself,
    # so it is in no command line.
    postgres.role(name=f"Role {settings.user}", role=settings.user, login=True, _su_user="postgres")
    postgres.database(
        name=f"Database {settings.name}",
        database=settings.name,
        owner=settings.user,
        _su_user="postgres",
    )
    files.directory(name="Secrets folder", path=POSTGRES_SECRETS, group="postgres", mode="750")
    vault = fleet_vault(specs)
    password_file = f"{POSTGRES_SECRETS}/{settings.user}.password"
    sql_file = f"{POSTGRES_SECRETS}/set-{settings.user}-password.sql"
    password = config.config_file(
        name=f"{settings.user}'s password (from the secret store)",
        dest=password_file,
        mode="640",
        group="postgres",
        render=lambda: read_secret(settings.password, vault),
    )
    set_password = files.template(
        name="SQL that sets it",
        src=template("postgres/set-password.sql.j2"),
        dest=sql_file,
        mode="640",
        group="postgres",
        role=settings.user,
        password_file=password_file,
    )
    logs_in = host.get_fact(
        PostgresLogin,
        role=settings.user,
        database=settings.name,
        port=settings.port,
        password_file=password_file,
    )
    server.shell(
        name=f"Set {settings.user}'s password",
        commands=[f"psql -v ON_ERROR_STOP=1 -q -f {sql_file}"],
        _if=lambda: not logs_in or password.did_change() or set_password.did_change(),
        _su_user="postgres",
    )
