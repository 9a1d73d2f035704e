"""A stranger's first fleet, from the wheel: gpufleet built and installed into a fresh
virtual environment, then, in an empty folder, what the README tells a newcomer to run:
init, discover a real host, validate, plan, preview, and a pyinfra dry run that changes
nothing on the host. Nothing of the clone is on the path: the wheel must carry it all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpufleet import lab

from .conftest import SNAPSHOT, ssh, timed

pytestmark = pytest.mark.lab

ROOT = Path(__file__).parents[2]
HOST = "10.200.0.11"
"""lab-gpu-1: a Debian 12 host the lab inventory puts in gpu_nodes, with no GPU."""


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    with timed(" ".join(Path(part).name for part in command[:2]), timeout):
        result = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    assert result.returncode == 0, (
        f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with gpufleet's wheel and its dependencies from the package index (pip's
    cache keeps this quick after the first run)."""
    work = tmp_path_factory.mktemp("newcomer")
    wheels = work / "wheels"
    python = sys.executable
    run(
        [python, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        work,
        {**os.environ},
    )
    (wheel,) = wheels.glob("gpufleet-*.whl")
    venv = work / "venv"
    run([python, "-m", "venv", str(venv)], work, dict(os.environ))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([str(venv / "bin/pip"), "install", "-q", str(wheel)], work, env)
    return venv


@pytest.fixture(scope="module")
def fleet(installed: Path, lab_session, tmp_path_factory: pytest.TempPathFactory):
    """An empty folder, a home of its own (its known_hosts), and the installed commands."""
    folder = tmp_path_factory.mktemp("fleet")
    home = tmp_path_factory.mktemp("home")
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh/known_hosts").touch()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"HOME": str(home), "PATH": f"{installed / 'bin'}:{env['PATH']}"}
    env["PYINFRA_PROGRESS"] = "off"
    return folder, env


def test_the_wheel_carries_the_deploys_and_templates(installed: Path):
    listing = run(
        [
            str(installed / "bin/python"),
            "-c",
            "import gpufleet, gpufleet.deploys as d, gpufleet.paths as p; "
            "print(gpufleet.__file__); print(d.NAMES); print(p.template('apt/debian.sources.j2'))",
        ],
        installed,
        {"PATH": os.environ["PATH"]},
    )
    assert str(installed) in listing.splitlines()[0]  # not the clone's source
    assert "'gpu_node'" in listing and "'inference'" in listing


def test_a_newcomer_goes_from_an_empty_folder_to_a_dry_run(fleet):
    folder, env = fleet
    key = str(lab.key_path())

    out = run(["gpufleet", "init"], folder, env)
    assert "wrote deploys/gpu_node.py" in out
    refused = subprocess.run(
        ["gpufleet", "validate", "inventory.py"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1 and "gpufleet discover ADDRESS" in refused.stderr

    out = run(
        ["gpufleet", "discover", HOST, "--ssh-key", key, "--name", "desk", "--group", "gpu_nodes"],
        folder,
        env,
    )
    assert f"desk ({HOST}): Debian GNU/Linux 12 (bookworm), x86_64" in out
    hosts = yaml.safe_load((folder / "hosts.yaml").read_text())["hosts"]
    assert hosts["desk"]["ssh_hostname"] == HOST and hosts["desk"]["groups"] == ["gpu_nodes"]
    assert hosts["desk"]["hardware"]["cores"] >= 1 and hosts["desk"]["hardware"]["ram_gb"] > 0
    # Again: the host is updated, not listed twice.
    run(["gpufleet", "discover", HOST, "--ssh-key", key], folder, env)
    assert list(yaml.safe_load((folder / "hosts.yaml").read_text())["hosts"]) == ["desk"]

    assert "1 hosts valid (groups: gpu_nodes)" in run(
        ["gpufleet", "validate", "inventory.py"], folder, env
    )
    run(["gpufleet", "plan", "inventory.py"], folder, env)
    preview = run(["gpufleet", "preview", "inventory.py", "deploys/gpu_node.py"], folder, env)
    assert preview.startswith("desk (debian12-amd64): ")

    before = ssh(HOST, SNAPSHOT)
    # No -y: with it, pyinfra skips change detection.
    dry = run(["pyinfra", "inventory.py", "deploys/gpu_node.py", "--dry"], folder, env, 1800)
    after = ssh(HOST, SNAPSHOT)
    assert "[desk] Connected" in dry
    assert "GPU detection | Detect NVIDIA GPUs" in dry  # the packaged deploy, planned
    assert before == after, "the dry run changed the host"
