"""Wait for an inference server, warm a model up with one short completion, record timing.

Runs on the target host (copied there by the deploy), with the Python standard library only:

    python3 warmup.py --base http://127.0.0.1:8080 --health /health --model S-LOC-FRE-x \\
        --record /var/lib/gpufleet/warmup/S-LOC-FRE-x.json --timeout 300

Exits non-zero with one line naming the server and model when it does not answer in time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def unit_state(unit: str) -> tuple[int, str]:
    """How often systemd has restarted ``unit`` after it exited, and its ActiveState."""
    shown = subprocess.run(
        ["systemctl", "show", unit, "-p", "NRestarts", "-p", "ActiveState"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    values = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    restarts = values.get("NRestarts", "0")
    return int(restarts) if restarts.isdigit() else 0, values.get("ActiveState", "")


def wait_for_health(url: str, deadline: float, unit: str | None = None) -> None:
    """Until ``url`` answers 200; given the server's ``unit``, only while the server has
    not exited (a build that crashes as it loads the model is not waited for)."""
    last = "no answer"
    restarts_before = unit_state(unit)[0] if unit else 0
    while time.monotonic() < deadline:
        if unit:
            restarts, active = unit_state(unit)
            if restarts > restarts_before or active == "failed":
                raise RuntimeError(
                    f"{unit} exited before it answered (restarted {restarts - restarts_before}"
                    f" times, now {active}; journalctl -u {unit} says why)"
                )
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as error:
            last = str(getattr(error, "reason", error))
        time.sleep(1)
    raise TimeoutError(f"{url} not healthy in time (last: {last})")


def complete(url: str, model: str, api_key: str | None, timeout: float) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello in five words."}],
        "max_tokens": 16,
        "temperature": 0,
        "stream": True,
    }
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    started = time.monotonic()
    first: float | None = None
    chunks: list[str] = []
    with urllib.request.urlopen(request, timeout=timeout) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            for choice in event.get("choices", []):
                text = (choice.get("delta") or {}).get("content")
                if text:
                    first = first or time.monotonic()
                    chunks.append(text)
    ended = time.monotonic()
    if not chunks or first is None:
        raise RuntimeError(f"{model} answered with no text")
    generating = max(ended - first, 1e-6)
    return {
        "model": model,
        "reply": "".join(chunks),
        "ttft_s": round(first - started, 3),
        "tokens": len(chunks),
        "tokens_per_s": round(len(chunks) / generating, 1) if len(chunks) > 1 else None,
    }


def embed(url: str, model: str, api_key: str | None, timeout: float) -> dict:
    """One embeddings call: an embedding model answers no completion."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    body = {"model": model, "input": "Say hello in five words."}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.load(response)
    vectors = [item.get("embedding") for item in answer.get("data", [])]
    if not vectors or not vectors[0]:
        raise RuntimeError(f"{model} answered with no embedding")
    return {
        "model": model,
        "dimensions": len(vectors[0]),
        "ttft_s": round(time.monotonic() - started, 3),
        "tokens": 0,
        "tokens_per_s": None,
    }


def write_record(path: str, result: dict) -> None:
    """Write beside the record, then rename over it: a link left at ``path`` is replaced,
    never followed (the folder is root's; this is the second line of defence)."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    descriptor, staged = tempfile.mkstemp(dir=folder, prefix=".record.")
    try:
        with os.fdopen(descriptor, "w") as record:
            json.dump(result, record, indent=2)
        os.chmod(staged, 0o644)
        os.replace(staged, path)
    except BaseException:
        os.unlink(staged)
        raise


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--health", required=True)
    parser.add_argument("--model", help="leave out to wait for health only")
    parser.add_argument("--record")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--api-key-env", help="environment variable holding the API key")
    parser.add_argument("--unit", help="the server's systemd unit: stop waiting if it exits")
    parser.add_argument(
        "--request",
        default="/v1/chat/completions",
        help="the OpenAI-compatible path to ask: a completion, or /v1/embeddings",
    )
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    try:
        wait_for_health(args.base + args.health, deadline, args.unit)
        if not args.model:
            print(f"{args.base}{args.health} is healthy")
            return 0
        ask = embed if args.request.endswith("/embeddings") else complete
        url = args.base + args.request
        result = ask(url, args.model, api_key, max(deadline - time.monotonic(), 10))
    except (TimeoutError, RuntimeError, urllib.error.URLError, OSError, ValueError) as error:
        print(f"warm-up failed: {args.model or 'health'} at {args.base}: {error}", file=sys.stderr)
        return 1
    result["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_record(args.record, result)
    if "dimensions" in result:
        print(f"{args.model}: {result['dimensions']} dimensions in {result['ttft_s']} s")
    else:
        print(
            f"{args.model}: first token {result['ttft_s']} s, {result['tokens']} tokens, "
            f"{result['tokens_per_s']} tok/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
