"""Pruned (sparse) Linears: their masks survive training and are checked afterwards.

A sparse Linear loaded from a packed checkpoint carries a gradient hook (``keep_sparsity``)
that zeroes the gradient of every pruned weight: with a zero gradient from the first step,
AdamW's moments, its update and its decoupled weight decay of a zero weight are all exactly
zero, so pruned weights stay exactly 0 through recovery training (checked after training by
``check_mask`` against the masks ``sparse_masks`` took before).
"""

from __future__ import annotations

import torch
from torch import nn

from llm4all.models.packed.formats import pack_mask, unpack_mask


def keep_sparsity(linear: nn.Linear) -> None:
    """Zero the gradient of the pruned (exactly zero) weights of ``linear`` at every backward."""
    weight = linear.weight

    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad.masked_fill(weight.detach() == 0, 0)

    weight.register_hook(hook)


def sparse_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Packed masks (bit per weight) of the model's sparse Linears, to compare after training."""
    return {n: pack_mask(m.weight.detach() != 0) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and getattr(m, "llm4all_kind", "") == "sparse"}


def check_mask(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """Every pruned weight is still zero (a weight that reached 0 in training is allowed)."""
    for name, packed in before.items():
        w = model.get_submodule(name).weight.detach()
        if ((w != 0) & ~unpack_mask(packed, w.shape[1])).any():
            raise RuntimeError(f"recovery: pruned weights of {name} became non-zero")
