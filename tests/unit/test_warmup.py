"""The warm-up tool against a real HTTP server on loopback: a chat model is asked for a
streamed completion, an embedding model for an embedding, and an embedding model asked for a
completion (as Ollama answers one: HTTP 400) fails naming the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

WARMUP = Path(__file__).parents[2] / "src/gpufleet/warmup.py"
EMBEDDER = "S-LOC-FRE-nomic-embed-text"


class Server(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/v1/embeddings":
            self._json({"data": [{"embedding": [0.1, 0.2, 0.3]}], "model": body["model"]})
        elif self.path == "/v1/chat/completions" and body["model"] != EMBEDDER:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for word in ("Hello", " there", " friend"):
                event = {"choices": [{"delta": {"content": word}}]}
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
        else:
            self.send_response(400)
            self.end_headers()

    def _json(self, answer: dict) -> None:
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def warm_up(base: str, model: str, record: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(WARMUP), "--base", base, "--health", "/health"]
    command += ["--model", model, "--record", str(record), "--timeout", "10", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_a_chat_model_is_asked_for_a_streamed_completion(base, tmp_path):
    result = warm_up(base, "S-LOC-FRE-llama3.2-3b", tmp_path / "chat.json")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "chat.json").read_text())
    assert record["reply"] == "Hello there friend" and record["tokens"] == 3


def test_an_embedding_model_is_asked_for_an_embedding(base, tmp_path):
    result = warm_up(base, EMBEDDER, tmp_path / "e.json", "--request", "/v1/embeddings")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "e.json").read_text())["dimensions"] == 3


def test_an_embedding_model_asked_for_a_completion_fails_naming_it(base, tmp_path):
    result = warm_up(base, EMBEDDER, tmp_path / "x.json")
    assert result.returncode == 1
    assert f"warm-up failed: {EMBEDDER} at {base}" in result.stderr
    assert not (tmp_path / "x.json").exists()


def fake_systemctl(folder: Path, restarts_per_call: int, state: str = "activating") -> dict:
    """A ``systemctl show`` that reports the unit restarted ``restarts_per_call`` more
    times on each call (a server crashing as it loads its model, systemd restarting it)."""
    counter = folder / "calls"
    counter.write_text("0")
    script = folder / "systemctl"
    script.write_text(
        "#!/bin/sh\n"
        f"calls=$(( $(cat {counter}) + 1 )); echo $calls > {counter}\n"
        f'echo "NRestarts=$(( (calls - 1) * {restarts_per_call} ))"\n'
        f'echo "ActiveState={state}"\n'
    )
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


def test_a_server_that_exits_while_loading_is_not_waited_for(tmp_path):
    environment = fake_systemctl(tmp_path, restarts_per_call=1)
    nothing = "http://127.0.0.1:9"  # the discard port: nothing answers
    command = [sys.executable, str(WARMUP), "--base", nothing, "--health", "/health"]
    command += ["--model", "m", "--record", str(tmp_path / "r.json"), "--timeout", "60"]
    command += ["--unit", "llama-server"]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=30, check=False, env=environment
    )
    assert result.returncode == 1
    assert "llama-server exited before it answered (restarted 1 times" in result.stderr


def test_a_server_that_keeps_running_is_warmed_up_with_its_unit_watched(base, tmp_path):
    environment = fake_systemctl(tmp_path, restarts_per_call=0, state="active")
    command = [sys.executable, str(WARMUP), "--base", base, "--health", "/health"]
    command += ["--model", "S-LOC-FRE-llama3.2-3b", "--record", str(tmp_path / "r.json")]
    command += ["--unit", "llama-server"]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=30, check=False, env=environment
    )
    assert result.returncode == 0, result.stderr
    assert int((tmp_path / "calls").read_text()) >= 2  # the unit was looked at
