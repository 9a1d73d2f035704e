"""``gpufleet verify``: the testinfra suites CI runs against the lab, against any inventory.

Each suite in ``gpufleet/verify/suites`` is a pytest module of read-only checks. A check takes
a ``target`` (one inventory host: its validated spec and a testinfra connection built from its
``ssh_*`` data) and runs once per host it applies to, chosen by the host's groups and
placements (``applies_to`` on the module, ``@applies(...)`` on a check). The run ends with a
per-host table of every check and a JUnit XML file.

    gpufleet verify inventory/lab.py --junit-xml verify.xml
    gpufleet verify inventory/homelab.py --limit gpu-desktop --list   # contacts no host
"""

from __future__ import annotations

import functools
import hashlib
import shlex
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gpufleet.catalogue import Catalogue
from gpufleet.facts.ollama import LoadedModel, full_name
from gpufleet.inventory import load_inventory, validate_file
from gpufleet.models import HostSpec
from gpufleet.routing import service_address
from gpufleet.selection import select_hosts

SUITES = Path(__file__).parent / "suites"
Check = TypeVar("Check", bound=Callable[..., Any])


def http_get(url: str, timeout: float = 15, **kwargs: Any) -> Any:
    """GET ``url`` from this machine; a refused connection fails the check by naming it."""
    import requests

    try:
        return requests.get(url, timeout=timeout, **kwargs)
    except requests.ConnectionError:
        raise AssertionError(
            f"nothing answers on {url} (from this machine: the firewall lets in the hosts that "
            "use a service and firewall.admin_sources; name this machine there)"
        ) from None


def assert_running(target: Target, service: str) -> None:
    """The systemd unit ``service`` is enabled and running on ``target``."""
    unit = target.host.service(service)
    assert unit.is_enabled, f"{service} is not enabled"
    assert unit.is_running, f"{service} is not running"


def gpus_differ(
    declared: list[str], seen: list[tuple[str, str | None]], catalogue: Catalogue
) -> str | None:
    """What differs between the GPUs the inventory declares (catalogue names, one per card)
    and those nvidia-smi shows (``(name, pci.device_id)``), each named through the catalogue
    (:meth:`Catalogue.identify`); None when they are the same parts, in any order."""

    def part(model: str) -> str:
        entry = catalogue.accelerator(model)
        return entry.name if entry else model

    wanted = Counter(part(model) for model in declared)
    found = Counter(
        entry.name if (entry := catalogue.identify(name, device)) else f"{name} (not catalogued)"
        for name, device in seen
    )
    if wanted == found:
        return None
    return f"declared {sorted(wanted.elements())}, nvidia-smi shows {sorted(found.elements())}"


def placement_differs(where: str, loaded: LoadedModel) -> str | None:
    """How a loaded model's GPU share contradicts where the planner put it (``gpu``: all of
    it, ``cpu``: none, ``partial``: some), or None."""
    share = loaded["gpu_percent"]
    fits = {"gpu": share == 100, "cpu": share == 0, "partial": 0 < share < 100}.get(where, True)
    if fits:
        return None
    return f"{loaded['name']} is {share}% on the GPU, the plan puts it on {where}"


def loaded_report(loaded: list[LoadedModel]) -> str:
    """One line for the table: ``loaded: qwen3:8b 100% GPU (5.9 GB, context 4096)``."""
    if not loaded:
        return "loaded: nothing"
    return "loaded: " + ", ".join(
        f"{m['name']} {m['gpu_percent']}% GPU ({m['size']}"
        + (f", context {m['context']})" if m["context"] else ")")
        for m in loaded
    )


def loaded_placements(wanted: Mapping[str, str], loaded: list[LoadedModel]) -> list[str]:
    """For each loaded model the plan places (``{served name: where}``), how it contradicts
    the plan; models loaded but not planned, and planned but not loaded, are no problem."""
    by_name = {full_name(name): where for name, where in wanted.items()}
    problems = []
    for model in loaded:
        where = by_name.get(full_name(model["name"]))
        problem = placement_differs(where, model) if where else None
        if problem:
            problems.append(problem)
    return problems


def applies(predicate: Callable[[HostSpec], bool]) -> Callable[[Check], Check]:
    """Run a check only on hosts whose spec satisfies ``predicate``.

    .. code:: python

        @applies(lambda spec: spec.vault.flavor == "openbao")
        def test_openbao_runs(target): ...
    """

    def mark(check: Check) -> Check:
        check.applies_to = predicate  # type: ignore[attr-defined]
        return check

    return mark


