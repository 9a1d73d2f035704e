"""What a model's weights weigh: quantizations, their bits per weight, and the memory the
system keeps for itself. Pure arithmetic shared by the planner and the checks. Example::

    >>> round(weights_gb(70, "Q4_K_M"), 1)
    42.4
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpufleet.models import ModelPlacement

SYSTEM_RESERVE_GB = 2.0
"""Memory left to the operating system and the engine's runtime when judging a fit."""

BITS_PER_WEIGHT = {
    "Q3_K_M": 3.91,
    "Q4_0": 4.55,
    "Q4_K_M": 4.85,
    "Q5_K_M": 5.69,
    "Q6_K": 6.56,
    "Q8_0": 8.5,
    "FP8": 8.0,
    "FP16": 16.0,
    "BF16": 16.0,
    "AWQ": 4.25,
    "GPTQ": 4.25,
}
"""Average bits per weight of each quantization (llama.cpp's published figures for GGUF types;
AWQ/GPTQ 4-bit with group scales)."""

DEFAULT_QUANT = "Q4_K_M"
"""What Ollama serves when a tag names no quantization."""

_TAG_QUANT = re.compile(r"(?:^|-)(q\d(?:_k)?(?:_[a-z0-9])?|fp16|f16|bf16|fp8)(?:$|-)", re.I)


def placement_quant(placement: ModelPlacement) -> str:
    """The quantization a placement serves: explicit, from its tag, or Ollama's default."""
    if placement.quant:
        return placement.quant.upper()
    _, _, variant = placement.model.partition(":")
    found = _TAG_QUANT.search(variant)
    if not found:
        return DEFAULT_QUANT
    tag_quant = found.group(1).upper()
    return {"Q4": DEFAULT_QUANT, "Q8": "Q8_0", "F16": "FP16"}.get(tag_quant, tag_quant)


def weights_gb(params_b: float, quant: str) -> float:
    """Size of the weights in GB: ``weights_gb(70, "Q4_K_M")`` is about 42.4."""
    return params_b * BITS_PER_WEIGHT[quant] / 8
