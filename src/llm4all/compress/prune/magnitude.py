"""Magnitude pruning: zero the weights of smallest |W| (Han et al. 2015, "Learning both Weights
and Connections for Efficient Neural Networks"), per layer, unstructured or N:M.

N:M masks (``prunen`` zeros in every ``prunem`` consecutive input weights of a row; 2:4 is the
pattern NVIDIA Ampere sparse tensor cores run, Mishra et al. 2021) are shared by every
pruner here through ``nm_mask``. Pruned Linears are stored as a bit mask + fp16 non-zeros
(formats.py): smaller on disk; at run time the weight is dense again (CPU has no sparse
kernel that would be faster at 50%).
"""

from __future__ import annotations

import torch
from torch import nn

from llm4all.catalog import PRUNERS
from llm4all.compress.method import InputStats, Method, check_range
from llm4all.errors import UserError


def check_sparsity(sparsity: float, prunen: int, prunem: int, where: str) -> None:
    check_range("sparsity", sparsity, 0.0, 1.0, where)
    if (prunen or prunem) and not 0 < prunen < prunem:
        raise UserError(f"{where}: N:M needs 0 < prunen < prunem, got {prunen}:{prunem}")


def nm_mask(score: torch.Tensor, prunen: int, prunem: int) -> torch.Tensor:
    """Pruning mask (True = removed): the ``prunen`` lowest scores of every ``prunem`` columns."""
    rows, cols = score.shape
    if cols % prunem:
        raise UserError(f"N:M pruning needs the input dimension {cols} divisible by prunem={prunem}")
    groups = score.view(rows, cols // prunem, prunem)
    idx = torch.topk(groups, prunen, dim=-1, largest=False).indices
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True).view(rows, cols)


def lowest_mask(score: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """Pruning mask removing the ``sparsity`` fraction of lowest scores (per row or per matrix)."""
    if per_row:
        k = int(score.shape[1] * sparsity)
        idx = torch.topk(score, k, dim=1, largest=False).indices
        return torch.zeros_like(score, dtype=torch.bool).scatter_(1, idx, True)
    k = int(score.numel() * sparsity)
    idx = torch.topk(score.flatten(), k, largest=False).indices
    return torch.zeros(score.numel(), dtype=torch.bool).index_fill_(0, idx, True).view(score.shape)


def magnitude_mask(W: torch.Tensor, sparsity: float, prunen: int = 0, prunem: int = 0) -> torch.Tensor:
    """Mask (True = pruned) of the smallest |W| in the matrix, or per N:M group."""
    score = W.detach().abs().float()
    return nm_mask(score, prunen, prunem) if prunen else lowest_mask(score, sparsity, per_row=False)


def pruned_linear(linear: nn.Linear, W: torch.Tensor) -> nn.Linear:
    """A copy of ``linear`` with weight ``W``, stored sparse (bit mask + non-zeros) on disk."""
    out = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        out.weight.copy_(W)
        if linear.bias is not None:
            out.bias.copy_(linear.bias)
    out.llm4all_kind = "sparse"
    return out


@PRUNERS.register("magnitude")
def magnitude(sparsity: float = 0.5, prunen: int = 0, prunem: int = 0) -> Method:
    """Magnitude pruning per layer, unstructured or N:M (Han et al. 2015)."""
    check_sparsity(sparsity, prunen, prunem, "magnitude")

    def compress(name: str, linear: nn.Linear, stats: InputStats | None) -> nn.Module:
        mask = magnitude_mask(linear.weight, sparsity, prunen, prunem)
        return pruned_linear(linear, linear.weight.detach().masked_fill(mask, 0))

    return Method("magnitude", {"sparsity": sparsity, "prunen": prunen, "prunem": prunem}, compress)