def applies_in_fleet(
    predicate: Callable[[HostSpec, dict[str, HostSpec]], bool],
) -> Callable[[Check], Check]:
    """Run a check only on hosts for which ``predicate(spec, fleet)`` holds, whatever its
    module's ``applies_to`` says: for what only the whole inventory decides (a host that
    holds layers of another host's model may serve none of its own)."""

    def mark(check: Check) -> Check:
        check.applies_in_fleet = predicate  # type: ignore[attr-defined]
        return check

    return mark


@dataclass
class Target:
    """One inventory host as the checks see it: its spec, where it answers, how to reach it."""

    spec: HostSpec
    connection: dict[str, Any]
    """testinfra's ``get_host`` arguments, from the host's pyinfra ``ssh_*`` data."""
    fleet: dict[str, HostSpec] = field(default_factory=dict)
    """Every host of the inventory (where the fleet's Vault is)."""

    def engine_headers(self, engine: Any) -> dict[str, str]:
        """The ``Authorization`` header ``engine`` on this host asks for, read from the
        secret store; none where it asks for no key."""
        from gpufleet.secrets import read_secret
        from gpufleet.vault import fleet_vault

        reference = self.spec.secrets.get(engine.api_key_secret or "")
        if reference is None:
            return {}
        return {"Authorization": f"Bearer {read_secret(reference, fleet_vault(self.fleet))}"}

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def address(self) -> str:
        return service_address(self.spec)

    def get_on_host(self, url: str) -> str:
        """The body of a GET of ``url`` made on the host itself (a service that listens on
        loopback); fails the check naming the URL when nothing answers there."""
        fetch = (
            "import sys, urllib.request; "
            "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
        )
        result = self.host.run(f"python3 -c {shlex.quote(fetch)} {shlex.quote(url)}")
        assert result.rc == 0, f"nothing answers on {url} on {self.name}"
        return str(result.stdout)

    @functools.cached_property
    def host(self) -> Any:
        """The testinfra host; connects on its first command, never while listing."""
        import testinfra

        return testinfra.get_host(**self.connection)


