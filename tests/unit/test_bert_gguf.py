"""The torch-free BERT converter on the real all-MiniLM-L6-v2 the lab serves: the metadata,
vocabulary and tensors llama.cpp's own converter writes, the same bytes every time. Needs the
wheel and the llama.cpp source in the lab's artifact cache (``gpufleet lab up`` fetches them);
skipped before the first lab run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gpufleet import bert_gguf, lab


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, Path]:
    artifacts = lab.cache_dir() / "artifacts"
    wheel, sdist = artifacts / lab.EMBEDDING_WHEEL[1], artifacts / lab.LLAMACPP_SDIST[1]
    if not (wheel.exists() and sdist.exists()):
        pytest.skip("the lab's artifacts are not fetched yet (gpufleet lab up)")
    return lab.embedding_sources(wheel, sdist, tmp_path_factory.mktemp("sources"))


@pytest.fixture(scope="module")
def model_dir(sources) -> Path:
    return sources[0]


@pytest.fixture(scope="module")
def gguf_mod(sources):
    return bert_gguf.load_gguf(sources[1])


@pytest.fixture(scope="module")
def converted(tmp_path_factory, sources) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "minilm.gguf"
    bert_gguf.convert(sources[0], out, sources[1])
    return out


@pytest.fixture(scope="module")
def reader(converted, gguf_mod):
    return gguf_mod.GGUFReader(converted)


def test_the_conversion_gives_the_bytes_the_lab_serves(converted):
    assert hashlib.sha256(converted.read_bytes()).hexdigest() == lab.EMBEDDING_GGUF_SHA256


def _kv(reader, key):
    return reader.fields[key].contents()


def test_hparams(reader, gguf_mod):
    assert _kv(reader, "general.architecture") == "bert"
    assert _kv(reader, "general.type") == "model"
    assert _kv(reader, "bert.block_count") == 6
    assert _kv(reader, "bert.embedding_length") == 384
    assert _kv(reader, "bert.feed_forward_length") == 1536
    assert _kv(reader, "bert.attention.head_count") == 12
    assert _kv(reader, "bert.context_length") == 512
    assert _kv(reader, "bert.attention.causal") is False
    assert _kv(reader, "bert.attention.layer_norm_epsilon") == pytest.approx(1e-12)
    assert _kv(reader, "bert.pooling_type") == int(gguf_mod.PoolingType.MEAN)
    assert _kv(reader, "general.file_type") == int(gguf_mod.LlamaFileType.MOSTLY_F16)
    assert "bert.attention.head_count_kv" not in reader.fields


def test_vocab(reader, gguf_mod, model_dir):
    assert _kv(reader, "tokenizer.ggml.model") == "bert"
    # What llama.cpp's get_vocab_base_pre() resolves for this hash (its last match wins);
    # llama.cpp ignores it for WordPiece vocabularies.
    assert _kv(reader, "tokenizer.ggml.pre") == "jina-v2-en"
    assert _kv(reader, "tokenizer.ggml.token_type_count") == 2
    tokens = _kv(reader, "tokenizer.ggml.tokens")
    types = _kv(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == 30522
    control = {i for i, t in enumerate(types) if t == gguf_mod.TokenType.CONTROL}
    assert control == {0, 100, 101, 102, 103}
    assert [tokens[i] for i in (0, 100, 101, 102, 103)] == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ]
    assert all(types[i] == gguf_mod.TokenType.NORMAL for i in range(30522) if i not in control)
    # phantom-space conversion: word-initial pieces get "▁", "##" continuations lose the prefix
    assert tokens[1996] == "\u2581the"
    assert not any(t.startswith("##") for t in tokens)
    vocab, _, _ = bert_gguf.load_vocab(model_dir)
    assert tokens[vocab["i"]] == "\u2581i"
    assert tokens[vocab["##s"]] == "s" and tokens[vocab["s"]] == "\u2581s"
    ids = {
        k: _kv(reader, f"tokenizer.ggml.{k}")
        for k in (
            "bos_token_id",
            "eos_token_id",
            "unknown_token_id",
            "seperator_token_id",
            "padding_token_id",
            "mask_token_id",
        )
    }
    assert ids == {
        "bos_token_id": 101,
        "eos_token_id": 102,
        "unknown_token_id": 100,
        "seperator_token_id": 102,
        "padding_token_id": 0,
        "mask_token_id": 103,
    }


def test_tensors(reader, gguf_mod):
    T = gguf_mod.GGMLQuantizationType
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 5 + 6 * 16
    assert not any("pooler" in n or "position_ids" in n for n in tensors)
    expected = {
        "token_embd.weight",
        "token_types.weight",
        "position_embd.weight",
        "token_embd_norm.weight",
        "token_embd_norm.bias",
    }
    for b in range(6):
        for s in (
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "attn_output_norm",
            "ffn_up",
            "ffn_down",
            "layer_output_norm",
        ):
            expected |= {f"blk.{b}.{s}.weight", f"blk.{b}.{s}.bias"}
    assert set(tensors) == expected
    assert tensors["token_embd.weight"].tensor_type == T.F16
    assert list(tensors["token_embd.weight"].shape) == [384, 30522]
    assert tensors["position_embd.weight"].tensor_type == T.F32
    assert tensors["token_types.weight"].tensor_type == T.F32
    assert list(tensors["token_types.weight"].shape) == [384, 2]
    for n, t in tensors.items():
        if n.endswith(".bias") or "_norm." in n:
            assert t.tensor_type == T.F32, n
        elif n.startswith("blk."):
            assert t.tensor_type == T.F16, n
    assert list(tensors["blk.0.ffn_up.weight"].shape) == [384, 1536]


def test_deterministic(converted, sources, tmp_path):
    again = tmp_path / "again.gguf"
    bert_gguf.convert(sources[0], again, sources[1])
    assert again.read_bytes() == converted.read_bytes()


def test_wordpiece_matches_upstream_hash(model_dir):
    """The tokenizer llama.cpp's converter hashes to name the pre-tokenizer gives its hash."""
    vocab, _, tj = bert_gguf.load_vocab(model_dir)
    tok = bert_gguf.WordPieceTokenizer(vocab, tj)
    assert tok.encode("hello world") == [101, 7592, 2088, 102]
    h = hashlib.sha256(str(tok.encode(bert_gguf.CHKTXT)).encode()).hexdigest()
    assert h == "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f"
