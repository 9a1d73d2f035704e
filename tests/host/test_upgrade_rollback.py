"""Upgrades that roll back, on the lab: lab-lxc-1's llama.cpp is upgraded to another release
(built on the host, ccache recompiling what differs) and keeps it once the model answers;
upgraded again to a release that crashes loading the model, the run fails with that
release's log and leaves the host serving on the release before it; put back on the lab's
own release (from the control machine's build cache), the next run changes nothing.

The two releases are the lab's llama.cpp source with other build info
(``gpufleet.lab.llamacpp_release``): real builds and binaries through the real upgrade path,
without two more full compiles."""

from __future__ import annotations

from pathlib import Path

from gpufleet import lab
from gpufleet.operations import inference

from .conftest import ROOT, SPECS, pyinfra, ssh

HOST = "lab-lxc-1"
INFERENCE = "deploys/inference.py"


def with_release(folder: Path, url: str, sha256: str) -> Path:
    """The lab inventory with ``HOST`` building llama.cpp from ``url``."""
    folder.mkdir()
    inventory = folder / "lab_upgraded.py"
    inventory.write_text(
        "import runpy\n"
        f"_lab = runpy.run_path({str(ROOT / 'inventory/lab.py')!r})\n"
        "gpu_nodes = [(name, {**data, 'llamacpp': {**data['llamacpp'], "
        f"'source_url': {url!r}, 'source_sha256': {sha256!r}}}}}) if name == {HOST!r} else "
        "(name, data) for name, data in _lab['gpu_nodes']]\n"
        "proxmox_hosts, cpu_nodes = _lab['proxmox_hosts'], _lab['cpu_nodes']\n"
        "gateway, model_cache, router, monitoring, vault = (_lab[g] for g in "
        "('gateway', 'model_cache', 'router', 'monitoring', 'vault'))\n"
    )
    return inventory


def serving(address: str) -> str:
    """The commit the installed llama-server says it was built from, whether the server
    answers, and whether a build is still on trial."""
    return ssh(
        address,
        f"{inference.LLAMA_SERVER} --version 2>&1 | grep -o 'commit [^)]*' | cut -d' ' -f2; "
        "curl -s -o /dev/null -w '%{http_code}\\n' http://127.0.0.1:8080/health; "
        f"test -e {inference.PREVIOUS_BUILD} && echo on-trial || echo settled",
    )


def test_an_upgrade_is_kept_when_it_answers_and_rolled_back_when_it_does_not(lab_session, tmp_path):
    address = str(SPECS[HOST].lan_address)
    assert serving(address).split() == ["unknown", "200", "settled"]  # the lab's release

    next_release = with_release(tmp_path / "next", *lab.llamacpp_release("lab-next"))
    upgraded = pyinfra(INFERENCE, "-y", "--limit", HOST, inventory=next_release)
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    assert serving(address).split() == ["lab-next", "200", "settled"]

    crashing = with_release(
        tmp_path / "crashes", *lab.llamacpp_release("lab-crashes", crashes=True)
    )
    failed = pyinfra(INFERENCE, "-y", "--limit", HOST, inventory=crashing)
    assert failed.returncode != 0
    said = failed.stderr
    assert "did not warm up" in said and "is put back" in said, said[-3000:]
    assert "lab release lab-crashes: crashes loading a model" in said  # the new build's log
    assert "The previous build answers again." in said
    assert serving(address).split() == ["lab-next", "200", "settled"]

    # Back on the lab's release, which the control machine keeps: installed, not compiled.
    back = pyinfra(INFERENCE, "-y", "--limit", HOST, label="back on the lab's release")
    assert back.returncode == 0, back.stderr[-3000:]
    assert not any(name.startswith("llama.cpp | Build") for name, _ in back.changed)
    assert serving(address).split() == ["unknown", "200", "settled"]
    again = pyinfra(INFERENCE, "-y", "--limit", HOST, label="converged again")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.changed == []
