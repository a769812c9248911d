"""BitNet b1.58: ternary weights and 8-bit activations, trained with a straight-through estimator.

Ma et al. 2024, "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits",
section 2: W̃ = RoundClip(W / (γ + ε), −1, 1) with γ = mean|W| (absmean, one scale per
matrix), activations scaled per token to [−Q_b, Q_b], Q_b = 2^(8−1) (absmax, 8 bits; we use
±127 so the int8 product is symmetric). Gradients pass through both roundings unchanged
(straight-through estimator, Bengio et al. 2013) via the ``x + (q(x) − x).detach()`` trick,
so the latent full-precision weights keep training (Wang et al. 2023 "BitNet", section 2.3).

``bitnet_convert(model)`` swaps every Linear of the decoder layers (not the embeddings or
the LM head, as in the paper) for a ``BitLinear`` so the model can be pre-trained or
recovered by quantisation-aware training with the ordinary training loop; the Llama
RMSNorm before attention and MLP plays the role of BitNet's SubLN. After training,
``ternarize`` turns each BitLinear into a 2-bit packed ``TernaryLinear``.

Applied post hoc to a model trained in full precision (the ``bitnet`` quantizer in
compress/quantize/bitnet.py) the same rounding is destructive: one scale per matrix cannot
represent Gaussian-like weights with three levels. docs/compress.md records the damage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llm4all.models.layers import decoder_linears
from llm4all.models.packed.int8 import TernaryLinear

EPS = 1e-5  # ε of the absmean quantiser (Ma et al. 2024, eq. 1)


def absmean_ternary(W: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(W̃ ∈ {−1, 0, 1}, γ): W̃ = RoundClip(W / (γ + ε), −1, 1), γ = mean |W|."""
    gamma = W.abs().mean()
    return torch.clamp(torch.round(W / (gamma + eps)), -1, 1), gamma


def absmax_int8(x: torch.Tensor) -> torch.Tensor:
    """Per-token (last dim) absmax fake quantisation to 8 bits: round(x·127/max|x|)·max|x|/127."""
    s = 127.0 / x.abs().amax(-1, keepdim=True).clamp(min=EPS)
    return torch.clamp(torch.round(x * s), -127, 127) / s


class BitLinear(nn.Linear):
    """Drop-in nn.Linear with ternary weights and 8-bit activations in the forward pass (STE)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        q, gamma = absmean_ternary(w)
        w = w + (q * gamma - w).detach()  # forward: ternary·γ; backward: identity
        x = x + (absmax_int8(x) - x).detach()
        return F.linear(x, w, self.bias)


def bitnet_convert(model: nn.Module) -> nn.Module:
    """Replace the decoder layers' Linears by BitLinear (weights shared, in place); returns model."""
    for name, lin in decoder_linears(model):
        if isinstance(lin, BitLinear):
            continue
        bit = BitLinear(lin.in_features, lin.out_features, bias=lin.bias is not None,
                        device=lin.weight.device, dtype=lin.weight.dtype)
        bit.weight = lin.weight
        if lin.bias is not None:
            bit.bias = lin.bias
        model.set_submodule(name, bit)
    return model


def ternary_module(lin: nn.Linear) -> nn.Module:
    q, gamma = absmean_ternary(lin.weight.detach().float())
    return TernaryLinear.from_ternary(q, float(gamma), lin.bias)


def ternarize(model: nn.Module) -> nn.Module:
    """Turn every decoder Linear/BitLinear into a packed TernaryLinear (inference), in place."""
    with torch.no_grad():
        for name, lin in decoder_linears(model):
            model.set_submodule(name, ternary_module(lin))
    return model
