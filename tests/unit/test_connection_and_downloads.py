"""TCP_NODELAY on SSH connections; the verified-download record."""

import hashlib
import socket
import subprocess
from types import SimpleNamespace

import pytest

from gpufleet import paths
from gpufleet.connection import set_tcp_nodelay
from gpufleet.operations import downloads
from gpufleet.operations.downloads import STAMPS, VerifiedFile, stamp_path


def test_tcp_nodelay_is_set_on_a_real_tcp_socket_and_left_alone_elsewhere():
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        try:
            assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            assert set_tcp_nodelay(SimpleNamespace(sock=client)) is True
            assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            client.close()
    left, right = socket.socketpair()
    with left, right:
        assert set_tcp_nodelay(SimpleNamespace(sock=left)) is False  # not TCP
    assert set_tcp_nodelay(SimpleNamespace(sock=object())) is False  # a ProxyCommand


def test_pyinfra_connections_get_the_patch_once_an_inventory_is_checked():
    from pyinfra.connectors.ssh import SSHConnector

    from gpufleet.connection import use_tcp_nodelay

    use_tcp_nodelay()
    patched = SSHConnector._connect
    use_tcp_nodelay()
    assert SSHConnector._connect is patched  # not wrapped twice
    assert patched.__name__ == "_connect" and patched.__wrapped__ is not None


def test_verified_file_fact_reads_size_mtime_mode_and_the_record():
    fact = VerifiedFile()
    assert fact.process([]) is None
    seen = fact.process(["1234 1700000000 644", "ab" * 32 + " 1234 1700000000"])
    assert seen == {
        "size": 1234,
        "mtime": 1700000000,
        "mode": "644",
        "stamp": "ab" * 32 + " 1234 1700000000",
    }
    assert fact.process(["5 6 755"])["stamp"] == ""  # there, never verified by gpufleet
    command = fact.command("/var/lib/llama.cpp/models/my model.gguf")
    assert "'/var/lib/llama.cpp/models/my model.gguf'" in command


def test_records_live_apart_from_the_files_one_per_path():
    first, second = stamp_path("/usr/local/bin/llama-server"), stamp_path("/opt/x.tar.gz")
    assert first.startswith(f"{STAMPS}/") and second.startswith(f"{STAMPS}/")
    assert first != second and stamp_path("/usr/local/bin/llama-server") == first


def test_the_fact_command_answers_for_a_missing_file_and_an_unrecorded_one(tmp_path):
    import subprocess

    fact = VerifiedFile()
    missing = subprocess.run(
        ["sh", "-c", fact.command(str(tmp_path / "absent.gguf"))], capture_output=True, text=True
    )
    assert missing.returncode == 0 and fact.process(missing.stdout.splitlines()) is None
    present = tmp_path / "model.gguf"
    present.write_bytes(b"x" * 10)
    present.chmod(0o644)
    found = subprocess.run(["sh", "-c", fact.command(str(present))], capture_output=True, text=True)
    seen = fact.process(found.stdout.splitlines())
    assert found.returncode == 0
    assert seen is not None and seen["size"] == 10 and seen["mode"] == "644"
    assert seen["mtime"] == int(present.stat().st_mtime)


class _AbsentFile:
    """The host a download sees when its file is not there yet."""

    def get_fact(self, cls, **kwargs):
        return None

    def noop(self, description):
        raise AssertionError(description)


def _release(tmp_path, name: str, body: bytes, listed: bytes) -> tuple[str, str]:
    """A release folder as a project publishes one: the archive and its sha256sum.txt."""
    release = tmp_path / "release"
    release.mkdir()
    (release / name).write_bytes(body)
    digest = hashlib.sha256(listed).hexdigest()
    other = "0" * 64
    (release / "sha256sum.txt").write_text(
        f"{other}  ./dist/ollama-darwin.tgz\n{digest}  ./dist/{name}\n"
    )
    return f"file://{release / name}", f"file://{release / 'sha256sum.txt'}"


def _download(monkeypatch, tmp_path, src: str, sums: str) -> subprocess.CompletedProcess:
    monkeypatch.setattr(paths, "HOST_STATE", str(tmp_path / "state"))
    monkeypatch.setattr(downloads, "STAMPS", str(tmp_path / "state/stamps"))
    monkeypatch.setattr(downloads, "host", _AbsentFile())
    dest = str(tmp_path / "cache/ollama.tgz")
    (command,) = downloads.verified_download._inner(src=src, dest=dest, sha256_list=sums)
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)


def test_a_download_is_checked_against_the_checksum_list_its_release_publishes(
    monkeypatch, tmp_path
):
    body = b"the release archive"
    src, sums = _release(tmp_path, "ollama-linux-amd64.tgz", body, body)
    result = _download(monkeypatch, tmp_path, src, sums)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cache/ollama.tgz").read_bytes() == body
    stamp = (tmp_path / "state/stamps").iterdir().__next__().read_text().split()
    assert stamp[0] == hashlib.sha256(body).hexdigest()  # recorded like a given checksum


