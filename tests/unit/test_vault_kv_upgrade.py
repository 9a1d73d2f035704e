"""A KV version 2 mount just enabled or restored upgrades its storage and answers HTTP 400
meanwhile ("Upgrading from non-versioned to versioned data"): the client asks again until
it answers, instead of failing the run; any other 400 fails at once. Against a local HTTP
server that answers as Vault does."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gpufleet.vault import KV_UPGRADING, VaultClient, VaultError

ANSWERS: list[tuple[int, dict]] = []


class Vault(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        status, body = ANSWERS.pop(0) if len(ANSWERS) > 1 else ANSWERS[0]
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def address() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Vault)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_kv_mount_upgrading_its_storage_is_asked_again(address):
    upgrading = (400, {"errors": [f"{KV_UPGRADING}. This backend will be unavailable"]})
    ANSWERS[:] = [upgrading, upgrading, (200, {"data": {"data": {"key": "value"}}})]
    answer = VaultClient(address, token="t").request("GET", "kv/data/gpufleet/gateway")
    assert answer == {"data": {"data": {"key": "value"}}}
    assert len(ANSWERS) == 1  # both 400s were asked through


def test_another_bad_request_fails_at_once(address):
    ANSWERS[:] = [(400, {"errors": ["invalid path"]}), (200, {})]
    with pytest.raises(VaultError, match="HTTP 400 invalid path"):
        VaultClient(address, token="t").request("GET", "kv/data/x")
    assert len(ANSWERS) == 1
