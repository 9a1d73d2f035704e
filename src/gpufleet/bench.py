"""Endpoint benchmarks: every OpenAI-compatible endpoint the inventory implies (each engine
directly, and the gateway), N streamed runs of a fixed prompt per concurrency level, with
time to first token, decode speed and end-to-end latency as a mean with a 95 % confidence
interval, set against the speed claimed in the inventory and the planner's physical bound.

    gpufleet bench inventory/lab.py --runs 5 --concurrency 1 4 --csv bench/results.csv

Seed 001 asked for exactly this before anything goes to production: actual against claimed
throughput, with confidence intervals.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from gpufleet.catalogue import fleet_catalogue
from gpufleet.engines import EMBEDDING, engine_for, served_name
from gpufleet.models import HostSpec
from gpufleet.planner import plan_host
from gpufleet.routing import service_address
from gpufleet.sizing import placement_quant

PROMPT = "Write three sentences about the sea."
MAX_TOKENS = 48

# Two-sided 95 % critical values of Student's t for n - 1 degrees of freedom.
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}  # fmt: skip


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (Student's t)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    df = len(values) - 1
    t = T_95.get(df) or next((T_95[k] for k in sorted(T_95) if k >= df), 1.96)
    return mean, t * statistics.stdev(values) / len(values) ** 0.5


@dataclass(frozen=True)
class Endpoint:
    name: str
    host: str
    engine: str
    base_url: str
    model: str
    gpu: str
    quant: str
    claimed_tok_s: float | None
    bound_tok_s: float | None
    api_key: str | None = None
    verify: str | bool = True


def endpoints(
    specs: dict[str, HostSpec], gateway_key: str | None = None, ca_file: str | None = None
) -> list[Endpoint]:
    """Each placement at its engine, and at the gateway when a client key is given."""
    from gpufleet.secrets import read_secret
    from gpufleet.vault import fleet_vault

    catalogue = fleet_catalogue()
    found = []
    gateways = [s for s in specs.values() if "gateway" in s.groups]
    through_gateway: set[tuple[str, str]] = set()
    for spec in specs.values():
        plans = {(p.model, p.engine): p for p in plan_host(spec, catalogue, specs).placements}
        gpu = ", ".join(a.model for a in spec.hardware.accelerators) or "CPU"
        for placement in spec.models:
            planned = plans.get((placement.model, placement.engine))
            if planned is not None and planned.kind == EMBEDDING:
                continue  # a streamed completion measures chat models; embeddings have none
            bound = planned.bound_tok_s if planned else None
            engine = engine_for(spec, placement)
            key = None
            if engine.api_key_secret and engine.api_key_secret in spec.secrets:
                key = read_secret(spec.secrets[engine.api_key_secret], fleet_vault(specs))
            port = engine.port(spec)
            direct = Endpoint(
                name=f"{spec.name}/{placement.engine}",
                host=spec.name,
                engine=placement.engine,
                base_url=f"http://{service_address(spec)}:{port}/v1",
                model=served_name(placement),
                gpu=gpu,
                quant=placement_quant(placement),
                claimed_tok_s=placement.claimed_tok_s,
                bound_tok_s=bound,
                api_key=key,
            )
            found.append(direct)
            for gateway in gateways if gateway_key else []:
                if (gateway.name, direct.model) in through_gateway:
                    continue  # one alias, one route: the router picks the host
                through_gateway.add((gateway.name, direct.model))
                address = f"{service_address(gateway)}:{gateway.gateway.https_port}"
                found.append(
                    replace(
                        direct,
                        name=f"{gateway.name}/gateway",
                        base_url=f"https://{address}/v1",
                        api_key=gateway_key,
                        verify=ca_file or True,
                    )
                )
    return found


@dataclass
class Run:
    ttft_s: float
    tokens: int
    decode_tok_s: float
    latency_s: float


def one_run(endpoint: Endpoint, timeout: float = 300) -> Run:
    """One streamed completion; a content delta is counted as one token (llama.cpp, vLLM
    and Ollama each stream one token per delta)."""
    import requests

    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    body = {
        "model": endpoint.model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
        "stream": True,
    }
    for _ in range(30):
        started = time.monotonic()
        first = None
        tokens = 0
        with requests.post(
            f"{endpoint.base_url}/chat/completions",
            json=body,
            headers=headers,
            stream=True,
            timeout=timeout,
            verify=endpoint.verify,
        ) as reply:
            if reply.status_code == 429:  # the gateway's budget: wait as it says
                time.sleep(float(reply.headers.get("Retry-After", "2")) / 30)
                continue
            reply.raise_for_status()
            for line in reply.iter_lines():
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    tokens += 1
                    first = first or time.monotonic()
        ended = time.monotonic()
        if first is None:
            raise RuntimeError(f"{endpoint.name}: {endpoint.model} streamed no content")
        decode = (tokens - 1) / (ended - first) if tokens > 1 and ended > first else 0.0
        return Run(first - started, tokens, decode, ended - started)
    raise RuntimeError(f"{endpoint.name}: still rate-limited after 30 tries")


COLUMNS = [
    "endpoint", "host", "engine", "model", "gpu", "quant", "concurrency", "runs",
    "ttft_s", "ttft_ci95_s", "decode_tok_s", "decode_tok_s_ci95", "latency_s",
    "latency_ci95_s", "claimed_tok_s", "planner_bound_tok_s", "measured_over_claimed",
    "measured_over_bound",
]  # fmt: skip


RoundsDone = Callable[[str, int], None]
"""Told what was just done and how many rounds that accounts for: 1 after each round, the
rounds an endpoint will not run once it is given up (so a progress bar reaches its end)."""


def log_round(done: str, rounds: int) -> None:
    """Without a progress display: one line on stderr per round."""
    if rounds == 1:
        print(f"  {done}", file=sys.stderr)


def measure(
    endpoint: Endpoint, runs: int, concurrency: int, progress: RoundsDone = log_round
) -> dict[str, object]:
    """``runs`` rounds of ``concurrency`` parallel requests; one CSV row."""
    results: list[Run] = []
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for round_number in range(runs):
            results += list(pool.map(lambda _: one_run(endpoint), range(concurrency)))
            progress(
                f"{endpoint.name} {endpoint.model} x{concurrency}: round {round_number + 1}/{runs}",
                1,
            )
    ttft = mean_ci95([r.ttft_s for r in results])
    decode = mean_ci95([r.decode_tok_s for r in results])
    latency = mean_ci95([r.latency_s for r in results])
    claimed = endpoint.claimed_tok_s
    return {
        "endpoint": endpoint.name,
        "host": endpoint.host,
        "engine": endpoint.engine,
        "model": endpoint.model,
        "gpu": endpoint.gpu,
        "quant": endpoint.quant,
        "concurrency": concurrency,
        "runs": len(results),
        "ttft_s": round(ttft[0], 4),
        "ttft_ci95_s": round(ttft[1], 4),
        "decode_tok_s": round(decode[0], 2),
        "decode_tok_s_ci95": round(decode[1], 2),
        "latency_s": round(latency[0], 3),
        "latency_ci95_s": round(latency[1], 3),
        "claimed_tok_s": claimed if claimed is not None else "",
        "planner_bound_tok_s": round(endpoint.bound_tok_s, 1) if endpoint.bound_tok_s else "",
        "measured_over_claimed": round(decode[0] / claimed, 2) if claimed else "",
        # How close the engine comes to what the memory allows; one request's decode speed
        # (concurrency 1) is what the bound is about, several share the bandwidth.
        "measured_over_bound": (
            round(decode[0] / endpoint.bound_tok_s, 3) if endpoint.bound_tok_s else ""
        ),
    }


def reachable(endpoint: Endpoint) -> bool:
    import requests

    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    try:
        reply = requests.get(
            f"{endpoint.base_url}/models", headers=headers, timeout=5, verify=endpoint.verify
        )
    except requests.RequestException:
        return False
    return reply.status_code in (200, 429)


def bench(
    found: list[Endpoint],
    runs: int,
    levels: list[int],
    csv_path: Path,
    progress: RoundsDone = log_round,
) -> list[dict[str, object]]:
    """Measure every reachable endpoint at every level; write the CSV; return its rows.
    ``progress`` hears of every round (``len(found) * len(levels) * runs`` in all)."""
    rows = []
    for endpoint in found:
        counted = 0

        def counting(done: str, rounds: int) -> None:
            nonlocal counted
            counted += rounds
            progress(done, rounds)

        if not reachable(endpoint):
            print(f"  {endpoint.name} {endpoint.model}: not answering, skipped", file=sys.stderr)
        else:
            for level in levels:
                try:
                    rows.append(measure(endpoint, runs, level, counting))
                except (OSError, RuntimeError, ValueError) as error:  # requests' are OSErrors
                    print(f"  {endpoint.name} {endpoint.model}: failed ({error})", file=sys.stderr)
                    break
        left = len(levels) * runs - counted
        if left > 0:
            progress(f"{endpoint.name} {endpoint.model}: given up", left)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows
