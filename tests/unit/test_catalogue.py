"""The catalogue: every built-in entry well-formed, spot checks against the vendors' and
publishers' figures, and the inventory's own entries (catalogue.yaml, host data, a GGUF
header) taking precedence as documented."""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from gpufleet.catalogue import (
    CATALOGUE_DIR,
    OWN_MEMORY_KINDS,
    CatalogueError,
    catalogue_for,
    load_catalogue,
    model_entry,
    read_catalogue_file,
)
from gpufleet.models import Accelerator, HostSpec, ModelPlacement
from gpufleet.planner import plan_host

BUILTIN = load_catalogue()


def test_the_built_in_files_are_well_formed():
    """Each file validates as a catalogue file (typed, positive figures, known kinds), and
    what the types cannot say holds too."""
    accelerators = read_catalogue_file(CATALOGUE_DIR / "accelerators.yaml")
    models = read_catalogue_file(CATALOGUE_DIR / "models.yaml")
    assert len(accelerators.accelerators) >= 120 and len(models.models) >= 60
    for name, entry in accelerators.accelerators.items():
        if entry.kind == "nvidia":
            assert entry.compute_capability and entry.open_modules, name
        if entry.kind in OWN_MEMORY_KINDS:
            assert entry.vram_gb, name
        else:
            assert not entry.pci_device_ids, name
    ids = Counter(i for entry in accelerators.accelerators.values() for i in entry.pci_device_ids)
    assert [i for i, n in ids.items() if n > 1] == []  # one PCI id names one part
    for alias, target in {**accelerators.aliases}.items():
        assert target in accelerators.accelerators, alias
        assert alias not in accelerators.accelerators, alias
    for alias, target in models.aliases.items():
        assert target in models.models and alias not in models.models, alias
    for tag, entry in models.models.items():
        assert ":" in tag, tag  # family:size, as Ollama tags name a variant
        assert entry.active_params_b is not None and entry.active_params_b <= entry.params_b
        assert entry.context >= 512 and entry.head_dim in (32, 64, 80, 96, 128, 160, 256, 288)


@pytest.mark.parametrize(
    ("name", "kind", "vram", "bandwidth", "capability"),
    [
        ("RTX 4060 Ti", "nvidia", (8, 16), 288, "8.9"),
        ("RTX 3060", "nvidia", (8, 12), 360, "8.6"),
        ("RTX 5080", "nvidia", (16,), 960, "12.0"),
        ("RTX 4090 Laptop", "nvidia", (16,), 576, "8.9"),
        ("RTX A6000", "nvidia", (48,), 768, "8.6"),
        ("RTX 6000 Ada", "nvidia", (48,), 960, "8.9"),
        ("T4", "nvidia", (16,), 320, "7.5"),
        ("A100 SXM 80GB", "nvidia", (80,), 2039, "8.0"),
        ("GB10", "nvidia", (128,), 273, "12.1"),
        ("Radeon RX 7900 XTX", "amd_gpu", (24,), 960, None),
        ("Instinct MI300X", "amd_gpu", (192,), 5300, None),
        ("M4 Max", "apple_metal", (), 546, None),
        ("Arc B580", "intel_gpu", (12,), 456, None),
    ],
)
def test_accelerator_spot_checks(name, kind, vram, bandwidth, capability):
    entry = BUILTIN.accelerator(name)
    assert entry is not None
    assert (entry.kind, entry.vram_gb, entry.bandwidth_gbs) == (kind, vram, bandwidth)
    assert entry.compute_capability == capability


def test_names_nvidia_smi_prints_lead_to_the_part():
    assert BUILTIN.identify("NVIDIA GeForce RTX 4060 Ti", "0x280510DE").name == "RTX 4060 Ti"
    assert BUILTIN.identify("NVIDIA GeForce RTX 4070 SUPER").name == "RTX 4070 Super"
    assert BUILTIN.identify("NVIDIA GeForce RTX 4060 Laptop GPU").name == "RTX 4060 Laptop"
    assert BUILTIN.identify("NVIDIA RTX 6000 Ada Generation").name == "RTX 6000 Ada"
    assert BUILTIN.identify("Tesla T4", "0x1EB810DE").name == "T4"


@pytest.mark.parametrize(
    ("tag", "params", "active", "layers", "kv_heads", "head_dim", "kind"),
    [
        ("qwen3:8b", 8.2, 8.2, 36, 8, 128, "llm"),
        ("qwen3:30b-a3b", 30.5, 3.3, 48, 4, 128, "llm"),
        ("qwen3:235b-a22b-q4_K_M", 235, 22, 94, 4, 128, "llm"),
        ("qwen3-coder:30b", 30.5, 3.3, 48, 4, 128, "code"),
        ("gemma3:27b", 27.4, 27.4, 62, 16, 128, "vision"),
        ("gemma3", 4.3, 4.3, 34, 4, 256, "vision"),
        ("gpt-oss:20b", 20.9, 3.6, 24, 8, 64, "llm"),
        ("gpt-oss:120b", 116.8, 5.1, 36, 8, 64, "llm"),
        ("phi4", 14.7, 14.7, 40, 10, 128, "llm"),
        ("deepseek-r1:70b", 70.6, 70.6, 80, 8, 128, "llm"),
        ("mistral-small:24b", 23.6, 23.6, 40, 8, 128, "llm"),
        ("qwen3-embedding:0.6b", 0.6, 0.6, 28, 8, 128, "embedding"),
        ("snowflake-arctic-embed", 0.335, 0.335, 24, 16, 64, "embedding"),
    ],
)
def test_model_spot_checks(tag, params, active, layers, kv_heads, head_dim, kind):
    entry = BUILTIN.model(tag)
    assert entry is not None
    figures = (entry.params_b, entry.active_params_b, entry.layers, entry.kv_heads)
    assert figures == (params, active, layers, kv_heads)
    assert (entry.head_dim, entry.kind) == (head_dim, kind)


