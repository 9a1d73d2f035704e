"""Pure checks: quantization from tags, weight sizes, what fits."""

import pytest

from gpufleet.catalogue import load_catalogue, model_family_size
from gpufleet.checks import check_host
from gpufleet.models import HostSpec, ModelPlacement
from gpufleet.sizing import placement_quant, weights_gb


@pytest.mark.parametrize(
    "tag, quant",
    [
        ("qwen2.5-coder:32b", "Q4_K_M"),
        ("qwen2.5-coder:32b-q4", "Q4_K_M"),
        ("llama3.1:70b-instruct-q8_0", "Q8_0"),
        ("llama3.1:8b-instruct-fp16", "FP16"),
        ("mistral:7b-instruct-q5_K_M", "Q5_K_M"),
        ("nomic-embed-text", "Q4_K_M"),
    ],
)
def test_quant_from_tag(tag, quant):
    assert placement_quant(ModelPlacement(model=tag)) == quant


def test_explicit_quant_wins():
    assert placement_quant(ModelPlacement(model="llama3.1:8b-q4", quant="fp8")) == "FP8"


def test_family_size():
    assert model_family_size("qwen2.5-coder:32b-instruct-q4_K_M") == "qwen2.5-coder:32b"
    assert load_catalogue().model("mixtral:8x22b-q4").params_b > 140


def test_weight_sizes():
    assert weights_gb(70, "Q4_K_M") == pytest.approx(42.4, abs=0.1)
    assert weights_gb(8, "FP16") == 16


def host(**data) -> HostSpec:
    return HostSpec.model_validate({"name": "h", "hardware": {"cores": 8, "ram_gb": 32}, **data})


def test_a_model_that_fits_raises_nothing():
    assert check_host(host(models=[{"model": "llama3.2:3b"}]), load_catalogue()) == []


def test_memory_boundary_is_vram_plus_ram_minus_reserve():
    # 32.8B at Q4_K_M is 19.9 GB of weights, 20.7 GB with a 2k-token KV cache and the
    # runtime: fits 8 + 16 - 2 = 22, not 4 + 16 - 2 = 18.
    gpu = {"kind": "nvidia", "model": "RTX 2080 Super"}
    small = {"kind": "nvidia", "model": "GTX 1650"}
    fits = host(
        hardware={"cores": 4, "ram_gb": 16, "accelerators": [gpu]},
        models=[{"model": "qwen2.5-coder:32b"}],
    )
    too_big = host(
        hardware={"cores": 4, "ram_gb": 16, "accelerators": [small]},
        models=[{"model": "qwen2.5-coder:32b"}],
    )
    assert check_host(fits, load_catalogue()) == []
    [problem] = check_host(too_big, load_catalogue())
    assert problem.field == "models[0].model"
    assert "needs 20.7 GB (weights 19.9 + KV cache 0.5 + runtime 0.3)" in problem.message
    assert "4 GB VRAM + 14.0 GB RAM free" in problem.message


def test_shared_gpu_services_do_not_count_as_whole_gpus():
    spec = host(
        hardware={
            "cores": 4,
            "ram_gb": 16,
            "accelerators": [{"kind": "nvidia", "model": "RTX 3080"}],
        },
        services=[{"name": "a", "gpus": 1}, {"name": "b", "vram_gb": 4}],
    )
    assert check_host(spec, load_catalogue()) == []