def ssh_connection(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """testinfra ``get_host`` arguments that reach a host the way pyinfra's SSH connector does.

    >>> ssh_connection("a", {"ssh_hostname": "10.0.0.5", "ssh_user": "root"})["hostspec"]
    'ssh://root@10.0.0.5'
    """
    user = data.get("ssh_user")
    port = data.get("ssh_port")
    hostspec = f"ssh://{f'{user}@' if user else ''}{data.get('ssh_hostname') or name}"
    if port:
        hostspec += f":{port}"
    options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    if data.get("ssh_known_hosts_file"):
        options += ["-o", f"UserKnownHostsFile={data['ssh_known_hosts_file']}"]
    if data.get("ssh_strict_host_key_checking"):
        options += ["-o", f"StrictHostKeyChecking={data['ssh_strict_host_key_checking']}"]
    # One SSH connection per host for all its checks: without a ControlPath, testinfra's
    # ControlMaster=auto shares nothing and every check pays a full handshake.
    socket = hashlib.sha256(hostspec.encode()).hexdigest()[:16]
    connection: dict[str, Any] = {
        "hostspec": hostspec,
        "ssh_extra_args": shlex.join(options),
        "controlpath": f"{tempfile.gettempdir()}/gpufleet-ssh-{socket}",
    }
    if data.get("ssh_key"):
        connection["ssh_identity_file"] = str(Path(data["ssh_key"]).expanduser())
    if data.get("_sudo") and user != "root":
        connection["sudo"] = True
    return connection


def targets(inventory: str | Path, limit: Iterable[str] = ()) -> list[Target]:
    """The hosts to verify: the inventory validated first (a bad one raises InventoryError
    before any host is contacted), then narrowed to the hosts ``limit`` selects (host names,
    group names, globs, as pyinfra's ``--limit``); raises NoHostsSelected when none is left."""
    specs = validate_file(inventory)
    chosen = select_hosts(specs, limit, source=str(inventory)).names
    data = {h.name: dict(h.data.dict()) for h in load_inventory(inventory)}
    return [Target(specs[name], ssh_connection(name, data[name]), specs) for name in chosen]


@dataclass
class Outcome:
    host: str
    suite: str
    check: str
    result: str = "pass"
    message: str = ""


def _check_label(function: Callable[..., Any]) -> str:
    return function.__name__.removeprefix("test_").replace("_", " ")


@dataclass
class VerifyPlugin:
    """Parametrizes every check over the targets it applies to and records each outcome."""

    targets: list[Target]
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "target" in metafunc.fixturenames:
            metafunc.parametrize("target", self.targets, ids=[t.name for t in self.targets])

    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        kept, dropped = [], []
        for item in items:
            target = item.callspec.params["target"]  # type: ignore[attr-defined]
            function = item.function  # type: ignore[attr-defined]
            module_rule = getattr(item.module, "applies_to", None)  # type: ignore[attr-defined]
            check_rule = getattr(function, "applies_to", None)
            fleet_rule = getattr(function, "applies_in_fleet", None)
            if fleet_rule is not None:
                applies = bool(fleet_rule(target.spec, target.fleet))
            else:
                rules = (module_rule, check_rule)
                applies = all(rule is None or rule(target.spec) for rule in rules)
            if applies:
                kept.append(item)
                suite = Path(str(item.fspath)).stem.removeprefix("test_")
                self.outcomes[item.nodeid] = Outcome(target.name, suite, _check_label(function))
            else:
                dropped.append(item)
        items[:] = kept
        if dropped:
            config.hook.pytest_deselected(items=dropped)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        outcome = self.outcomes.get(report.nodeid)
        if outcome is None or outcome.result != "pass":
            return
        if report.failed:
            outcome.result = "FAIL" if report.when == "call" else "ERROR"
            crash = getattr(report.longrepr, "reprcrash", None)
            text = crash.message if crash is not None else str(report.longrepr)
            outcome.message = text.strip().splitlines()[0][:160] if text.strip() else ""
        elif report.skipped:
            outcome.result = "skip"
            outcome.message = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
        elif report.when == "call":
            # A passing check may report what it saw (record_property("report", text)).
            outcome.message = str(dict(report.user_properties).get("report", ""))


def table(outcomes: Iterable[Outcome]) -> str:
    """Per host: one line per check with its result, then a count; a failure's reason under it."""
    by_host: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_host.setdefault(outcome.host, []).append(outcome)
    lines = []
    for host, checks in by_host.items():
        failed = sum(o.result in ("FAIL", "ERROR") for o in checks)
        passed = sum(o.result == "pass" for o in checks)
        lines.append(f"{host}: {passed} passed, {failed} failed, {len(checks)} checks")
        for o in checks:
            lines.append(f"  {o.result:<5} {o.suite}: {o.check}")
            if o.message:
                lines.append(f"        {o.message}")
    # A skipped check (one that does not apply to what the host runs) is not a failure.
    hosts_failing = [
        h for h, checks in by_host.items() if any(o.result in ("FAIL", "ERROR") for o in checks)
    ]
    lines.append(
        f"verify: {len(by_host)} hosts, "
        + (f"failing: {', '.join(hosts_failing)}" if hosts_failing else "all checks passed")
    )
    return "\n".join(lines)


def suite_names() -> list[str]:
    return sorted(p.stem.removeprefix("test_") for p in SUITES.glob("test_*.py"))


def run(
    chosen: list[Target],
    junit_xml: str | None = None,
    list_only: bool = False,
    suites: Iterable[str] = (),
) -> tuple[int, list[Outcome]]:
    """Run the suites (all, or those named) against ``chosen``; returns pytest's exit code
    and the outcomes."""
    unknown = set(suites) - set(suite_names())
    if unknown:
        raise ValueError(
            f"no suite {', '.join(sorted(unknown))}; the suites: {', '.join(suite_names())}"
        )
    plugin = VerifyPlugin(chosen)
    paths = [str(SUITES / f"test_{name}.py") for name in suites] or [str(SUITES)]
    args = [
        *paths,
        "-c",
        str(SUITES / "pytest.ini"),
        "--rootdir",
        str(SUITES),
        "-p",
        "no:cacheprovider",
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",  # typeguard, imported by pyinfra first
        "--import-mode=importlib",
        "-q",
        "--tb=no",
        "-rN",
        "--no-header",
    ]
    if list_only:
        args += ["--collect-only", "-q"]  # -qq: counts per file, not every test id
    elif junit_xml:
        args.append(f"--junitxml={junit_xml}")
    code = pytest.main(args, plugins=[plugin])
    return int(code), list(plugin.outcomes.values())
