"""Steps the roles share: run a service (and restart it on change), write a unit and run it,
trust a signed apt repository, pull a pinned image, wait until a service answers, warm its
models up. Each is a few pyinfra operations in the order a runbook would give them.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from pyinfra import host
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from gpufleet.models import HostSpec
from gpufleet.operations import accounts, config, downloads, inference, record
from gpufleet.operations.ollama import FETCH_TOOL
from gpufleet.paths import template


def run_service(service: str, *restart_if: OperationMeta) -> tuple[OperationMeta, OperationMeta]:
    """Keep ``service`` enabled and running; restart it when any of ``restart_if`` changed
    its config. Returns the start and the restart, for steps that must follow either."""
    started = systemd.service(name=f"Run {service}", service=service, running=True, enabled=True)
    restarted = systemd.service(
        name=f"Restart {service}", service=service, restarted=True, _if=any_changed(*restart_if)
    )
    return started, restarted


def run_unit(
    service: str, unit: OperationMeta, *restart_if: OperationMeta
) -> tuple[OperationMeta, OperationMeta]:
    """:func:`run_service` for a service whose unit file gpufleet writes (``unit``): systemd
    rereads its units first when that file changed."""
    systemd.daemon_reload(name="Reload systemd units", _if=unit.did_change)
    return run_service(service, unit, *restart_if)


KEY_TOOLS = ["curl", "ca-certificates", "gpg"]
"""What fetching a repository key and checking its fingerprint needs on the host."""


def key_tools() -> None:
    apt.packages(
        name="Tools to fetch and check repository keys", packages=KEY_TOOLS, no_recommends=True
    )


def signing_key(name: str, key_url: str, keyring: str, fingerprint: str) -> OperationMeta:
    """A repository's key at ``keyring``, installed only when its fingerprint is
    ``fingerprint`` (``downloads.signing_key``)."""
    key_tools()
    return downloads.signing_key(
        name=f"{name}'s apt signing key ({fingerprint})",
        src=key_url,
        dest=keyring,
        fingerprint=fingerprint,
    )


def signed_apt_repository(
    name: str,
    key_url: str,
    keyring: str,
    uri: str,
    suite: str,
    components: list[str],
    fingerprint: str,
) -> OperationMeta:
    """A third-party apt repository trusted for its own packages only: its key, checked
    against ``fingerprint``, at ``keyring``, a deb822 source naming it in ``Signed-By``, the
    lists refreshed when either changed. Returns the refresh."""
    key = signing_key(name, key_url, keyring, fingerprint)
    sources = files.template(
        name=f"{name}'s apt repository (signed-by its key)",
        src=template("apt/repository.sources.j2"),
        dest=f"/etc/apt/sources.list.d/{name.lower()}.sources",
        mode="644",
        repository=name,
        uri=uri,
        suite=suite,
        components=components,
        keyring=keyring,
    )
    return apt.update(name=f"Refresh apt lists for {name}", _if=any_changed(key, sources))


def service_account(name: str, home: str) -> None:
    """A system user and group of the same name that cannot log in, for one service."""
    server.group(name=f"{name} group", group=name, system=True)
    accounts.system_user(name=f"{name} user", user=name, group=name, home=home)


@dataclass(frozen=True)
class RegistryLogin:
    """Docker's login to a registry with a key kept in an environment file on the host:
    ``RegistryLogin("nvcr.io", "$oauthtoken", "/etc/gpufleet/triton.env", "NGC_API_KEY")``."""

    registry: str
    username: str
    env_file: str
    variable: str

    def command(self) -> str:
        """The key is read on the host from the file and piped to ``--password-stdin``: it is
        in no command line, no plan and no log."""
        q = shlex.quote
        return (
            f"sed -n {q(f's/^{self.variable}=//p')} {q(self.env_file)} | docker login "
            f"{q(self.registry)} --username {q(self.username)} --password-stdin >/dev/null"
        )


def pull_image(
    image: str,
    unit: OperationMeta,
    login: RegistryLogin | None = None,
    key_changed: OperationMeta | None = None,
) -> OperationMeta:
    """Pull ``image`` for a unit that runs it, once, when the unit is new or changed (a pinned
    tag does not change under the same name). With ``login``, Docker logs in to the registry
    first (its credentials stay in root's Docker config for later pulls), also when
    ``key_changed`` changed the key."""
    quoted = shlex.quote(image)
    pull = f"docker pull {quoted}"
    if login:
        pull = f"{{ {login.command()} && {pull}; }}"
    return server.shell(
        name=f"Pull {image}" + (f" (logged in to {login.registry})" if login else ""),
        commands=[f"docker image inspect {quoted} >/dev/null 2>&1 || {pull}"],
        _if=any_changed(unit, *([key_changed] if key_changed else [])),
    )


def download_tools() -> None:
    """What pyinfra's downloads and the warm-up need on a host that has no GPU role to bring
    them (a CPU node serving a backup model)."""
    apt.packages(
        name="Download tools",
        packages=["curl", "ca-certificates", "python3"],
        no_recommends=True,
    )


def warm_up_tool() -> OperationMeta:
    return files.put(
        name="Warm-up tool",
        src=str(Path(__file__).parents[1] / "warmup.py"),
        dest=inference.WARMUP_SCRIPT,
        mode="755",
    )


def ollama_tool() -> OperationMeta:
    """The tool that copies Ollama models into a store, every blob checked against its
    digest (:mod:`gpufleet.ollama_fetch`)."""
    return files.put(
        name="Ollama model copier",
        src=str(Path(__file__).parents[1] / "ollama_fetch.py"),
        dest=FETCH_TOOL,
        mode="755",
    )


def wait_until_answering(
    name: str, base_url: str, health_path: str, timeout: int, *starts: OperationMeta
) -> None:
    """After any of ``starts`` changed something, wait on the host until the service answers
    ``health_path`` (the warm-up tool does the asking)."""
    warm_up_tool()
    inference.answering(
        name=name,
        base_url=base_url,
        health_path=health_path,
        timeout=timeout,
        _if=any_changed(*starts),
    )


def configured_not_started(service: str, unit_ops: list[OperationMeta], why: str) -> None:
    """The service's unit is in place but what it runs is not: enable it, start nothing."""
    systemd.daemon_reload(name="Reload systemd units", _if=any_changed(*unit_ops))
    systemd.service(name=f"Enable {service}", service=service, enabled=True, running=None)
    host.noop(f"{why}: {service} is configured and starts once that is there")


def restart_and_warm_up(
    service: str,
    unit_changed: OperationMeta,
    config_changed: list[OperationMeta],
    base_url: str,
    health_path: str,
    models: list[tuple[str, str]],
    api_key_env: str | None = None,
    env_file: str | None = None,
) -> list[OperationMeta]:
    """Start, restart on change, then warm each model up after any (re)start: ``models`` are
    (served name, request path) pairs, as the engine gives them (a chat model is asked for a
    completion, an embedding model for an embedding). Returns the operations that (re)start
    the service, for steps that must follow a start too."""
    started, restarted = run_unit(service, unit_changed, *config_changed)
    warm_up(models, base_url, health_path, [started, restarted], api_key_env, env_file)
    return [started, restarted]


def warm_up(
    models: list[tuple[str, str]],
    base_url: str,
    health_path: str,
    after: list[OperationMeta],
    api_key_env: str | None = None,
    env_file: str | None = None,
    timeout: int | None = None,
    services: list[str] | None = None,
) -> None:
    """Warm each of ``models`` ((served name, request path) pairs) up once any of ``after``
    changed something, or while it has no warm-up record (a run killed before its warm-up
    finished): a converged host is not asked again. ``timeout``: seconds each may take to
    answer, where the warm-up's own default is too short. ``services``: the units running
    a llama.cpp build, which the warm-up keeps or puts back (``inference.warmed_up``); a
    build left on trial by a killed run is warmed up and decided too."""
    trial_open = bool(services) and bool(host.get_fact(File, path=inference.PREVIOUS_STAMP))
    for model, request_path in models:
        record = host.get_fact(File, path=f"{inference.WARMUP_RECORDS}/{model}.json")
        recorded = bool(record) and not trial_open
        inference.warmed_up(
            name=f"Warm up {model}",
            base_url=base_url,
            health_path=health_path,
            model=model,
            request_path=request_path,
            api_key_env=api_key_env,
            env_file=env_file,
            timeout=timeout or inference.WARM_UP_TIMEOUT_S,
            services=services,
            _if=any_changed(*after) if recorded else None,
        )


def engine_secret_file(
    label: str, dest: str, secret_environment: tuple[tuple[str, str], ...], spec: HostSpec
) -> OperationMeta:
    """An engine's secrets (``VARIABLE=value`` lines, read from the secret store at run
    time) in a root-owned file only the service user may read besides root; the plan and
    the logs show the variable names only."""
    from gpufleet.inventory import fleet_specs
    from gpufleet.secrets import read_secret
    from gpufleet.vault import fleet_vault

    vault = fleet_vault(fleet_specs())
    return config.config_file(
        name=f"{label} {', '.join(v for v, _ in secret_environment)} (0640, readable by the "
        "service user; from the secret store)",
        dest=dest,
        render=lambda: "".join(f"{v}={read_secret(r, vault)}\n" for v, r in secret_environment),
        owner="root",
        group=spec.service_user,
        mode="640",
    )


def rolling_reboot(spec: HostSpec, name: str) -> OperationMeta:
    """Reboot the host one at a time across the run's hosts (``_serial``), out of the
    router's rotation: its inference ports drained first, its servers answering again
    before the next host goes down."""
    from gpufleet.engines import serving
    from gpufleet.operations import drain

    engines = serving(spec)
    return drain.rebooted(
        name=name,
        ports=sorted({engine.port(spec) for engine in engines}),
        health=[(e.service, e.local_url(spec) + e.health_path) for e in engines],
        reboot_timeout=600,
        _serial=True,
    )


def removed_when_dropped(
    spec: HostSpec, owner: str, units: list[str], kept_files: list[str], within: tuple[str, ...]
) -> None:
    """Absent means removed: the units and files (below ``within``) an earlier run recorded
    putting here for ``owner`` and the inventory no longer names are stopped and deleted;
    what this run put here (``units``, ``kept_files``) is recorded."""
    if spec.os == "macos":
        return  # the engines that record run on Linux hosts only
    record.kept(
        name=f"Remove the {owner} units the inventory dropped",
        owner=owner.lower(),
        kind="unit",
        wanted=units,
    )
    record.kept(
        name=f"Remove the {owner} files the inventory dropped",
        owner=owner.lower(),
        kind="file",
        wanted=kept_files,
        within=within,
    )
