"""Inference servers: each engine with a placement runs, answers and serves its models."""

from gpufleet.engines import ENGINES, served_name
from gpufleet.engines.llamacpp import LLAMACPP
from gpufleet.engines.ollama import OLLAMA
from gpufleet.engines.ollama_macos import OLLAMA_MACOS
from gpufleet.engines.triton import TRITON
from gpufleet.facts.ollama import OllamaLoaded
from gpufleet.serving import placement_runs, rpc_server_run
from gpufleet.verify import (
    applies,
    applies_in_fleet,
    assert_running,
    http_get,
    loaded_placements,
    loaded_report,
)


def applies_to(spec):
    return any(engine.runs_on(spec) for engine in ENGINES)


def _runs_and_answers(engine):
    """A check per engine of the registry: its service runs and answers its health path."""

    def check(target):
        assert_running(target, engine.service)
        url = engine.probe_url(target.spec, target.address)
        assert http_get(url).status_code == 200, f"{engine.name} does not answer {url}"

    key = engine.__class__.__module__.rsplit(".", 1)[-1]
    check.__name__ = f"test_{key}_runs_and_answers"
    return applies(engine.runs_on)(check)


for _engine in ENGINES:
    _check = _runs_and_answers(_engine)
    globals()[_check.__name__] = _check


@applies(LLAMACPP.runs_on)
def test_llama_server_serves_its_model(target):
    base = f"http://{target.address}:{LLAMACPP.port(target.spec)}"
    assert http_get(f"{base}/health").json() == {"status": "ok"}
    models = http_get(f"{base}/v1/models", headers=target.engine_headers(LLAMACPP))
    served = {m["id"] for m in models.json()["data"]}
    for placement in LLAMACPP.placements(target.spec):
        assert served_name(placement) in served, f"served: {sorted(served)}"


@applies_in_fleet(lambda spec, fleet: rpc_server_run(spec, fleet) is not None)
def test_ggml_rpc_server_holds_its_layers_for_its_serving_host(target):
    """A host that holds layers of another host's model runs ggml-rpc-server where the plan
    says, and that host's llama-server holds its connection to it."""
    run = rpc_server_run(target.spec, target.fleet)
    assert run is not None
    assert_running(target, "ggml-rpc-server")
    port = target.spec.llamacpp.rpc_port
    assert target.host.socket(f"tcp://{target.spec.llamacpp.rpc_address}:{port}").is_listening
    argv = target.host.check_output("tr '\\0' ' ' < /proc/$(pgrep -o -x ggml-rpc-server)/cmdline")
    assert argv.split() == list(run.command), f"runs: {argv}"
    peers = target.host.check_output("ss -Htn state established | awk '{print $4}'").split()
    for part in run.parts:
        head = target.fleet[part.head]
        address = str(head.lan_address or head.tailscale_address)
        assert any(peer.rsplit(":", 1)[0] == address for peer in peers), (
            f"{part.head} holds no connection to this host's ggml-rpc-server"
        )


@applies(lambda spec: bool(OLLAMA.placements(spec)))
def test_ollama_has_every_placed_model(target):
    tags = http_get(f"http://{target.address}:{OLLAMA.port(target.spec)}/api/tags").json()
    present = {m["name"] for m in tags["models"]}
    for placement in OLLAMA.placements(target.spec):
        name = served_name(placement)
        assert name in present or f"{name}:latest" in present, f"{name} not in {sorted(present)}"


def _ollama(spec):
    return next((e for e in (OLLAMA, OLLAMA_MACOS) if e.runs_on(spec)), None)


@applies(lambda spec: _ollama(spec) is not None)
def test_loaded_ollama_models_sit_where_the_plan_puts_them(target, record_property):
    """What Ollama has loaded now, reported; a placed model it has loaded must sit on the GPU
    as the plan says. Nothing loaded (Ollama unloads idle models) is no failure."""
    engine = _ollama(target.spec)
    fact = OllamaLoaded()
    reply = target.host.run(fact.command(address=f"127.0.0.1:{engine.port(target.spec)}"))
    loaded = fact.process(reply.stdout.splitlines())
    record_property("report", loaded_report(loaded))
    wanted = {
        served_name(run.placement): run.decision.where
        for run in placement_runs(target.spec, engine)
    }
    problems = loaded_placements(wanted, loaded)
    assert not problems, "; ".join(problems)


@applies(TRITON.runs_on)
def test_triton_is_ready_with_every_model(target):
    base = f"http://{target.address}:{TRITON.port(target.spec)}/v2"
    assert http_get(f"{base}/health/ready").status_code == 200, "Triton is not ready"
    for model in target.spec.triton.models:
        ready = http_get(f"{base}/models/{model.name}/ready").status_code
        assert ready == 200, f"{model.name} is not loaded"
