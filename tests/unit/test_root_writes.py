"""Root never writes or runs anything inside a folder a service user owns: every deploy is
planned on the lab's and the homelab's hosts from fact profiles (fresh hosts, so every
folder is made and every file written), and each path root writes or executes is checked
against the folders the plan hands to a service user (and the ones Debian's packages give
their services)."""

from __future__ import annotations

import re
import shlex

import pytest

from gpufleet.locks import PROMETHEUS_CLIENT, litellm_requirements, shipped_litellm_lock
from gpufleet.models import LiteLLMRouter
from gpufleet.paths import EVERY_DEPLOY
from gpufleet.preview import PlannedOperation, plan, profiles_for

PACKAGED = ("/var/lib/grafana", "/var/lib/prometheus", "/var/lib/postgresql", "/var/lib/redis")
"""Folders Debian's packages make their service's own (not in a plan's commands)."""
KNOWN = {
    "/etc/postgresql/": "Debian keeps a cluster's configuration in a folder its owner (postgres) "
    "owns; gpufleet's pg_hba.conf and conf.d/gpufleet.conf are written there by root"
}
"""Writes below a service's folder that stay, each with why; nothing else may join them."""
SEGMENT = re.compile(r"&&|\|\||[;|(){}]")
WRITES = [
    re.compile(p)
    for p in (
        r"--record (\S+)",
        r"mv -fT \S+ (\S+)",
        r"curl [^|]*?-o (\S+)",
        r"(?<![0-9&])> ?(\S+)",
        r"-C (\S+)",
        r"-m venv (\S+)",
        r"install -m \d+ \S+ (\S+)",
        r"mkdir -p (\S+)",
        r"mktemp -p (\S+)",
    )
]


def _path(word: str) -> str:
    return (shlex.split(word) or [""])[0] if word.count("'") % 2 == 0 else word


def service_folders(operations: list[PlannedOperation]) -> set[str]:
    owned = set(PACKAGED)
    for command in (c for o in operations for c in o.commands):
        for user, path in re.findall(r"chown (?:-R )?([^\s:]+)(?::\S+)? (\S+)", command):
            if user != "root":
                owned.add(_path(path))
    return owned


def root_paths(operations: list[PlannedOperation]) -> set[str]:
    """Paths root writes (uploads, redirects, records, downloads, venvs, folders) or runs;
    not a folder root makes to hand to a service (``mkdir -p`` then ``chown``), which is
    where the service's own writing starts."""
    found = {dest for o in operations for dest in o.uploads}
    handed = service_folders(operations)
    for command in (c for o in operations for c in o.commands):
        for pattern in WRITES:
            found.update(
                p
                for p in map(_path, pattern.findall(command))
                if not (pattern.pattern.startswith("mkdir") and p in handed)
            )
        for segment in SEGMENT.split(command):
            words = segment.split()
            if words and words[0].startswith("/"):
                found.add(words[0])
            if len(words) > 1 and words[0] == "python3" and words[1].startswith("/"):
                found.add(words[1])
    return {p for p in found if p.startswith("/") and p not in ("/dev/null",)}


def below(path: str, folder: str) -> bool:
    return path.rstrip("/").startswith(folder.rstrip("/") + "/")


def _container_config(host: str, fact: str, arguments: str) -> list[str]:
    """A Proxmox host's container configs, which no profile holds: one as `pct create`
    leaves it."""
    if fact == "pyinfra.facts.files.FileContents" and "/etc/pve/lxc/" in arguments:
        return ["arch: amd64", "cores: 2", "hostname: container", "memory: 2048"]
    raise KeyError(fact)


@pytest.fixture(scope="module", params=["inventory/lab.py", "inventory/homelab.py"])
def fleet(request) -> dict[str, list[PlannedOperation]]:
    profiles = profiles_for(request.param)

    def answer(host: str, fact: str, arguments: str) -> object:
        try:
            return _container_config(host, fact, arguments)
        except KeyError:
            return profiles[host].answer(fact, arguments)

    return plan(request.param, list(EVERY_DEPLOY), answer)


