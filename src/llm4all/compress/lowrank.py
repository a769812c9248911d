"""Low-rank factorisation: W ≈ U·V by truncated SVD, only where it saves FLOPs.

Eckart–Young: the rank-r truncated SVD W = A Σ Bᵀ minimises ‖W − W_r‖_F; we keep
U = A_r Σ_r^{1/2}, V = Σ_r^{1/2} B_rᵀ. The rank comes from an ``energy`` fraction (smallest r
with Σ_{i≤r} σ_i² ≥ energy · Σ σ_i²) or a ``ratio`` of the full rank. A Linear is factorised
only if r·(in + out) < in·out, i.e. the two thin products cost fewer FLOPs and bytes than the
original (composer's ``factorize`` checks the same before replacing a layer).
With ``activation_aware`` the SVD is of W·S, S = diag(‖X_j‖₂ / mean ‖X‖) from calibration, and
V ← V·S⁻¹, so the kept directions are those that matter on real inputs (ASVD, Yuan et al. 2023,
"ASVD: Activation-aware Singular Value Decomposition for Compressing LLMs").
"""

from __future__ import annotations

import torch
from torch import nn

from llm4all.catalog import FACTORIZERS
from llm4all.compress.method import InputStats, Method, check_range
from llm4all.errors import UserError


def svd_factorize(W: torch.Tensor, rank: int, scale: torch.Tensor | None = None):
    """(U (out, r), V (r, in)) with U·V the best rank-r approximation of W (of W·S if ``scale``)."""
    W = W.detach().float()
    if not 1 <= rank <= min(W.shape):
        raise UserError(f"rank must be in [1, {min(W.shape)}], got {rank}")
    A = W * scale[None, :] if scale is not None else W
    left, sigma, right_t = torch.linalg.svd(A, full_matrices=False)
    root = sigma[:rank].sqrt()
    U, V = left[:, :rank] * root[None, :], root[:, None] * right_t[:rank]
    if scale is not None:
        V = V / scale[None, :]
    return U, V


def choose_rank(W: torch.Tensor, energy: float | None = None, ratio: float | None = None) -> int:
    """Rank keeping an ``energy`` fraction of Σσ², or ``ratio`` × full rank."""
    full = min(W.shape)
    if ratio is not None:
        return max(1, int(round(ratio * full)))
    sigma2 = torch.linalg.svdvals(W.detach().float()) ** 2
    kept = torch.cumsum(sigma2, 0) / sigma2.sum()
    return int(torch.searchsorted(kept, torch.tensor(energy)).item()) + 1


def saves_flops(in_features: int, out_features: int, rank: int) -> bool:
    return rank * (in_features + out_features) < in_features * out_features


def lowrank_module(linear: nn.Linear, U: torch.Tensor, V: torch.Tensor) -> nn.Module:
    from llm4all.models.packed.lowrank import LowRankLinear

    m = LowRankLinear(linear.in_features, linear.out_features, U.shape[1], linear.bias is not None)
    with torch.no_grad():
        m.U.copy_(U)
        m.V.copy_(V)
        if linear.bias is not None:
            m.bias.copy_(linear.bias)
    return m


@FACTORIZERS.register("svd")
def svd(energy: float | None = 0.9, ratio: float | None = None, activation_aware: bool = False,
        targets: list[str] | None = None) -> Method:
    """Truncated SVD W ≈ U·V of chosen Linears, rank by energy or ratio (Eckart–Young; ASVD option)."""
    if ratio is not None:
        check_range("ratio", ratio, 1e-9, 1.0, "svd")
    elif energy is not None:
        check_range("energy", energy, 1e-9, 1.0, "svd")
    else:
        raise UserError("svd: give energy (fraction of Σσ² kept) or ratio (fraction of the rank)")

    def compress(name: str, linear: nn.Linear, stats: InputStats | None) -> nn.Module:
        if targets and not any(t in name for t in targets):
            return linear
        scale = None
        if activation_aware:
            norms = stats.sumsq.sqrt()
            scale = (norms / norms.mean()).clamp(min=1e-4)
        W = linear.weight
        rank = choose_rank(W * scale[None, :] if scale is not None else W, energy, ratio)
        if not saves_flops(linear.in_features, linear.out_features, rank):
            return linear
        return lowrank_module(linear, *svd_factorize(W, rank, scale))

    options = {"energy": energy, "ratio": ratio, "activation_aware": activation_aware, "targets": targets}
    return Method("svd", options, compress, stats="input" if activation_aware else "none")
