"""What gpufleet runs is what was pinned: images by digest, apt keys by fingerprint."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from gpufleet.engines.vllm import VLLM_IMAGE, VLLM_VERSION, VllmSettings
from gpufleet.inventory import _problems_from, spec_for
from gpufleet.models import DcgmExporter, HostSpec
from gpufleet.operations.downloads import fingerprint_check, primary_fingerprints

DIGEST = "@sha256:" + "0" * 64
HARDWARE = {"cores": 8, "ram_gb": 32}


@pytest.mark.parametrize(
    "data",
    [
        {"dcgm_exporter": {"image": "nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-4.1.3-ubuntu22.04"}},
        {"triton": {"enabled": True, "image": "nvcr.io/nvidia/tritonserver:26.07-py3"}},
        {"vllm": {"install": "container", "image": "vllm/vllm-openai:v0.28.0"}},
    ],
    ids=["dcgm", "triton", "vllm"],
)
def test_an_image_by_tag_alone_is_refused_with_how_to_read_its_digest(data):
    with pytest.raises(ValidationError) as refused:
        spec_for("gpu", ["gpu_nodes"], {"hardware": HARDWARE, **data})
    # The inventory check's message: the field, what it must be and how to read a digest.
    (problem,) = _problems_from("gpu", refused.value)
    assert problem.field.endswith(".image")
    assert "pinned by digest" in problem.message
    assert "docker buildx imagetools inspect" in problem.message
    section, values = next(iter(data.items()))
    pinned = {section: {**values, "image": values["image"] + DIGEST}}
    assert HostSpec(name="gpu", hardware=HARDWARE, **pinned)


def test_vllms_default_image_is_its_default_release_pinned_by_digest():
    assert VLLM_IMAGE.startswith(f"vllm/vllm-openai:v{VLLM_VERSION}@sha256:")
    assert VllmSettings(install="container").image == VLLM_IMAGE
    # Another release with the default image would run v0.28.0 under another name.
    with pytest.raises(ValidationError, match=r"tagged 'v0\.28\.0', not v0\.29\.0"):
        VllmSettings(install="container", version="0.29.0")
    assert VllmSettings(version="0.29.0").install == "venv"  # the venv pins by version
    other = f"registry.lan:5000/vllm/vllm-openai:v0.29.0-cu129{DIGEST}"
    assert VllmSettings(install="container", version="0.29.0", image=other).image == other


def test_no_dcgm_image_is_pulled_by_a_tag_when_none_is_pinned():
    assert DcgmExporter().image is None


def gpg(home: Path, *args: str) -> str:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Two throwaway signing keys made by gpg: each exported alone, and both in one file."""
    if not shutil.which("gpg"):
        pytest.skip("gpg is not installed")
    folder = tmp_path_factory.mktemp("keys")
    home = folder / "gnupg"
    home.mkdir(mode=0o700)
    fingerprints = {}
    for name in ("repo", "intruder"):
        gpg(home, "--passphrase", "", "--quick-gen-key", f"{name}@test", "ed25519", "sign", "never")
        if name == "repo":  # a signing subkey too, as repository keys often have
            primary = gpg(home, "--with-colons", "--list-keys", "repo@test").split("fpr:::::::::")[
                1
            ]
            gpg(home, "--passphrase", "", "--quick-add-key", primary[:40], "ed25519", "sign")
        (folder / f"{name}.asc").write_text(gpg(home, "--armor", "--export", f"{name}@test"))
        shown = gpg(home, "--show-keys", "--with-colons", str(folder / f"{name}.asc"))
        (fingerprints[name],) = primary_fingerprints(shown.splitlines())
    both = gpg(home, "--armor", "--export", "repo@test", "intruder@test")
    (folder / "both.asc").write_text(both)
    return folder, fingerprints


def run_check(path: Path, fingerprint: str) -> subprocess.CompletedProcess[str]:
    command = fingerprint_check(str(path), fingerprint, "https://repo.test/key")
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True)


def test_the_key_check_passes_only_the_expected_key(keys):
    folder, fingerprints = keys
    assert run_check(folder / "repo.asc", fingerprints["repo"]).returncode == 0
    wrong = run_check(folder / "intruder.asc", fingerprints["repo"])
    assert wrong.returncode != 0
    assert f"expected {fingerprints['repo']}, it holds: {fingerprints['intruder']}" in wrong.stderr


def test_a_key_file_with_an_extra_key_is_refused(keys):
    folder, fingerprints = keys
    both = run_check(folder / "both.asc", fingerprints["repo"])
    assert both.returncode != 0 and fingerprints["intruder"] in both.stderr


def test_a_file_that_is_no_key_is_refused(tmp_path, keys):
    _, fingerprints = keys
    page = tmp_path / "gpgkey"
    page.write_text("<html>404 Not Found</html>\n")
    refused = run_check(page, fingerprints["repo"])
    assert refused.returncode != 0 and "no OpenPGP key" in refused.stderr


def test_subkey_fingerprints_are_not_taken_for_the_primary_key(keys):
    folder, fingerprints = keys
    shown = subprocess.run(
        ["gpg", "--batch", "--show-keys", "--with-colons", str(folder / "repo.asc")],
        capture_output=True,
        text=True,
        env={"GNUPGHOME": str(folder / "gnupg")},
    ).stdout.splitlines()
    records = [line.split(":")[0] for line in shown]
    assert records.count("fpr") == 2 and "sub" in records  # the primary key and its subkey
    assert primary_fingerprints(shown) == [fingerprints["repo"]]
