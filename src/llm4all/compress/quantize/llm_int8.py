"""LLM.int8(): vector-wise int8 matrix multiplication with a mixed-precision outlier split.

Dettmers, Lewis, Belkada & Zettlemoyer 2022, "LLM.int8(): 8-bit Matrix Multiplication for
Transformers at Scale", section 3.2: input feature dimensions whose magnitude reaches the
threshold α = 6.0 (their section 3.2) are multiplied in 16 bits; all others go through an int8
product with per-token (row) activation scales and per-output-channel weight scales.
The paper picks outlier columns per batch at run time; here they are fixed once from the
calibration activations (a column is an outlier if max |x| ≥ ``threshold`` on any calibration
token), which keeps the weight layout static: outlier columns of W are stored in fp16 and
zeroed in the int8 matrix.
"""

from __future__ import annotations

import torch
from torch import nn

from llm4all.catalog import QUANTIZERS
from llm4all.compress.method import InputStats, Method, check_range

THRESHOLD = 6.0  # outlier magnitude, Dettmers et al. 2022, section 3.2


def outlier_columns(absmax: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """Input dimensions whose calibration max |x| reaches ``threshold`` (sorted indices)."""
    return torch.nonzero(absmax >= threshold).flatten()


@QUANTIZERS.register("llm_int8")
def llm_int8(threshold: float = THRESHOLD) -> Method:
    """LLM.int8(): int8 vector-wise matmul + fp16 outlier feature columns (Dettmers et al. 2022)."""
    from llm4all.models.packed.int8 import Int8Linear

    check_range("threshold", threshold, 0.0, float("inf"), "llm_int8")

    def compress(name: str, linear: nn.Linear, stats: InputStats | None) -> nn.Module:
        assert stats is not None
        return Int8Linear.from_weight(linear.weight, outlier_columns(stats.absmax, threshold), linear.bias)

    return Method("llm_int8", {"threshold": threshold}, compress, stats="input")