def test_root_writes_and_runs_nothing_inside_a_folder_a_service_owns(fleet):
    seen = 0
    for host, operations in fleet.items():
        owned = service_folders(operations)
        written = root_paths(operations)
        seen += len(written)
        inside = sorted(
            (p, f)
            for p in written
            for f in owned
            if below(p, f) and not any(p.startswith(k) for k in KNOWN)
        )
        assert not inside, f"{host}: root writes or runs below a service's folder: {inside}"
    assert seen > 50  # the walk found what root writes: an empty one would prove nothing


def test_the_walk_sees_a_service_folder_and_a_write_below_it():
    # What the old layout planned: the router's home handed to litellm, pip run from it.
    operations = [
        PlannedOperation(
            "Home", True, ["mkdir -p /opt/litellm", "chown litellm:litellm /opt/litellm"]
        ),
        PlannedOperation("Install", True, ["/opt/litellm/venv/bin/pip install x"]),
        PlannedOperation("Stamp", True, ["echo ab > /var/lib/gpufleet/verified/ab"]),
        PlannedOperation("User", True, ["chown gpufleet /var/lib/gpufleet"]),
    ]
    owned, written = service_folders(operations), root_paths(operations)
    assert {"/opt/litellm", "/var/lib/gpufleet"} <= owned
    assert {"/opt/litellm/venv/bin/pip", "/var/lib/gpufleet/verified/ab"} <= written


def test_the_router_venv_is_roots_and_installed_from_the_hash_locked_requirements():
    from gpufleet.roles import router

    fleet = (
        plan(
            "inventory/lab.py",
            ["deploys/router.py"],
            lambda h, f, a: profiles[h].answer(f, a),
            ["router"],
        )
        if (profiles := profiles_for("inventory/lab.py", ["router"]))
        else {}
    )
    (operations,) = fleet.values()
    commands = [c for o in operations for c in o.commands]
    install = next(c for c in commands if "pip install" in c)
    assert f"--require-hashes --no-deps -r {router.LOCK}" in install
    assert not any(f"{router.VENV}/bin/python" in c for c in commands if "config.yaml" not in c)
    assert f"chown root:root {router.CODE}" in commands
    assert f"chown litellm:litellm {router.STATE}" in commands
    uploads = {dest: text for o in operations for dest, text in o.uploads.items()}
    lock = shipped_litellm_lock(LiteLLMRouter().version)
    assert lock is not None and uploads[router.LOCK] == lock.read_text()


def test_the_shipped_lock_pins_what_the_router_needs_each_with_hashes():
    version = LiteLLMRouter().version
    lock = shipped_litellm_lock(version)
    assert lock is not None, f"no lock shipped for the default litellm {version}"
    text = lock.read_text()
    assert re.search(rf"^litellm=={re.escape(version)} ", text, re.MULTILINE)
    assert re.search(rf"^{re.escape(PROMETHEUS_CLIENT)} ", text, re.MULTILINE)
    pins = re.findall(
        r"^(\S+==\S+)(?: ;[^\\]*)? \\\n((?:    --hash=sha256:[0-9a-f]{64}.*\n)+)", text, re.M
    )
    assert len(pins) == len(re.findall(r"^\S+==", text, re.MULTILINE)) > 50
    assert litellm_requirements(version)[1] == PROMETHEUS_CLIENT


def test_a_version_without_a_lock_is_refused_with_the_command_that_makes_one(tmp_path):
    with pytest.raises(ValueError, match=r"uv pip compile --universal .*--generate-hashes"):
        LiteLLMRouter(version="1.2.3")
    lock = tmp_path / "litellm-1.2.3.txt"
    lock.write_text("litellm==1.2.3 \\\n    --hash=sha256:" + "a" * 64 + "\n")
    assert LiteLLMRouter(version="1.2.3", requirements_lock=str(lock)).version == "1.2.3"
    with pytest.raises(ValueError, match=r"does not pin litellm==1\.2\.4"):
        LiteLLMRouter(version="1.2.4", requirements_lock=str(lock))
