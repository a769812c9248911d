"""``LowRankLinear``: a Linear factorised as W ≈ U·V (SVD low-rank compression)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LowRankLinear(nn.Module):
    """W ≈ U·V: y = U (V x) + b with U (out, r), V (r, in)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.V = nn.Parameter(torch.zeros(rank, in_features))
        self.U = nn.Parameter(torch.zeros(out_features, rank))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def spec(self) -> dict:
        return {"kind": "lowrank", "in_features": self.in_features, "out_features": self.out_features,
                "rank": self.rank, "bias": self.bias is not None}

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.U.float() @ self.V.float()).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.V), self.U, self.bias)
