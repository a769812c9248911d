"""Int8 and ternary packed Linears that also quantise their activations (integer products).

* ``Int8Linear``: int8 per-channel weights with per-token int8 activations (dynamic W8A8,
  Xiao et al. 2023 "SmoothQuant" baseline) and an optional set of fp16 outlier input
  columns (LLM.int8(), Dettmers et al. 2022); the int8 product runs through
  ``torch._int_mm`` (int32 accumulation).
* ``TernaryLinear``: BitNet b1.58 weights {−1, 0, +1}·γ (2 bits each) with per-token 8-bit
  activations, the inference form of ``models.bitnet.BitLinear``; also through _int_mm.
"""

from __future__ import annotations

import torch
from torch import nn

from llm4all.models.packed.formats import pack_ternary, unpack_ternary
from llm4all.models.packed.kernels import warn_once


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8: x ≈ q · s with q ∈ [−127, 127]; returns (q int8, s (…, 1) fp32)."""
    s = x.abs().amax(-1, keepdim=True).float().clamp(min=1e-8) / 127.0
    return torch.round(x.float() / s).clamp_(-127, 127).to(torch.int8), s


CUDA_MIN_ROWS = 17  # torch._int_mm on CUDA takes more than 16 rows (and in/out multiples of 8)


def _int8_matmul(xq: torch.Tensor, wq_t: torch.Tensor, min_rows: int | None = None) -> torch.Tensor:
    """(T, in) int8 @ (in, out) int8 -> (T, out) int32, exact, through ``torch._int_mm``.

    On CUDA, fewer than CUDA_MIN_ROWS rows (decoding) are padded with zero rows, which add
    nothing to the others' products, and cut off again.
    """
    rows = xq.shape[0]
    if xq.device.type == "cuda" and (wq_t.shape[0] % 8 or wq_t.shape[1] % 8):
        warn_once("cuda-int8-shape", f"an int8 Linear of shape {tuple(wq_t.shape)} (not multiples of 8) "
                  "cannot use torch's CUDA int8 product: such layers multiply in float32")
        return (xq.float() @ wq_t.float()).round().to(torch.int32)
    floor = (CUDA_MIN_ROWS if xq.device.type == "cuda" else 0) if min_rows is None else min_rows
    if rows < floor:
        xq = torch.nn.functional.pad(xq, (0, 0, 0, floor - rows))
    return torch._int_mm(xq.contiguous(), wq_t)[:rows]


class Int8Linear(nn.Module):
    """Dynamic W8A8 Linear: int8 per-channel weights, per-token int8 activations, fp16 outliers."""

    def __init__(self, in_features: int, out_features: int, n_outliers: int = 0, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight_t", torch.zeros(in_features, out_features, dtype=torch.int8))
        self.register_buffer("scales", torch.zeros(out_features, dtype=torch.float32))
        self.register_buffer("outlier_idx", torch.zeros(n_outliers, dtype=torch.int64))
        self.register_buffer("outlier_weight", torch.zeros(out_features, n_outliers, dtype=torch.float16))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, outliers: torch.Tensor | None = None, bias=None):
        """Absmax int8 per output row on the non-outlier columns; outlier columns kept in fp16."""
        out_features, in_features = weight.shape
        idx = torch.zeros(0, dtype=torch.int64) if outliers is None else outliers.long()
        m = cls(in_features, out_features, len(idx), bias is not None)
        w = weight.detach().float().clone()
        m.outlier_weight.copy_(w[:, idx])
        w[:, idx] = 0
        scale = w.abs().amax(1).clamp(min=1e-8) / 127.0  # (out,)
        m.scales.copy_(scale)
        m.qweight_t.copy_(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).T)
        m.outlier_idx.copy_(idx)
        if bias is not None:
            m.bias = bias.detach().float().clone()
        return m

    def spec(self) -> dict:
        return {"kind": "int8", "in_features": self.in_features, "out_features": self.out_features,
                "outliers": int(self.outlier_idx.numel()), "bias": self.bias is not None}

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        w = self.qweight_t.T.float() * self.scales[:, None]
        w[:, self.outlier_idx] = self.outlier_weight.float()
        return w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # (T, in)
        if self.outlier_idx.numel():
            xo = x2[:, self.outlier_idx]  # (T, k) stays in floating point
            x2 = x2.clone()
            x2[:, self.outlier_idx] = 0
        xq, sx = quantize_activations(x2)
        y = _int8_matmul(xq, self.qweight_t).float() * sx * self.scales  # (T, out)
        if self.outlier_idx.numel():
            y += xo.float() @ self.outlier_weight.float().T
        if self.bias is not None:
            y += self.bias
        return y.to(x.dtype).view(*shape[:-1], self.out_features)


class TernaryLinear(nn.Module):
    """BitNet b1.58 inference Linear: ternary weights · γ, per-token absmax 8-bit activations."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, -(-in_features // 4), dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(1))  # γ = mean |W|
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_ternary(cls, ternary: torch.Tensor, gamma: float, bias=None) -> TernaryLinear:
        out_features, in_features = ternary.shape
        m = cls(in_features, out_features, bias is not None)
        m.qweight.copy_(pack_ternary(ternary))
        m.scales.fill_(gamma)
        if bias is not None:
            m.bias = bias.detach().float().clone()
        return m

    def spec(self) -> dict:
        return {"kind": "ternary", "in_features": self.in_features,
                "out_features": self.out_features, "bias": self.bias is not None}

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (unpack_ternary(self.qweight, self.in_features).float() * self.scales).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xq, sx = quantize_activations(x.reshape(-1, self.in_features))
        wt = unpack_ternary(self.qweight, self.in_features).T  # (in, out) int8, transient
        y = _int8_matmul(xq, wt.contiguous()).float() * (sx * self.scales)
        if self.bias is not None:
            y += self.bias
        return y.to(x.dtype).view(*shape[:-1], self.out_features)
