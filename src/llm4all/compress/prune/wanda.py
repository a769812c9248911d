"""Wanda: prune by |W_ij| · ‖X_j‖₂, compared within each output row.

Sun, Liu, Bair & Kolter 2024, "A Simple and Effective Pruning Approach for Large Language
Models", eq. 1 (score S_ij = |W_ij| · ‖X_j‖₂ over the calibration tokens) and section 3
(comparison group: each output row; no weight update). N:M uses the same score.
"""

from __future__ import annotations

import torch
from torch import nn

from llm4all.catalog import PRUNERS
from llm4all.compress.method import InputStats, Method
from llm4all.compress.prune.magnitude import check_sparsity, lowest_mask, nm_mask, pruned_linear


def wanda_mask(W: torch.Tensor, x_norm: torch.Tensor, sparsity: float, prunen: int = 0,
               prunem: int = 0) -> torch.Tensor:
    """Mask (True = pruned): lowest |W|·‖X‖₂ per output row; ``x_norm`` (in,) = ‖X_j‖₂."""
    score = W.detach().abs().float() * x_norm.float()[None, :]  # (out, in)
    return nm_mask(score, prunen, prunem) if prunen else lowest_mask(score, sparsity, per_row=True)


@PRUNERS.register("wanda")
def wanda(sparsity: float = 0.5, prunen: int = 0, prunem: int = 0) -> Method:
    """Wanda: weights × input-activation norms, per output row (Sun et al. 2024)."""
    check_sparsity(sparsity, prunen, prunem, "wanda")

    def compress(name: str, linear: nn.Linear, stats: InputStats | None) -> nn.Module:
        assert stats is not None
        mask = wanda_mask(linear.weight, stats.sumsq.sqrt(), sparsity, prunen, prunem)
        return pruned_linear(linear, linear.weight.detach().masked_fill(mask, 0))

    return Method("wanda", {"sparsity": sparsity, "prunen": prunen, "prunem": prunem}, compress,
                  stats="input")