def test_a_download_the_list_does_not_vouch_for_is_removed_and_fails(monkeypatch, tmp_path):
    src, sums = _release(tmp_path, "ollama-linux-amd64.tgz", b"tampered", b"the original")
    result = _download(monkeypatch, tmp_path, src, sums)
    assert result.returncode != 0 and "sha256 mismatch" in result.stderr
    assert not list((tmp_path / "cache").iterdir())


def test_a_file_the_list_does_not_name_fails_before_any_download(monkeypatch, tmp_path):
    src, sums = _release(tmp_path, "ollama-linux-amd64.tgz", b"x", b"x")
    result = _download(monkeypatch, tmp_path, src.replace("amd64", "riscv64"), sums)
    assert result.returncode != 0 and "no sha256 for ollama-linux-riscv64.tgz" in result.stderr
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_a_record_replaces_a_link_left_in_its_place_and_never_writes_through_it(tmp_path):
    precious = tmp_path / "elsewhere/shadow"
    precious.parent.mkdir()
    precious.write_text("root's file\n")
    record = tmp_path / "state/verified/ab12"
    record.parent.mkdir(parents=True)
    record.symlink_to(precious)
    subprocess.run(["sh", "-c", paths.state_record(str(record), "abc $(echo 1 2)")], check=True)
    assert precious.read_text() == "root's file\n"
    assert not record.is_symlink() and record.read_text() == "abc 1 2\n"
    assert oct(record.stat().st_mode)[-3:] == "644"


def test_a_state_folder_that_is_a_link_or_missing_its_parent_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "HOST_STATE", str(tmp_path / "state"))
    made = subprocess.run(["sh", "-c", paths.state_folder(str(tmp_path / "state/warmup"))])
    assert made.returncode == 0 and (tmp_path / "state/warmup").is_dir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "state/verified").symlink_to(tmp_path / "elsewhere")
    linked = subprocess.run(
        ["sh", "-c", paths.state_folder(str(tmp_path / "state/verified"))],
        capture_output=True,
        text=True,
    )
    assert linked.returncode != 0 and "must be folders owned by root" in linked.stderr
    monkeypatch.setattr(paths, "HOST_STATE", str(tmp_path / "absent"))
    orphan = subprocess.run(["sh", "-c", paths.state_folder(str(tmp_path / "other"))])
    assert orphan.returncode != 0


def test_a_download_whose_stamp_folder_is_a_link_writes_nothing_there(monkeypatch, tmp_path):
    body = b"the release archive"
    src, sums = _release(tmp_path, "ollama-linux-amd64.tgz", body, body)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "state").mkdir()
    (tmp_path / "state/stamps").symlink_to(tmp_path / "elsewhere")
    result = _download(monkeypatch, tmp_path, src, sums)
    assert result.returncode != 0 and "must be folders owned by root" in result.stderr
    assert not list((tmp_path / "elsewhere").iterdir())


def _fetch_with_mirror(monkeypatch, tmp_path, origin: bytes | None, mirror: bytes | None):
    """Download a file whose sha256 is that of b"the model" from a mirror first, then its
    origin (each a file:// URL; None: not there)."""
    monkeypatch.setattr(paths, "HOST_STATE", str(tmp_path / "state"))
    monkeypatch.setattr(downloads, "STAMPS", str(tmp_path / "state/stamps"))
    monkeypatch.setattr(downloads, "host", _AbsentFile())
    urls = {}
    for name, body in (("origin", origin), ("mirror", mirror)):
        path = tmp_path / name / "model.gguf"
        path.parent.mkdir()
        if body is not None:
            path.write_bytes(body)
        urls[name] = f"file://{path}"
    dest = str(tmp_path / "models/model.gguf")
    (command,) = downloads.verified_download._inner(
        src=urls["origin"],
        dest=dest,
        sha256=hashlib.sha256(b"the model").hexdigest(),
        mirrors=[urls["mirror"]],
    )
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    ("origin", "mirror"),
    [
        (None, b"the model"),  # the cache serves it: the origin is never needed
        (b"the model", b"another model"),  # the cache serves a wrong file: the origin's
        (b"the model", None),  # the cache does not have it: the origin's
    ],
)
def test_a_mirror_is_asked_first_and_only_a_file_with_the_right_checksum_counts(
    monkeypatch, tmp_path, origin, mirror
):
    result = _fetch_with_mirror(monkeypatch, tmp_path, origin, mirror)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "models/model.gguf").read_bytes() == b"the model"


def test_a_wrong_file_from_mirror_and_origin_fails_and_leaves_nothing(monkeypatch, tmp_path):
    result = _fetch_with_mirror(monkeypatch, tmp_path, b"tampered", b"another model")
    assert result.returncode != 0 and "sha256 mismatch" in result.stderr
    assert list((tmp_path / "models").iterdir()) == []
