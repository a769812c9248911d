"""The ``bitnet`` quantizer: post-hoc BitNet b1.58 ternarisation of a trained model.

The layers and the training-time form live in ``llm4all.models.bitnet`` (BitLinear, trained
through ``llm4all train --bitnet``); this entry ternarises each decoder Linear of an existing
model into a 2-bit packed ``TernaryLinear`` (Ma et al. 2024, section 2).
"""

from __future__ import annotations

from torch import nn

from llm4all.catalog import QUANTIZERS
from llm4all.compress.method import InputStats, Method
from llm4all.models.bitnet import ternary_module


@QUANTIZERS.register("bitnet")
def bitnet() -> Method:
    """BitNet b1.58 ternary weights + 8-bit activations, 2 bits/weight packed (Ma et al. 2024)."""

    def compress(name: str, linear: nn.Linear, stats: InputStats | None) -> nn.Module:
        return ternary_module(linear)

    notes = ["post-hoc ternarisation of a model not trained with BitLinear is destructive; "
             "train with BitLinear (bitnet_convert) first"]
    return Method("bitnet", {}, compress, notes=notes)
