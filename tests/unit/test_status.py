"""``gpufleet status`` against real HTTP servers on loopback that answer as Ollama, llama-server,
vLLM, LiteLLM and node exporter do (bodies as those servers send them), one address per host
(127.0.0.2, .3, .4): what is up, what is loaded, what the router routes, what is down."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# pyinfra's CLI (which reads the inventory) patches threads and sockets with gevent when it is
# first imported; the servers below must be made after that, as the command itself runs.
import pyinfra_cli  # noqa: F401  # isort: skip
import pytest
from click.testing import CliRunner
from rich.console import Console

from gpufleet.engines import LLAMACPP
from gpufleet.status import (
    EngineProbe,
    FleetStatus,
    collect,
    json_schema,
    metric_values,
    probe_engine,
    render,
    status_adapter,
    status_command,
)

KEY = "sk-status-test-0123456789"

OLLAMA_PS = {
    "models": [
        {
            "name": "XS-LOC-FRE-gemma3-270m-ollama:latest",
            "model": "XS-LOC-FRE-gemma3-270m-ollama:latest",
            "size": 1_019_215_872,
            "digest": "3d2b7d5ab9f2e1c27e49f1c7d36f5b0a9c2a7d8cbd8e5a7f3b4d6c9e0a1b2c3d",
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "gemma3",
                "families": ["gemma3"],
                "parameter_size": "268.10M",
                "quantization_level": "Q8_0",
            },
            "expires_at": "2026-05-01T12:04:31.118405183Z",
            "size_vram": 611_529_523,
            "context_length": 2048,
        },
        {
            # Pulled by hand on the host: loaded, but no placement of the inventory's.
            "name": "qwen3:0.6b",
            "model": "qwen3:0.6b",
            "size": 1_523_000_000,
            "digest": "7df6b6e09427a769808717c0a93cadc4ae99ed4eb8bf5ca557c90846becea435",
            "details": {"format": "gguf", "family": "qwen3", "quantization_level": "Q4_K_M"},
            "expires_at": "2026-05-01T12:03:10.000000000Z",
            "size_vram": 0,
            "context_length": 4096,
        },
    ]
}

LLAMA_MODELS = {
    "models": [
        {
            "name": "XS-LOC-FRE-gemma3-270m",
            "model": "XS-LOC-FRE-gemma3-270m",
            "modified_at": "",
            "size": "",
            "digest": "",
            "type": "model",
            "description": "",
            "tags": [""],
            "capabilities": ["completion"],
            "parameters": "",
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "",
                "families": [""],
                "parameter_size": "",
                "quantization_level": "",
            },
        }
    ],
    "object": "list",
    "data": [
        {
            "id": "XS-LOC-FRE-gemma3-270m",
            "object": "model",
            "created": 1777636800,
            "owned_by": "llamacpp",
            "meta": {
                "vocab_type": 1,
                "n_vocab": 262144,
                "n_ctx_train": 32768,
                "n_embd": 640,
                "n_params": 268098176,
                "size": 291_527_296,
            },
        }
    ],
}

LLAMA_PROPS = {
    "default_generation_settings": {"id": 0, "n_ctx": 2048, "speculative": False},
    "total_slots": 1,
    "model_path": "/var/lib/llama.cpp/models/XS-LOC-FRE-gemma3-270m.gguf",
    "modalities": {"vision": False, "audio": False},
    "build_info": "b11434-0000000",
}

VLLM_MODELS = {
    "object": "list",
    "data": [
        {
            "id": "XS-LOC-FRE-gemma3-270m-vllm",
            "object": "model",
            "created": 1777636800,
            "owned_by": "vllm",
            "root": "unsloth/gemma-3-270m-it",
            "parent": None,
            "max_model_len": 4096,
            "permission": [
                {
                    "id": "modelperm-5b2f0c1e8d9a4b3c",
                    "object": "model_permission",
                    "created": 1777636800,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
    ],
}

ROUTER_MODELS = {
    "data": [
        {"id": "XS-LOC-FRE-gemma3-270m", "object": "model", "created": 1677610602,
         "owned_by": "openai"},
        {"id": "XS-LOC-FRE-gemma3-270m-ollama", "object": "model", "created": 1677610602,
         "owned_by": "openai"},
        {"id": "XS-LOC-FRE-gemma3-270m-vllm", "object": "model", "created": 1677610602,
         "owned_by": "openai"},
    ],
    "object": "list",
}  # fmt: skip


def _deployment(group: str, host: str, engine: str, base: str) -> dict:
    return {
        "model_name": group,
        "litellm_params": {"model": f"openai/{group}", "api_base": base},
        "model_info": {
            "id": f"{host}/{engine}/{group}",
            "db_model": False,
            "host": host,
            "engine": engine,
            "mode": "chat",
            "key": f"openai/{group}",
            "max_tokens": None,
            "litellm_provider": "openai",
        },
    }


NODE_METRICS = """\
# HELP node_memory_MemAvailable_bytes Memory information field MemAvailable_bytes.
# TYPE node_memory_MemAvailable_bytes gauge
node_memory_MemAvailable_bytes 1.2079595520e+10
# HELP node_memory_MemFree_bytes Memory information field MemFree_bytes.
# TYPE node_memory_MemFree_bytes gauge
node_memory_MemFree_bytes 9.87654144e+09
# HELP node_memory_MemTotal_bytes Memory information field MemTotal_bytes.
# TYPE node_memory_MemTotal_bytes gauge
node_memory_MemTotal_bytes 1.6777216e+10
node_memory_MemTotal_bytes_extra{x="y"} 1
"""


@dataclass
class Recorded:
    """A real HTTP server on one loopback address answering recorded bodies by path; with a
    key, every other request gets llama-server's 401."""

    address: str
    routes: dict[str, object]
    key: str | None = None
    seen: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        recorded = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                auth = self.headers.get("Authorization", "")
                recorded.seen.append((path, auth))
                if recorded.key and auth != f"Bearer {recorded.key}":
                    return self._send(401, {"error": {"code": 401, "message": "Invalid API Key",
                                                      "type": "authentication_error"}})  # fmt: skip
                if path not in recorded.routes:
                    return self._send(404, {"error": "not found"})
                self._send(200, recorded.routes[path])

            def _send(self, status: int, body: object) -> None:
                text = body if isinstance(body, str) else json.dumps(body)
                self.send_response(status)
                kind = "text/plain; version=0.0.4" if isinstance(body, str) else "application/json"
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(text.encode())))
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((self.address, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port(address: str) -> int:
    """A port nothing listens on (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


@dataclass
class Fleet:
    inventory: Path
    servers: dict[str, Recorded]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    ollama = Recorded("127.0.0.2", {"/api/ps": OLLAMA_PS})
    llama = Recorded("127.0.0.2", {"/v1/models": LLAMA_MODELS, "/props": LLAMA_PROPS}, KEY)
    node = Recorded("127.0.0.2", {"/metrics": NODE_METRICS})
    vllm = Recorded("127.0.0.3", {"/v1/models": VLLM_MODELS}, KEY)
    router = Recorded("127.0.0.4", {"/v1/models": ROUTER_MODELS}, KEY)
    router.routes["/model/info"] = {
        "data": [
            _deployment("XS-LOC-FRE-gemma3-270m", "gpu-a", "llama.cpp",
                        f"http://127.0.0.2:{llama.port}/v1"),
            _deployment("XS-LOC-FRE-gemma3-270m-ollama", "gpu-a", "ollama",
                        f"http://127.0.0.2:{ollama.port}"),
            _deployment("XS-LOC-FRE-gemma3-270m-vllm", "gpu-b", "vllm",
                        f"http://127.0.0.3:{vllm.port}/v1"),
        ]
    }  # fmt: skip
    down = free_port("127.0.0.3")
    reference = f"file:{key_file}"
    admin = {"firewall": {"admin_sources": ["127.0.0.1/32"]}}
    gemma = {"model": "gemma3:270m", "engine": "llama.cpp", "context": 2048, "sha256": "a" * 64,
             "source": "https://example.org/gemma-3-270m-it-Q8_0.gguf"}  # fmt: skip
    hosts = {
        "gpu_nodes": [
            ("gpu-a", {
                "ssh_hostname": "127.0.0.2", "lan_address": "127.0.0.2", **admin,
                "hardware": {"cores": 4, "ram_gb": 16},
                "secrets": {"llamacpp_api_key": reference},
                "llamacpp": {"port": llama.port}, "ollama": {"port": ollama.port},
                "node_exporter_port": node.port,
                "models": [
                    {**gemma, "alias": "XS-LOC-FRE-gemma3-270m"},
                    {"model": "gemma3:270m", "alias": "XS-LOC-FRE-gemma3-270m-ollama"},
                ],
            }),
            # No admin source here: its node exporter stays on loopback, out of reach.
            ("gpu-b", {
                "ssh_hostname": "127.0.0.3", "lan_address": "127.0.0.3",
                "hardware": {"cores": 8, "ram_gb": 32,
                             "accelerators": [{"kind": "nvidia", "model": "RTX 3090"}]},
                "nvidia_driver": {"version": "535.261.03"},
                "secrets": {"vllm_api_key": reference, "llamacpp_api_key": reference},
                "vllm": {"port": vllm.port, "install": "present"},
                "llamacpp": {"port": down, "gpu_layers": 0},
                "models": [
                    {"model": "gemma3:270m", "engine": "vllm", "quant": "BF16", "context": 4096,
                     "source": "unsloth/gemma-3-270m-it", "alias": "XS-LOC-FRE-gemma3-270m-vllm"},
                    {**gemma, "alias": "XS-LOC-FRE-gemma3-270m-b"},
                ],
            }),
        ],
        "router": [
            ("orch", {
                "ssh_hostname": "127.0.0.4", "lan_address": "127.0.0.4", **admin,
                "hardware": {"cores": 4, "ram_gb": 16},
                "litellm": {"port": router.port, "master_key": reference},
            }),
        ],
    }  # fmt: skip
    inventory = tmp_path / "fleet.py"
    inventory.write_text("".join(f"{group} = {hosts[group]!r}\n" for group in hosts))
    servers = {"ollama": ollama, "llama": llama, "node": node, "vllm": vllm, "router": router}
    yield Fleet(inventory, servers)
    for server in servers.values():
        server.close()


def _run(fleet: Fleet, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(status_command, [str(fleet.inventory), *args])
    return result.exit_code, result.stdout, result.stderr


def test_json_lists_every_engine_with_what_it_has_loaded(fleet):
    code, out, _ = _run(fleet, "--json", "--timeout", "2")
    status = status_adapter().validate_json(out)  # the output is the documented schema
    assert isinstance(status, FleetStatus)
    engines = {(h.host, e.engine): e for h in status.hosts for e in h.engines}
    assert set(engines) == {
        ("gpu-a", "ollama"),
        ("gpu-a", "llama.cpp"),
        ("gpu-b", "llama.cpp"),
        ("gpu-b", "vllm"),
    }

    llama = engines["gpu-a", "llama.cpp"]
    assert llama.state == "up"
    assert [(m.name, m.size_gb, m.context, m.planned) for m in llama.loaded] == [
        ("XS-LOC-FRE-gemma3-270m", 0.29, 2048, True)
    ]
    assert llama.planned_gb > 0.29  # weights + KV cache + runtime, as planned
    assert llama.routed == ["XS-LOC-FRE-gemma3-270m"]

    ollama = engines["gpu-a", "ollama"]
    assert ollama.state == "up"
    by_name = {m.name: m for m in ollama.loaded}
    loaded = by_name["XS-LOC-FRE-gemma3-270m-ollama:latest"]
    assert (loaded.size_gb, loaded.vram_gb, loaded.context, loaded.planned) == (
        1.02, 0.61, 2048, True,
    )  # fmt: skip
    assert by_name["qwen3:0.6b"].planned is False

    vllm = engines["gpu-b", "vllm"]
    assert (vllm.state, [m.context for m in vllm.loaded]) == ("up", [4096])
    assert vllm.routed == ["XS-LOC-FRE-gemma3-270m-vllm"]

    # Nothing listens on gpu-b's llama-server port: down, with the reason, no traceback.
    down = engines["gpu-b", "llama.cpp"]
    assert (down.state, down.detail, down.loaded) == ("down", "connection refused", [])
    assert code == 3  # an engine that should answer does not

    hosts = {h.host: h for h in status.hosts}
    assert (hosts["gpu-a"].memory.ram_total_gb, hosts["gpu-a"].memory.ram_used_gb) == (
        16.78, 4.7,
    )  # fmt: skip
    assert hosts["gpu-b"].memory.ram_total_gb is None
    assert "loopback" in hosts["gpu-b"].memory.source
    assert hosts["gpu-b"].vram_gb == 24  # the plan's figure for an RTX 3090

    [router] = status.routers
    assert router.state == "up"
    assert router.missing == ["XS-LOC-FRE-gemma3-270m-b"]  # placed, not listed by the router


def test_the_keys_are_sent_where_the_engine_asks_for_one_and_never_shown(fleet):
    _, out, _ = _run(fleet, "--json")
    assert KEY not in out
    llama, ollama = fleet.servers["llama"], fleet.servers["ollama"]
    assert ("/v1/models", f"Bearer {KEY}") in llama.seen
    assert ("/props", f"Bearer {KEY}") in llama.seen
    assert all(auth == "" for _, auth in ollama.seen)  # Ollama asks for no key
    assert ("/model/info", f"Bearer {KEY}") in fleet.servers["router"].seen


def test_a_refused_key_shows_as_refused(fleet):
    fleet.servers["vllm"].key = "another-key"
    _, out, _ = _run(fleet, "--json", "--limit", "gpu-b")
    status = status_adapter().validate_json(out)
    assert [h.host for h in status.hosts] == ["gpu-b"]
    vllm = next(e for e in status.hosts[0].engines if e.engine == "vllm")
    assert vllm.state == "refused" and "401" in vllm.detail


def test_limit_takes_groups_and_globs_and_warns_of_a_pattern_matching_nothing(fleet):
    code, out, err = _run(fleet, "--json", "--limit", "gpu_nodes", "--limit", "nothing-*")
    assert [h.host for h in status_adapter().validate_json(out).hosts] == ["gpu-a", "gpu-b"]
    assert "No host matches found for --limit pattern: nothing-*" in err
    code, out, err = _run(fleet, "--limit", "nothing-*")
    assert code == 1 and "no host of" in err and "Traceback" not in err


def test_the_table_shows_state_models_memory_and_routes(fleet):
    specs_status = collect(
        str(fleet.inventory), _specs(fleet), ["gpu-a", "gpu-b"], lambda ref: KEY, timeout=2
    )
    console = Console(record=True, width=220, color_system=None)
    render(specs_status, console)
    text = console.export_text()
    assert "connection refused" in text
    assert "XS-LOC-FRE-gemma3-270m-ollama:latest (1.0 GB, 60% GPU; ctx 2048)" in text
    assert "qwen3:0.6b (not planned)" in text
    assert "1.0 GB loaded" not in text and "2.5 GB loaded" in text  # both Ollama models
    assert "4.7 / 16.8" in text  # RAM in use now, from node exporter
    assert "router orch" in text


def _specs(fleet: Fleet):
    from gpufleet.inventory import validate_file

    return validate_file(fleet.inventory)


def test_a_service_that_never_answers_is_down_within_the_timeout():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections are accepted by the kernel and never answered
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        state, detail, loaded = probe_engine(EngineProbe(LLAMACPP, url, {}, ["m"]), 0.5)
        assert time.monotonic() - started < 3
    finally:
        silent.close()
    assert (state, detail, loaded) == ("down", "no answer within 0.5 s", [])


def test_an_engine_still_loading_its_model_is_shown_as_loading():
    # llama-server answers 503 with this body while it loads the model.
    body = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
    server = _Fixed("127.0.0.1", 503, body)
    try:
        state, detail, _ = probe_engine(
            EngineProbe(LLAMACPP, f"http://127.0.0.1:{server.port}", {}, []), 2
        )
    finally:
        server.close()
    assert (state, detail) == ("loading", "model loading")


class _Fixed:
    """A server answering every GET with one status and body."""

    def __init__(self, address: str, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((address, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_metric_values_reads_prometheus_text_and_skips_longer_names():
    assert metric_values(NODE_METRICS, "node_memory_MemTotal_bytes") == [1.6777216e10]
    dcgm = 'DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-1"} 6120\nDCGM_FI_DEV_FB_USED{gpu="1"} 10\n'
    assert metric_values(dcgm, "DCGM_FI_DEV_FB_USED") == [6120.0, 10.0]


def test_the_json_schema_describes_what_json_prints(fleet):
    code, out, _ = _run(fleet, "--schema")
    schema = json.loads(out)
    assert code == 0 and schema == json_schema()
    engine = schema["$defs"]["EngineStatus"]
    assert set(engine["properties"]["state"]["enum"]) == {
        "up", "down", "loading", "refused", "local-only",
    }  # fmt: skip
    # A document that breaks the schema is refused by the same model.
    document = json.loads(_run(fleet, "--json")[1])
    document["hosts"][0]["engines"][0]["state"] = "sleeping"
    with pytest.raises(ValueError):
        status_adapter().validate_python(document)
