"""Inference servers: each engine with a placement runs, answers and serves its models."""

from gpufleet.engines import ENGINES, served_name
from gpufleet.engines.llamacpp import LLAMACPP
from gpufleet.engines.ollama import OLLAMA
from gpufleet.engines.triton import TRITON
from gpufleet.verify import applies, assert_running, http_get


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
    served = {m["id"] for m in http_get(f"{base}/v1/models").json()["data"]}
    for placement in LLAMACPP.placements(target.spec):
        assert served_name(placement) in served, f"served: {sorted(served)}"


@applies(lambda spec: bool(OLLAMA.placements(spec)))
def test_ollama_has_every_placed_model(target):
    tags = http_get(f"http://{target.address}:{OLLAMA.port(target.spec)}/api/tags").json()
    present = {m["name"] for m in tags["models"]}
    for placement in OLLAMA.placements(target.spec):
        name = served_name(placement)
        assert name in present or f"{name}:latest" in present, f"{name} not in {sorted(present)}"


@applies(TRITON.runs_on)
def test_triton_is_ready_with_every_model(target):
    base = f"http://{target.address}:{TRITON.port(target.spec)}/v2"
    assert http_get(f"{base}/health/ready").status_code == 200, "Triton is not ready"
    for model in target.spec.triton.models:
        ready = http_get(f"{base}/models/{model.name}/ready").status_code
        assert ready == 200, f"{model.name} is not loaded"
