"""Read a GGUF file's header: the model's architecture figures, from the file itself.

The planner prefers these over the catalogue when the GGUF a placement names is at hand on
the machine running gpufleet. Only the header is read (metadata and tensor shapes), never
the weights. Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (version 2/3).

    >>> read_model_entry("gemma-3-270m-q4_k_m.gguf").layers
    18
"""

from __future__ import annotations

import struct
from functools import cache
from math import prod
from pathlib import Path
from typing import IO, Any

from gpufleet.catalogue import ModelEntry

_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
    11: "<q", 12: "<d",
}  # fmt: skip
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    pass


def _read(stream: IO[bytes], fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = stream.read(size)
    if len(data) != size:
        raise GGUFError("file ends inside its header")
    return struct.unpack(fmt, data)[0]


def _string(stream: IO[bytes]) -> str:
    return stream.read(_read(stream, "<Q")).decode("utf-8", "replace")


def _value(stream: IO[bytes], kind: int) -> Any:
    if kind in _SCALARS:
        return _read(stream, _SCALARS[kind])
    if kind == _STRING:
        return _string(stream)
    if kind == _ARRAY:
        item_kind, count = _read(stream, "<I"), _read(stream, "<Q")
        if item_kind in _SCALARS:  # skipped: tokenizer scores and the like
            stream.seek(struct.calcsize(_SCALARS[item_kind]) * count, 1)
            return None
        for _ in range(count):
            _value(stream, item_kind)
        return None
    raise GGUFError(f"unknown value type {kind}")


def read_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """(metadata without arrays, total parameter count from the tensor shapes)."""
    with open(path, "rb") as stream:
        if stream.read(4) != b"GGUF":
            raise GGUFError(f"{path} is not a GGUF file")
        version = _read(stream, "<I")
        if version not in (2, 3):
            raise GGUFError(f"{path}: GGUF version {version} is not supported")
        tensors, entries = _read(stream, "<Q"), _read(stream, "<Q")
        metadata = {}
        for _ in range(entries):
            key = _string(stream)
            metadata[key] = _value(stream, _read(stream, "<I"))
        parameters = 0
        for _ in range(tensors):
            _string(stream)
            dims = [_read(stream, "<Q") for _ in range(_read(stream, "<I"))]
            _read(stream, "<I")  # tensor type
            _read(stream, "<Q")  # offset
            parameters += prod(dims)
    return metadata, parameters


def tensor_bytes(path: str | Path) -> dict[str, int]:
    """Each tensor's name and size in bytes in the file: the distance from its data to the
    next tensor's (or the file's end), alignment padding included. Read from the header: the
    weights themselves are not read."""
    with open(path, "rb") as stream:
        if stream.read(4) != b"GGUF":
            raise GGUFError(f"{path} is not a GGUF file")
        if _read(stream, "<I") not in (2, 3):
            raise GGUFError(f"{path}: GGUF version is not supported")
        tensors, entries = _read(stream, "<Q"), _read(stream, "<Q")
        alignment = 32
        for _ in range(entries):
            key = _string(stream)
            value = _value(stream, _read(stream, "<I"))
            if key == "general.alignment":
                alignment = int(value)
        offsets = []
        for _ in range(tensors):
            name = _string(stream)
            stream.seek(8 * _read(stream, "<I") + 4, 1)  # its dimensions and type
            offsets.append((_read(stream, "<Q"), name))
        data = -(-stream.tell() // alignment) * alignment
        end = Path(path).stat().st_size - data
    offsets.sort()
    bounds = [offset for offset, _ in offsets[1:]] + [end]
    return {name: bound - offset for (offset, name), bound in zip(offsets, bounds, strict=True)}


@cache
def read_model_entry(path: str) -> ModelEntry:
    """The catalogue's figures for a model, read from its GGUF header."""
    metadata, parameters = read_header(path)
    arch = metadata.get("general.architecture")
    if not arch:
        raise GGUFError(f"{path}: no general.architecture in its header")

    def field(name: str, default: int | None = None) -> int:
        value = metadata.get(f"{arch}.{name}", default)
        if value is None:
            raise GGUFError(f"{path}: no {arch}.{name} in its header")
        return int(value)

    heads = field("attention.head_count")
    head_dim = field("attention.key_length", field("embedding_length") // heads)
    params_b = round(parameters / 1e9, 3)
    return ModelEntry(
        tag=str(metadata.get("general.name", Path(path).stem)),
        params_b=params_b,
        active_params_b=params_b,
        layers=field("block_count"),
        kv_heads=field("attention.head_count_kv", heads),
        head_dim=head_dim,
        context=field("context_length"),
        # Encoders (BERT and kin) pool their output into one vector: an embedding model.
        kind="embedding" if f"{arch}.pooling_type" in metadata else "llm",
        declared=f"GGUF header of {path}",
    )


def local_gguf(source: str | None) -> ModelEntry | None:
    """The model's figures from the header of the GGUF ``source`` names, when that file is on
    this machine (a path, or a ``file://`` URL); None otherwise (a URL, a path on the host)."""
    path = (source or "").removeprefix("file://")
    if path.endswith(".gguf") and Path(path).is_file():
        return read_model_entry(str(Path(path).resolve()))
    return None
