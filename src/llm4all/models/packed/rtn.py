"""Round-to-nearest b-bit quantisation of a weight matrix into ``QuantLinear`` codes.

The packed format's own quantiser, shared by ``compress`` (the ``rtn``/``int8`` methods and
GPTQ's per-group parameters) and ``train`` (the frozen 4-bit base of QLoRA). Codes are
unsigned b-bit integers: symmetric quantisation stores c = q + 2^(b−1) with q = round(w / s),
s = max|w| / (2^(b−1) − 1); asymmetric stores c = round(w / s) + z with
s = (max(w, 0) − min(w, 0)) / (2^b − 1), z = round(−min(w, 0) / s) (zero is always exactly
representable, as in the GPTQ reference quantiser; Frantar et al. 2023, section 5, use
group-wise round-to-nearest as their baseline). Scales are rounded to float16 (their storage
type) before any code is computed; with ``gguf_exact`` an asymmetric scale is rounded to 7
significant bits first (``gguf_scale``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from llm4all.errors import UserError
from llm4all.models.packed.formats import BITS


class Quantized(NamedTuple):
    codes: torch.Tensor  # uint8 (out, in)
    scales: torch.Tensor  # float16 (out, groups)
    zeros: torch.Tensor | None  # uint8 (out, groups); None when symmetric
    bits: int
    group_size: int

    def dequantize(self) -> torch.Tensor:
        out, cols = self.codes.shape
        zero = 2 ** (self.bits - 1) if self.zeros is None else self.zeros.float()[..., None]
        w = (self.codes.float().view(out, -1, self.group_size) - zero) * self.scales.float()[..., None]
        return w.view(out, cols)


def check_bits_group(bits: int, group_size: int | None, in_features: int, where: str = "") -> int:
    """Validate (bits, group_size) for a layer with ``in_features`` columns; returns the group size."""
    where = f"{where}: " if where else ""
    if bits not in BITS:
        raise UserError(f"{where}bits must be one of {', '.join(map(str, BITS))}, got {bits}")
    if group_size is None or group_size == -1:
        return in_features
    if group_size == 0:
        raise UserError(f"{where}group_size 0: use -1 (or null) for per-channel scales, or a divisor of "
                        f"the input dimension {in_features}")
    if group_size < 1 or in_features % group_size:
        raise UserError(f"{where}group_size {group_size} does not divide the input dimension "
                        f"{in_features}; use a divisor of {in_features} or -1 for per-channel")
    return group_size


#: significant bits of an asymmetric scale under ``gguf_exact``: zero (≤ 4 bits) × scale (≤ 7 bits)
#: then has ≤ 11, a float16 number (ggml's Q4_1 stores the minimum m = −zero·scale in float16)
GGUF_SCALE_BITS = 7


def gguf_scale(scale: torch.Tensor) -> torch.Tensor:
    """Round scales > 0 to ``GGUF_SCALE_BITS`` significant bits (relative change ≤ 2^−8), in float16."""
    mantissa, exponent = torch.frexp(scale)  # scale = mantissa · 2^exponent, mantissa ∈ [0.5, 1)
    steps = 2.0**GGUF_SCALE_BITS
    return torch.ldexp(torch.round(mantissa * steps) / steps, exponent).half().float()


def quant_params(w: torch.Tensor, bits: int, symmetric: bool,
                 gguf_exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each row of ``w`` (…, n) -> (…,) fp32 scale (fp16-exact), (…,) zero.

    ``gguf_exact`` (asymmetric only) rounds the scale with ``gguf_scale`` so that −zero·scale is
    exact in float16 and the codes map to ggml Q4_1 blocks without loss (``export/gguf_blocks.py``).
    """
    maxq = 2**bits - 1
    if symmetric:
        scale = w.abs().amax(-1) / (2 ** (bits - 1) - 1)
    else:
        lo, hi = w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)
        scale = (hi - lo) / maxq
    scale = scale.clamp(min=1e-7, max=6e4).half().float()
    if gguf_exact and not symmetric:
        scale = gguf_scale(scale)
    if symmetric:
        return scale, torch.full_like(scale, 2 ** (bits - 1))
    return scale, torch.round(-lo / scale).clamp(0, maxq)


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """c = clamp(round(w / s) + z, 0, 2^b − 1) (float tensor of integer values)."""
    return torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)


def rtn_quantize(W: torch.Tensor, bits: int, group_size: int | None = None,
                 symmetric: bool = True, gguf_exact: bool = False) -> Quantized:
    """Round-to-nearest quantisation of W (out, in) with one (scale, zero) per row and group."""
    out, cols = W.shape
    gs = check_bits_group(bits, group_size, cols)
    w = W.detach().float().view(out, cols // gs, gs)  # (out, groups, gs)
    scale, zero = quant_params(w, bits, symmetric, gguf_exact)  # (out, groups)
    codes = quantize_codes(w, scale[..., None], zero[..., None], bits).view(out, cols)
    return Quantized(codes.to(torch.uint8), scale.half(), None if symmetric else zero.to(torch.uint8),
                     bits, gs)


def to_module(q: Quantized, linear: nn.Linear) -> nn.Module:
    """The ``QuantLinear`` holding ``q`` (and ``linear``'s bias)."""
    from llm4all.models.packed.qlinear import QuantLinear

    return QuantLinear.from_codes(q.codes, q.scales, q.zeros, q.bits, q.group_size, linear.bias)
