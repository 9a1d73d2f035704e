"""bench/sweep.py against a stand-in llama-server whose decode speed depends on its threads:
the sweep starts one server per setting with exactly those flags, reads the server's own
timings, skips what llama.cpp would clamp, and names the fastest."""

from __future__ import annotations

import csv
import importlib.util
import io
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
_spec = importlib.util.spec_from_file_location("sweep", ROOT / "bench/sweep.py")
assert _spec and _spec.loader
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

FAKE_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
with open(args["--model"] + ".started", "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
threads, ubatch = int(args["--threads"]), int(args["--ubatch-size"])
decode = {1: 20.0, 2: 35.0, 4: 25.0}[threads]  # past the cores, more threads only wait


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *_):
        pass

    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["cache_prompt"] is False and body["ignore_eos"] is True
        reply = json.dumps(
            {"timings": {"predicted_per_second": decode, "prompt_per_second": ubatch / 2}}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


HTTPServer(("127.0.0.1", int(args["--port"])), Handler).serve_forever()
"""


@pytest.fixture
def fake_server(tmp_path):
    server = tmp_path / "llama-server"
    server.write_text(f"#!{sys.executable}\n{FAKE_SERVER}")
    server.chmod(0o755)
    return server


def test_the_sweep_measures_each_setting_and_names_the_fastest(tmp_path, fake_server, capsys):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    code = sweep.main(
        [
            "--model", str(model), "--server", str(fake_server), "--threads", "1", "2", "4",
            "--batch-size", "512", "--ubatch-size", "128", "512", "1024", "--runs", "2",
            "--tokens", "8", "--limit-s", "20",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    rows = list(
        csv.DictReader(
            io.StringIO("\n".join(line for line in out.splitlines() if not line.startswith("#")))
        )
    )
    # ubatch 1024 > batch 512 is what llama.cpp clamps to 512: not measured twice.
    assert [(r["threads"], r["ubatch_size"]) for r in rows] == [
        ("1", "128"), ("1", "512"), ("2", "128"), ("2", "512"), ("4", "128"), ("4", "512"),
    ]  # fmt: skip
    assert [float(r["decode_tok_s"]) for r in rows] == [20, 20, 35, 35, 25, 25]
    assert [float(r["prompt_tok_s"]) for r in rows][:2] == [64, 256]
    assert all(r["runs"] == "2" and r["decode_sd"] == "0.0" for r in rows)
    assert "# fastest decode: 35.0 tok/s with --threads 2 --batch-size 512" in out
    started = (tmp_path / "m.gguf.started").read_text().splitlines()
    assert len(started) == 6
    assert "--threads 2 --batch-size 512 --ubatch-size 128 --ctx-size 2048" in started[2]
    assert "--n-gpu-layers" not in started[0]  # the build's own default unless asked


def test_a_server_that_fails_is_reported_and_the_sweep_fails_without_rows(tmp_path, capsys):
    broken = tmp_path / "llama-server"
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    code = sweep.main(["--model", "m.gguf", "--server", str(broken), "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "threads 1 batch 2048 ubatch 512: llama-server exited with 3" in err
    assert "no setting could be measured" in err


def test_nonsense_arguments_are_refused():
    for argv in (
        ["--model", "m", "--threads", "0"],
        ["--model", "m", "--runs", "0"],
        ["--model", "m", "--tokens", "1"],
        ["--threads", "2"],
    ):
        with pytest.raises(SystemExit):
            sweep.parse(argv)
    command = sweep.server_command("s", "m", 1, 2, 3, 4, 5, 0)
    assert command[-2:] == ["--n-gpu-layers", "0"]
