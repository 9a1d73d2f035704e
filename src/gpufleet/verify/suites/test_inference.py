"""Inference servers: each engine with a placement runs, answers and serves its models."""

from gpufleet import engines
from gpufleet.verify import applies, assert_running, http_get


def applies_to(spec):
    return bool(spec.models) or spec.triton.enabled


def _serves(engine):
    return lambda spec: bool(engines.placements(spec, engine))


@applies(_serves("llama.cpp"))
def test_llama_server_runs(target):
    assert_running(target, "llama-server")


@applies(_serves("llama.cpp"))
def test_llama_server_serves_its_model(target):
    base = f"http://{target.address}:{target.spec.llamacpp_port}"
    assert http_get(f"{base}/health").json() == {"status": "ok"}
    served = {m["id"] for m in http_get(f"{base}/v1/models").json()["data"]}
    for placement in engines.placements(target.spec, "llama.cpp"):
        assert engines.served_name(placement) in served, f"served: {sorted(served)}"


@applies(_serves("ollama"))
def test_ollama_runs(target):
    assert_running(target, "ollama")


@applies(_serves("ollama"))
def test_ollama_has_every_placed_model(target):
    tags = http_get(f"http://{target.address}:{target.spec.ollama_port}/api/tags").json()
    present = {m["name"] for m in tags["models"]}
    for placement in engines.placements(target.spec, "ollama"):
        name = engines.served_name(placement)
        assert name in present or f"{name}:latest" in present, f"{name} not in {sorted(present)}"


@applies(_serves("vllm"))
def test_vllm_runs(target):
    assert_running(target, "vllm")


@applies(_serves("vllm"))
def test_vllm_is_healthy(target):
    assert http_get(f"http://{target.address}:{target.spec.vllm_port}/health").status_code == 200


@applies(lambda spec: spec.triton.enabled)
def test_triton_is_ready_with_every_model(target):
    assert_running(target, "triton")
    base = f"http://{target.address}:{target.spec.triton.http_port}/v2"
    assert http_get(f"{base}/health/ready").status_code == 200, "Triton is not ready"
    for model in target.spec.triton.models:
        ready = http_get(f"{base}/models/{model.name}/ready").status_code
        assert ready == 200, f"{model.name} is not loaded"
