"""TCP_NODELAY on SSH connections; the verified-download record."""

import socket
from types import SimpleNamespace

from gpufleet.connection import set_tcp_nodelay
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
