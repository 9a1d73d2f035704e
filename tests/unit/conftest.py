"""Tools of the Debian 12 packages the monitoring deploy installs (promtool, amtool), for the
tests that check gpufleet's files the way those tools check them on a host."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from gpufleet.lab import cache_dir


def debian12_tool(package: str, binary: str) -> str:
    """``binary`` from Debian 12's ``package``: the one on PATH, else the package unpacked
    once into the cache (``apt-get download``, no install)."""
    if found := shutil.which(binary):
        return found
    folder = cache_dir() / "tools" / f"{package}-debian12"
    path = folder / "usr/bin" / binary
    if not path.exists():
        download = folder.with_suffix(".download")
        download.mkdir(parents=True, exist_ok=True)
        fetch = ["apt-get", "download", package]
        if subprocess.run(fetch, cwd=download, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], check=True)  # no package lists yet
            subprocess.run(fetch, cwd=download, check=True)
        [deb] = download.glob(f"{package}_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(folder)], check=True)
        shutil.rmtree(download)
    return str(path)


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool from Debian 12's prometheus package."""
    return debian12_tool("prometheus", "promtool")


@pytest.fixture(scope="session")
def amtool() -> str:
    """amtool from Debian 12's prometheus-alertmanager; the tests that need it are skipped
    on a machine with neither amtool nor apt to fetch it."""
    if not shutil.which("amtool") and not shutil.which("apt-get"):
        pytest.skip("no amtool, and no apt-get to fetch Debian's prometheus-alertmanager")
    return debian12_tool("prometheus-alertmanager", "amtool")
