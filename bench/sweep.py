"""Decode speed of llama-server over a small sweep of its threads and batch sizes, on the host
that serves the model: which flags bring it closest to the memory-bandwidth bound.

Standard library only, so it runs on any gpufleet host as it is, e.g. over SSH on a lab host
(stdin is this file; the arguments follow the ``-``)::

    ssh root@10.200.0.11 python3 - --model /var/lib/llama.cpp/models/XS-LOC-FRE-gemma3-270m.gguf \\
        --threads 1 2 4 --batch-size 2048 --ubatch-size 512 < bench/sweep.py

For each combination it starts its own llama-server on a free loopback port (the host's
service keeps running, idle), sends one warm-up request and ``--runs`` completions of
``--tokens`` tokens, reads llama-server's own timings (``predicted_per_second``: decode,
``prompt_per_second``: prompt processing, which is where the batch sizes act), stops the
server, and prints one CSV row. Decode generates one token per step, so ``--batch-size`` and
``--ubatch-size`` (how many prompt tokens go through at once) barely touch it; threads do.
Each run is capped (``--limit-s``), so a sweep of a handful of settings stays well under two
minutes on a small model.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence

PROMPT = (
    "The lighthouse keeper wrote in his log every evening: the weather, the ships that "
    "passed, the state of the lamp and the oil left. "
) * 8
"""About 250 tokens: long enough that prompt processing shows what the batch sizes do."""
FIELDS = (
    "threads", "batch_size", "ubatch_size", "runs", "decode_tok_s", "decode_sd",
    "prompt_tok_s", "load_s",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_command(
    server: str, model: str, port: int, threads: int, batch: int, ubatch: int, context: int,
    gpu_layers: int | None,
) -> list[str]:  # fmt: skip
    command = [
        server, "--model", model, "--host", "127.0.0.1", "--port", str(port),
        "--threads", str(threads), "--batch-size", str(batch), "--ubatch-size", str(ubatch),
        "--ctx-size", str(context), "--parallel", "1",
    ]  # fmt: skip
    if gpu_layers is not None:
        command += ["--n-gpu-layers", str(gpu_layers)]
    return command


def post_json(url: str, body: dict[str, object], timeout: float) -> dict[str, object]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return dict(json.load(reply))


def wait_healthy(base: str, server: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"llama-server exited with {server.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError("llama-server did not answer /health in time")


def timings(base: str, tokens: int, timeout: float) -> tuple[float, float]:
    """One completion: llama-server's decode and prompt speeds (tokens/s) as it timed them."""
    reply = post_json(
        f"{base}/completion",
        {
            "prompt": PROMPT,
            "n_predict": tokens,
            "cache_prompt": False,  # the prompt is processed every time: its speed is measured
            "ignore_eos": True,  # always the asked number of tokens
            "temperature": 0,
        },
        timeout,
    )
    measured = reply.get("timings")
    if not isinstance(measured, dict):
        raise RuntimeError(f"no timings in llama-server's reply: {str(reply)[:200]}")
    return float(measured["predicted_per_second"]), float(measured["prompt_per_second"])


def one_setting(
    args: argparse.Namespace, threads: int, batch: int, ubatch: int
) -> dict[str, object]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = server_command(
        args.server, args.model, port, threads, batch, ubatch, args.context, args.gpu_layers
    )
    started = time.monotonic()
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as server:
        try:
            wait_healthy(base, server, started + args.limit_s)
            loaded = time.monotonic() - started
            timings(base, 4, args.limit_s)  # warm-up: first-touch of the weights
            runs = [timings(base, args.tokens, args.limit_s) for _ in range(args.runs)]
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
    decode = [run[0] for run in runs]
    return {
        "threads": threads,
        "batch_size": batch,
        "ubatch_size": ubatch,
        "runs": len(runs),
        "decode_tok_s": round(statistics.fmean(decode), 2),
        "decode_sd": round(statistics.stdev(decode), 2) if len(decode) > 1 else "",
        "prompt_tok_s": round(statistics.fmean(run[1] for run in runs), 1),
        "load_s": round(loaded, 2),
    }


def settings(args: argparse.Namespace) -> Iterator[tuple[int, int, int]]:
    """Every (threads, batch, ubatch) asked; a micro-batch larger than its batch is skipped
    (llama.cpp would clamp it to the batch: the same setting twice)."""
    for threads, batch, ubatch in itertools.product(
        args.threads, args.batch_size, args.ubatch_size
    ):
        if ubatch <= batch:
            yield threads, batch, ubatch


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the GGUF file")
    parser.add_argument("--server", default="/usr/local/bin/llama-server")
    parser.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count() or 1])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[2048])
    parser.add_argument("--ubatch-size", type=int, nargs="+", default=[512])
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--gpu-layers", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per run")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per setting")
    parser.add_argument(
        "--limit-s", type=float, default=60, help="give a setting up after this long"
    )
    args = parser.parse_args(argv)
    for name in ("threads", "batch_size", "ubatch_size"):
        if min(getattr(args, name)) < 1:
            parser.error(f"--{name.replace('_', '-')} takes numbers of at least 1")
    if args.runs < 1 or args.tokens < 2:
        parser.error("--runs must be at least 1 and --tokens at least 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    writer = csv.DictWriter(sys.stdout, fieldnames=FIELDS)
    writer.writeheader()
    rows = []
    for threads, batch, ubatch in settings(args):
        try:
            row = one_setting(args, threads, batch, ubatch)
        except (RuntimeError, OSError, KeyError, ValueError) as error:
            print(f"# threads {threads} batch {batch} ubatch {ubatch}: {error}", file=sys.stderr)
            continue
        rows.append(row)
        writer.writerow(row)
        sys.stdout.flush()
    if not rows:
        print("# no setting could be measured", file=sys.stderr)
        return 1
    best = max(rows, key=lambda row: float(str(row["decode_tok_s"])))
    print(
        f"# fastest decode: {best['decode_tok_s']} tok/s with --threads {best['threads']} "
        f"--batch-size {best['batch_size']} --ubatch-size {best['ubatch_size']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