def user_catalogue(tmp_path: Path, text: str) -> Path:
    (tmp_path / "catalogue.yaml").write_text(text)
    return tmp_path / "inventory.py"


def test_the_users_entries_win_over_built_ins_of_the_same_name(tmp_path):
    inventory = user_catalogue(
        tmp_path,
        "accelerators:\n"
        "  RTX 3090: {kind: nvidia, vram_gb: 24, bandwidth_gbs: 900, compute_capability: '8.6'}\n"
        "  GeForce RTX 4090: {kind: nvidia, vram_gb: 48, bandwidth_gbs: 1008}\n"
        "models:\n"
        "  qwen3:8b: {params_b: 8, layers: 30, kv_heads: 8, head_dim: 128, context: 8192}\n"
        "aliases:\n"
        "  my-coder: qwen3-coder:30b\n",
    )
    catalogue = catalogue_for(inventory)
    assert catalogue.accelerator("RTX 3090").bandwidth_gbs == 900
    assert catalogue.accelerator("NVIDIA GeForce RTX 3090").bandwidth_gbs == 900
    # A built-in alias of that name no longer leads to the built-in part: the user's wins.
    assert catalogue.accelerator("GeForce RTX 4090").vram_gb == (48,)
    assert catalogue.accelerator("RTX 4090").vram_gb == (24,)
    assert catalogue.model("qwen3:8b-q8_0").layers == 30
    assert catalogue.model("qwen3").layers == 30  # the built-in alias leads to the user's
    assert catalogue.model("my-coder").tag == "qwen3-coder:30b"
    assert set(catalogue.replaced) == {"RTX 3090", "GeForce RTX 4090", "qwen3:8b"}
    assert catalogue.accelerator("RTX 3090").declared.endswith("catalogue.yaml")
    assert BUILTIN.accelerator("RTX 3090").bandwidth_gbs == 936  # the built-in is untouched


def test_a_changed_catalogue_yaml_is_read_again(tmp_path):
    entry = "accelerators:\n  Box GPU: {kind: nvidia, vram_gb: 12, bandwidth_gbs: %d}\n"
    inventory = user_catalogue(tmp_path, entry % 100)
    assert catalogue_for(inventory).accelerator("Box GPU").bandwidth_gbs == 100
    (tmp_path / "catalogue.yaml").write_text(entry % 200 + "\n")
    assert catalogue_for(inventory).accelerator("Box GPU").bandwidth_gbs == 200


NVIDIA_8GB = "{kind: nvidia, vram_gb: 8, bandwidth_gbs: 1"
SMALL_MODEL = "{params_b: 1, layers: 2, kv_heads: 1, head_dim: 64"


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("models: [a, b]\n", "models", "valid dictionary"),
        (
            "accelerators:\n  X: {kind: cuda, vram_gb: 8, bandwidth_gbs: 1}\n",
            "accelerators['X'].kind",
            "'nvidia'",
        ),
        (
            f"accelerators:\n  X: {NVIDIA_8GB}, compute_capability: 'sm_89'}}\n",
            "accelerators['X'].compute_capability",
            "sm_89",
        ),
        (f"models:\n  a:1b: {SMALL_MODEL}}}\n", "models['a:1b'].context", "missing"),
        (
            f"models:\n  a:1b: {SMALL_MODEL}, context: 9, active_params_b: 2}}\n",
            "models['a:1b']",
            "more than params_b",
        ),
        ("aliases:\n  mine: nowhere\n", "aliases['mine']", "neither catalogue"),
        (f"accelerators:\n  'bad;name': {NVIDIA_8GB}}}\n", "accelerators", "letters"),
        ("- a list\n", "catalogue.yaml", "not a map"),
        ("models:\n  a:1b: {}\n  a:1b: {}\n", "catalogue.yaml:3", "written twice"),
    ],
)
def test_a_bad_catalogue_yaml_names_the_entry_and_the_field(tmp_path, text, where, what):
    inventory = user_catalogue(tmp_path, text)
    with pytest.raises(CatalogueError) as refused:
        catalogue_for(inventory)
    [(location, message)] = refused.value.problems
    assert location.startswith(str(tmp_path / "catalogue.yaml")) or location.startswith(
        "catalogue.yaml"
    )
    assert location.endswith(where) and what in message


