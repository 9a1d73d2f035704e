"""Hardware swap: differences and placement moves, from facts (pure logic)."""

from gpufleet.catalogue import load_catalogue
from gpufleet.models import HostSpec
from gpufleet.planner import plan_host
from gpufleet.rebuild import detected_hardware, hardware_differences, placement_moves, replanned

CATALOGUE = load_catalogue()
RTX_3080 = {"slot": "0000:01:00.0", "class_code": "0300", "device_id": "2206", "name": "GA102"}
RTX_4090 = {"slot": "0000:01:00.0", "class_code": "0300", "device_id": "2684", "name": "AD102"}


def thanos(**hardware):
    return HostSpec(
        name="thanos",
        groups=("gpu_nodes",),
        hardware={
            "cores": 10,
            "ram_gb": 32,
            "accelerators": [{"kind": "nvidia", "model": "RTX 3080", "vram_gb": 10}],
            **hardware,
        },
        models=[{"model": "qwen2.5:32b"}, {"model": "llama3.2:3b"}],
    )


def test_same_hardware_no_difference_and_memtotal_below_installed_is_equal():
    spec = thanos()
    detected, unknown = detected_hardware(spec.hardware, [RTX_3080], 10, 31.2, CATALOGUE)
    assert unknown == []
    assert hardware_differences(spec.hardware, detected) == []


def test_a_swapped_card_moves_placements_onto_the_gpu():
    spec = thanos()
    detected, _ = detected_hardware(spec.hardware, [RTX_4090], 10, 33.6, CATALOGUE)
    assert hardware_differences(spec.hardware, detected) == [
        "hardware.accelerators: inventory RTX 3080 x1, host RTX 4090 x1"
    ]
    moves = placement_moves(
        plan_host(spec, CATALOGUE), plan_host(replanned(spec, detected), CATALOGUE)
    )
    assert moves[0].startswith("qwen2.5:32b (ollama): partial (")
    assert "-> gpu (64/64 layers on GPU)" in moves[0]
    assert any(m.startswith("llama3.2:3b (ollama): gpu") for m in moves)  # faster card


def test_a_dead_card_and_an_unknown_card():
    spec = thanos()
    unknown_card = {**RTX_4090, "device_id": "ffff", "name": "Mystery"}
    detected, unknown = detected_hardware(spec.hardware, [unknown_card], 10, 32, CATALOGUE)
    assert unknown == ["Mystery [10de:ffff] at 0000:01:00.0"]
    assert hardware_differences(spec.hardware, detected) == [
        "hardware.accelerators: inventory RTX 3080 x1, host no NVIDIA GPU"
    ]
    after = plan_host(replanned(spec, detected), CATALOGUE)
    assert {p.where for p in after.placements} == {"cpu"}
