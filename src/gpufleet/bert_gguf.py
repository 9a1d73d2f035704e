#!/usr/bin/env python3
"""Convert a sentence-transformers BERT folder (HF layout) to GGUF without torch.

Mirrors llama.cpp's ``convert_hf_to_gguf.py`` / ``conversion/bert.py`` ``BertModel``
(default ``--outtype auto`` -> F16 for an F32 checkpoint) closely enough that the
metadata, vocabulary and tensors written are the same, using only numpy,
``safetensors`` (``safetensors.numpy``) and the ``gguf`` package (gguf-py).

Input folder: config.json, model.safetensors (or model-*.safetensors),
tokenizer.json (or vocab.txt), modules.json + <pooling>/config.json.

Usage:  python bert_gguf.py MODEL_DIR OUT.gguf [--gguf-py PATH/TO/llama.cpp/gguf-py]
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import unicodedata
from collections.abc import Iterable
from hashlib import sha256
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

logger = logging.getLogger("bert_gguf")

# HF architectures handled by llama.cpp's BertModel class
BERT_ARCHS = ("BertModel", "BertForMaskedLM", "CamembertModel", "BertForSequenceClassification")

# Text hashed by llama.cpp's get_vocab_base_pre() (conversion/base.py) to identify the pre-tokenizer.
CHKTXT = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"

# chkhsh -> tokenizer.ggml.pre for WordPiece vocabs, as resolved by get_vocab_base_pre().
# NB: that function is a chain of plain `if`s, so the LAST match wins: the hash of the
# bert-base-uncased style tokenizer (bge-small-en-v1.5, all-MiniLM-L6-v2, ...) is listed
# both as "bert-bge" and later as "jina-v2-en", and upstream therefore writes "jina-v2-en".
# llama.cpp ignores tokenizer.ggml.pre for tokenizer model "bert" (WPM -> PRE_TYPE_DEFAULT).
KNOWN_WPM_PRE = {
    "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f": "jina-v2-en",
    "8e62295832751ca1e8f92f2226f403dea30dc5165e448b5bfa05af5340c64ec7": "bert-bge-large",
    "c7699093ba4255a91e702aa38a596aa81669f3525dae06c2953267dde580f448": "jina-v1-en",
}


# --------------------------------------------------------------------------- gguf import
def load_gguf(gguf_py: Path | None = None) -> ModuleType:
    """Import ``gguf``; with ``gguf_py`` (a gguf-py folder, or its parent llama.cpp tree) use that copy."""
    if gguf_py is None:
        return importlib.import_module("gguf")
    p = Path(gguf_py).resolve()
    if (p / "gguf-py" / "gguf").is_dir():
        p = p / "gguf-py"
    elif p.name == "gguf" and (p / "__init__.py").is_file():
        p = p.parent
    if not (p / "gguf" / "__init__.py").is_file():
        raise FileNotFoundError(f"no gguf package under {p}")
    loaded = sys.modules.get("gguf")
    if loaded is not None and Path(str(loaded.__file__)).resolve().parent.parent == p:
        return loaded
    for name in [m for m in sys.modules if m == "gguf" or m.startswith("gguf.")]:
        del sys.modules[name]
    sys.path.insert(0, str(p))
    importlib.invalidate_caches()
    return importlib.import_module("gguf")


# --------------------------------------------------------------------------- tokenizer
def _is_whitespace(c: str) -> bool:
    return c in " \t\n\r" or c.isspace()


def _is_control(c: str) -> bool:
    if c in "\t\n\r":
        return False
    return unicodedata.category(c).startswith("C")


def _is_punct(c: str) -> bool:
    o = ord(c)
    if 33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def _is_cjk(o: int) -> bool:
    return (
        0x4E00 <= o <= 0x9FFF
        or 0x3400 <= o <= 0x4DBF
        or 0x20000 <= o <= 0x2A6DF
        or 0x2A700 <= o <= 0x2B73F
        or 0x2B740 <= o <= 0x2B81F
        or 0x2B820 <= o <= 0x2CEAF
        or 0xF900 <= o <= 0xFAFF
        or 0x2F800 <= o <= 0x2FA1F
    )


class WordPieceTokenizer:
    """Minimal pure-python equivalent of HF ``tokenizers`` BertNormalizer + BertPreTokenizer + WordPiece
    + [CLS] A [SEP] template (no truncation / padding), enough to compute llama.cpp's chkhsh and to
    tokenize text for a reference forward pass."""

    def __init__(self, vocab: dict[str, int], tok_json: dict[str, Any] | None = None):
        self.vocab = vocab
        norm = (tok_json or {}).get("normalizer") or {}
        model = (tok_json or {}).get("model") or {}
        self.clean_text = norm.get("clean_text", True)
        self.chinese = norm.get("handle_chinese_chars", True)
        self.lowercase = norm.get("lowercase", True)
        sa = norm.get("strip_accents")
        self.strip_accents = self.lowercase if sa is None else sa
        self.unk = model.get("unk_token", "[UNK]")
        self.prefix = model.get("continuing_subword_prefix", "##")
        self.max_chars = model.get("max_input_chars_per_word", 100)
        self.cls_id = vocab["[CLS]"]
        self.sep_id = vocab["[SEP]"]

    def normalize(self, text: str) -> str:
        out = []
        for c in text:
            if self.clean_text:
                if c == "\0" or c == "\ufffd" or _is_control(c):
                    continue
                if _is_whitespace(c):
                    c = " "
            if self.chinese and _is_cjk(ord(c)):
                out.append(f" {c} ")
            else:
                out.append(c)
        s = "".join(out)
        if self.strip_accents:
            s = "".join(
                c for c in unicodedata.normalize("NFD", s) if unicodedata.category(c) != "Mn"
            )
        if self.lowercase:
            s = s.lower()
        return s

    @staticmethod
    def pre_tokenize(text: str) -> list[str]:
        words: list[str] = []
        cur: list[str] = []
        for c in text:
            if _is_whitespace(c):
                if cur:
                    words.append("".join(cur))
                    cur = []
            elif _is_punct(c):
                if cur:
                    words.append("".join(cur))
                    cur = []
                words.append(c)
            else:
                cur.append(c)
        if cur:
            words.append("".join(cur))
        return words

    def wordpiece(self, word: str) -> list[int]:
        unk = [self.vocab[self.unk]]
        if len(word) > self.max_chars:
            return unk
        ids: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end]
                if start > 0:
                    piece = self.prefix + piece
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return unk
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = []
        for w in self.pre_tokenize(self.normalize(text)):
            ids.extend(self.wordpiece(w))
        if add_special_tokens:
            ids = [self.cls_id, *ids, self.sep_id]
        return ids


# --------------------------------------------------------------------------- model folder
def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_vocab(
    model_dir: Path,
) -> tuple[dict[str, int], dict[str, dict[str, Any]], dict[str, Any] | None]:
    """(token -> id incl. added tokens, added-token content -> added_tokens entry, tokenizer.json or None)."""
    tj_path = model_dir / "tokenizer.json"
    if tj_path.is_file():
        tj = _read_json(tj_path)
        if (tj.get("model") or {}).get("type") != "WordPiece":
            raise NotImplementedError(
                f"expected a WordPiece tokenizer.json, got {tj.get('model', {}).get('type')!r}"
            )
        vocab = dict(tj["model"]["vocab"])
        added = {t["content"]: t for t in tj.get("added_tokens", [])}
        for t in added.values():
            vocab[t["content"]] = t["id"]
        return vocab, added, tj
    with open(model_dir / "vocab.txt", encoding="utf-8") as f:
        vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
    specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    added = {
        s: {"content": s, "id": vocab[s], "special": True, "normalized": False}
        for s in specials
        if s in vocab
    }
    return vocab, added, None


def _does_token_look_special(token: str) -> bool:
    # TextModel.does_token_look_special
    seems = token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
    seems = seems or (token.startswith("<|") and token.endswith("|>"))
    seems = seems or (token.startswith("<｜") and token.endswith("｜>"))
    seems = seems or (token.startswith("<unused") and token.endswith(">"))
    return seems


def _pooling_type(gguf: ModuleType, model_dir: Path):
    # TextModel._try_set_pooling_type
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        return None
    pooling_path = None
    for mod in _read_json(modules_path):
        if mod["type"].endswith("Pooling"):
            pooling_path = mod["path"]
            break
    if pooling_path is None:
        return None
    pooling = _read_json(model_dir / pooling_path / "config.json")
    mode_mapping = {
        "mean": gguf.PoolingType.MEAN,
        "cls": gguf.PoolingType.CLS,
        "lasttoken": gguf.PoolingType.LAST,
    }
    if pooling.get("pooling_mode_mean_tokens"):
        return gguf.PoolingType.MEAN
    if pooling.get("pooling_mode_cls_token"):
        return gguf.PoolingType.CLS
    if pooling.get("pooling_mode_lasttoken"):
        return gguf.PoolingType.LAST
    if (mode := pooling.get("pooling_mode")) in mode_mapping:
        return mode_mapping[mode]
    raise NotImplementedError("Only MEAN, CLS, and LAST pooling types supported")


def _find_hparam(hparams: dict[str, Any], keys: Iterable[str]) -> Any:
    for k in keys:
        if k in hparams:
            return hparams[k]
    return None


def _load_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        parts = sorted(set(_read_json(index)["weight_map"].values()))
    else:
        parts = sorted(
            p.name
            for p in model_dir.iterdir()
            if p.name.startswith("model") and p.name.endswith(".safetensors")
        )
    if not parts:
        raise FileNotFoundError(f"no model*.safetensors in {model_dir}")
    tensors: dict[str, np.ndarray] = {}
    for part in parts:
        # gguf.utility.SafetensorsLocal yields a part's tensors sorted by name
        loaded = load_file(str(model_dir / part))
        for name in sorted(loaded):
            tensors[name] = loaded[name]
    return tensors


def _filter_name(name: str) -> str | None:
    # BertModel.filter_tensors + TextModel/ModelBase.filter_tensors
    if name.startswith("bert."):
        name = name[5:]
    if name.endswith(".gamma"):
        name = name[:-6] + ".weight"
    if name.endswith(".beta"):
        name = name[:-5] + ".bias"
    if name in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
        return None
    if name.startswith(("cls.predictions", "cls.seq_relationship")):
        return None
    if name.endswith("e_score_correction_bias"):
        name = name.replace("e_score_correction_bias", "e_score_correction.bias")
    if "language_model." in name:
        name = name.replace("language_model.", "")
    return name


# --------------------------------------------------------------------------- conversion
def convert(model_dir: Path, out: Path, gguf_py: Path | None = None) -> None:
    """Write ``out`` (GGUF, F16 weights / F32 norms+biases+pos/type embeddings) from ``model_dir``."""
    gguf = load_gguf(gguf_py)
    model_dir = Path(model_dir)
    out = Path(out)

    hparams = _read_json(model_dir / "config.json")
    arch = (hparams.get("architectures") or [None])[0]
    if arch not in BERT_ARCHS:
        raise NotImplementedError(
            f"architecture {arch!r} is not handled (expected one of {BERT_ARCHS})"
        )
    if "text_config" in hparams:
        hparams = {**hparams, **hparams["text_config"]}

    # AutoConfig's int keys; two default labels mean none were given.
    labels = {int(k): v for k, v in (hparams.get("id2label") or {}).items()}
    cls_out_labels: dict[int, Any] | None = labels
    if len(labels) == 2 and labels[0] == "LABEL_0":
        cls_out_labels = None

    block_count = _find_hparam(hparams, ["n_layers", "num_hidden_layers", "n_layer", "num_layers"])
    tensor_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, block_count)

    raw = _load_tensors(model_dir)

    # upstream default --outtype auto: an F32/F16 checkpoint -> MOSTLY_F16
    # (bf16 checkpoints are not supported: safetensors.numpy cannot load bf16)
    ftype = gguf.LlamaFileType.MOSTLY_F16
    qtype_2d = gguf.GGMLQuantizationType.F16

    writer = gguf.GGUFWriter(
        path=None,
        arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT],
        endianess=gguf.GGUFEndian.LITTLE,
        use_temp_file=False,
    )

    def match(new_name: str, key, bid: int | None) -> bool:
        # ModelBase.match_model_tensor_name with suffix ".weight"
        if key not in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.BERT]:
            return False
        key_name: str = gguf.TENSOR_NAMES[key]
        if "{bid}" in key_name:
            if bid is None:
                return False
            key_name = key_name.format(bid=bid)
        elif bid is not None:
            return False
        return new_name == key_name + ".weight"

    # ModelBase.prepare_tensors
    for hf_name, data in raw.items():
        name = _filter_name(hf_name)
        if name is None:
            continue
        if name.endswith((".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")):
            continue
        if data.dtype not in (np.float16, np.float32):
            data = data.astype(np.float32)
        bid = next((int(p) for p in name.split(".") if p.isdecimal()), None)

        if cls_out_labels and name in ("classifier.weight", "classifier.bias"):
            name = name.replace("classifier.", "classifier.out_proj.")
        new_name = tensor_map.get_name(key=name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"Can not map tensor {name!r}")

        n_dims = data.ndim
        qtype = None
        if n_dims <= 1 or new_name.endswith("_norm.weight"):
            qtype = gguf.GGMLQuantizationType.F32
        if qtype is None and (
            any(
                match(new_name, k, bid)
                for k in (gguf.MODEL_TENSOR.POS_EMBD, gguf.MODEL_TENSOR.TOKEN_TYPES)
            )
            or new_name[-7:] not in (".weight", ".lora_a", ".lora_b")
        ):
            qtype = gguf.GGMLQuantizationType.F32
        if qtype is None:
            qtype = qtype_2d
        arr = gguf.quants.quantize(np.ascontiguousarray(data), qtype)
        logger.info(
            "%-32s %s --> %s, shape = {%s}",
            new_name + ",",
            data.dtype,
            qtype.name,
            ", ".join(str(n) for n in reversed(arr.shape)),
        )
        writer.add_tensor(new_name, arr, raw_dtype=qtype)

    # ModelBase.prepare_metadata
    total_params, shared_params, expert_params, expert_count = writer.get_total_parameter_count()
    metadata = gguf.Metadata.load(None, model_dir, None, total_params)
    if metadata.name is None:
        metadata.name = model_dir.name
    if metadata.size_label is None and total_params > 0:
        metadata.size_label = gguf.size_label(
            total_params, shared_params, expert_params, expert_count
        )
    writer.add_type(gguf.GGUFType.MODEL)
    metadata.set_gguf_meta_model(writer)

    # TextModel.set_gguf_parameters (the keys a BERT config can hit) + BertModel.set_gguf_parameters
    writer.add_block_count(block_count)
    if (
        n_ctx := _find_hparam(
            hparams,
            [
                "max_position_embeddings",
                "n_ctx",
                "n_positions",
                "max_length",
                "max_sequence_length",
                "model_max_length",
            ],
        )
    ) is not None:
        writer.add_context_length(n_ctx)
    if (n_embd := _find_hparam(hparams, ["hidden_size", "n_embd", "dim"])) is not None:
        writer.add_embedding_length(n_embd)
    if (
        n_ff := _find_hparam(
            hparams,
            [
                "prefix_dense_intermediate_size",
                "dense_intermediate_size",
                "intermediate_size",
                "n_inner",
                "hidden_dim",
            ],
        )
    ) is not None:
        writer.add_feed_forward_length(n_ff)
    if (n_head := _find_hparam(hparams, ["num_attention_heads", "n_head", "n_heads"])) is not None:
        writer.add_head_count(n_head)
    if (n_head_kv := _find_hparam(hparams, ["num_key_value_heads", "n_kv_heads"])) is not None:
        writer.add_head_count_kv(n_head_kv)
    if hparams.get("is_causal") is False:
        writer.add_causal_attention(False)
    if (f_rms_eps := _find_hparam(hparams, ["rms_norm_eps", "norm_eps"])) is not None:
        writer.add_layer_norm_rms_eps(f_rms_eps)
    if (
        f_norm_eps := _find_hparam(
            hparams, ["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"]
        )
    ) is not None:
        writer.add_layer_norm_eps(f_norm_eps)
    if (head_dim := hparams.get("head_dim")) is not None:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(ftype)
    writer.add_causal_attention(False)
    if (pooling := _pooling_type(gguf, model_dir)) is not None:
        writer.add_pooling_type(pooling)
    if cls_out_labels:
        writer.add_classifier_output_labels([v for k, v in sorted(cls_out_labels.items())])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    # TextModel.get_vocab_base + BertModel.set_vocab
    vocab, added, tok_json = load_vocab(model_dir)
    vocab_size = hparams.get("vocab_size", len(vocab))
    assert max(vocab.values()) < vocab_size
    chkhsh = sha256(str(WordPieceTokenizer(vocab, tok_json).encode(CHKTXT)).encode()).hexdigest()
    if chkhsh not in KNOWN_WPM_PRE:
        raise NotImplementedError(f"BPE pre-tokenizer was not recognized (chkhsh {chkhsh})")
    tokpre = KNOWN_WPM_PRE[chkhsh]

    reverse_vocab = {i: t for t, i in vocab.items()}
    tokens: list[str] = []
    toktypes: list[int] = []
    for i in range(vocab_size):
        if i not in reverse_vocab:
            tokens.append(f"[PAD{i}]")
            toktypes.append(gguf.TokenType.UNUSED)
            continue
        token = reverse_vocab[i]
        if token in added:
            # (upstream re-encodes non-normalized added tokens through AutoTokenizer; that round trip
            #  is the identity for an added token, which the tokenizer matches as a whole)
            if added[token].get("special") or _does_token_look_special(token):
                toktypes.append(gguf.TokenType.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                toktypes.append(gguf.TokenType.USER_DEFINED)
        else:
            toktypes.append(gguf.TokenType.NORMAL)
        tokens.append(token)

    writer.add_token_type_count(hparams.get("type_vocab_size", 1))

    def phantom(tok: str, toktype: int) -> str:
        if toktype == gguf.TokenType.CONTROL:
            return tok
        if tok.startswith("##"):
            return tok[2:]
        return "\u2581" + tok

    tokens = list(map(phantom, tokens, toktypes))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre(tokpre)
    writer.add_token_list(tokens)
    writer.add_token_types(toktypes)
    gguf.SpecialVocab(model_dir, n_vocab=len(tokens)).add_to_gguf(writer)

    # ModelBase.write
    out.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file(path=out)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Convert a sentence-transformers BERT folder to GGUF (no torch)."
    )
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument(
        "--gguf-py",
        type=Path,
        default=None,
        help="path to llama.cpp's gguf-py (default: import gguf)",
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    convert(args.model_dir, args.out, args.gguf_py)
    h = sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {h})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
