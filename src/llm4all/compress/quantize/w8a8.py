"""Dynamic W8A8: int8 per-channel weights, int8 per-token activations, int32 accumulation.

The "W8A8 naive" baseline of Xiao et al. 2023 ("SmoothQuant", Table 2: per-channel weight
absmax, per-token dynamic activation absmax). On CPU the int8 × int8 product runs through
``torch._int_mm``; outputs are rescaled by s_x[t] · s_w[o].
"""

from __future__ import annotations

from torch import nn

from llm4all.catalog import QUANTIZERS
from llm4all.compress.method import InputStats, Method


@QUANTIZERS.register("w8a8")
def w8a8() -> Method:
    """Dynamic W8A8: int8 per-channel weights × per-token int8 activations (Xiao et al. 2023)."""
    from llm4all.models.packed.int8 import Int8Linear

    def compress(name: str, linear: nn.Linear, stats: InputStats | None) -> nn.Module:
        return Int8Linear.from_weight(linear.weight, None, linear.bias)

    return Method("w8a8", {}, compress)