def test_figures_the_host_gives_replace_the_catalogues_for_that_host():
    card = Accelerator(kind="nvidia", model="RTX 3090", bandwidth_gbs=800)
    assert BUILTIN.accelerator_for(card).bandwidth_gbs == 800
    assert BUILTIN.accelerator_for(card).vram_gb == (24,)
    unknown = Accelerator(kind="nvidia", model="Mystery 1", vram_gb=20, bandwidth_gbs=500)
    assert BUILTIN.accelerator_for(unknown).vram_gb == (20,)
    assert BUILTIN.accelerator_for(unknown.model_copy(update={"vram_gb": None})) is None
    shared = Accelerator(kind="amd_igpu", model="Radeon 880M", bandwidth_gbs=120)
    assert BUILTIN.accelerator_for(shared).vram_gb == ()  # shares the host's memory


def test_a_placement_declares_a_model_and_its_figures_win():
    placement = ModelPlacement(
        model="qwen3:8b", params_b=8, layers=20, kv_heads=2, head_dim=64, max_context=4096
    )
    entry = model_entry(placement, BUILTIN)
    assert (entry.layers, entry.kv_heads, entry.context, entry.declared) == (
        20, 2, 4096, "host data"
    )  # fmt: skip
    weights_only = model_entry(ModelPlacement(model="mine:7b", params_b=7), BUILTIN)
    assert weights_only.params_b == 7 and weights_only.kv_heads == 0


def test_a_half_declared_model_is_refused_with_what_is_missing():
    with pytest.raises(ValidationError) as refused:
        ModelPlacement(model="mine:7b", params_b=7, layers=32)
    message = str(refused.value)
    assert "kv_heads, head_dim, max_context missing" in message


def write_gguf(path: Path, metadata: dict[str, object], tensors: list[tuple[int, ...]]) -> None:
    """A GGUF (version 3) of a header only: the metadata and the tensors' shapes."""

    def string(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, value in metadata.items():
        out += string(key)
        if isinstance(value, str):
            out += struct.pack("<I", 8) + string(value)
        else:
            out += struct.pack("<II", 4, value)  # uint32
    for n, dims in enumerate(tensors):
        out += string(f"t{n}") + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", 0, 0)
    path.write_bytes(out)


def test_a_gguf_on_this_machine_stands_for_a_model_no_catalogue_knows(tmp_path):
    gguf = tmp_path / "house-model-Q4_K_M.gguf"
    write_gguf(
        gguf,
        {
            "general.architecture": "llama",
            "general.name": "house model",
            "llama.block_count": 30,
            "llama.attention.head_count": 32,
            "llama.attention.head_count_kv": 8,
            "llama.embedding_length": 4096,
            "llama.context_length": 16384,
        },
        [(4096, 250_000), (4096, 4096, 100)],  # about 2.7B parameters
    )
    spec = HostSpec(
        name="h",
        groups=("gpu_nodes",),
        hardware={"cores": 8, "ram_gb": 32},
        models=[{"model": "house-model:3b", "engine": "llama.cpp", "source": str(gguf)}],
    )
    [placed] = plan_host(spec, BUILTIN).placements
    assert placed.layers == 30 and placed.context <= 16384
    assert placed.weights_gb == pytest.approx(2.7 * 4.85 / 8, rel=0.05)
    # K and V of 8 heads of 128 (4096 / 32) over 30 layers, FP16, for each slot's context.
    per_token = 2 * 30 * 8 * 128 * 2
    assert placed.kv_gb == pytest.approx(per_token * placed.context * placed.slots / 1e9, abs=0.01)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00")  # ends inside its header
    spec = spec.model_copy(
        update={
            "models": (
                ModelPlacement(model="house-model:3b", engine="llama.cpp", source=str(broken)),
            )
        }
    )
    [(field, message)] = plan_host(spec, BUILTIN).problems
    assert field == "models[0].source" and "cannot be read" in message


def test_tensor_sizes_are_read_from_the_offsets_in_the_header(tmp_path):
    """Each tensor's bytes: the gap to the next tensor's data, the last one's to the end of
    the file, counted from the aligned start of the data section."""
    from gpufleet.gguf import GGUFError, tensor_bytes

    def string(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    header = b"GGUF" + struct.pack("<IQQ", 3, 3, 1)
    header += string("general.alignment") + struct.pack("<II", 4, 64)
    for name, offset in [("blk.0.w", 0), ("blk.1.w", 128), ("output.w", 320)]:
        header += string(name) + struct.pack("<IQ", 1, 4) + struct.pack("<IQ", 0, offset)
    data_start = -(-len(header) // 64) * 64
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(header + b"\0" * (data_start - len(header)) + b"\1" * 400)
    assert tensor_bytes(gguf) == {"blk.0.w": 128, "blk.1.w": 192, "output.w": 80}
    (tmp_path / "not.gguf").write_bytes(b"GGML")
    with pytest.raises(GGUFError):
        tensor_bytes(tmp_path / "not.gguf")
