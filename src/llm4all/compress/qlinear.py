"""Runtime modules of a compressed model: packed weights as buffers, CPU forward passes.

* ``QuantLinear``: b-bit group-wise weights (RTN, GPTQ). On CPU without autograd it runs
  PyTorch's weight-only kernels, which never de-quantise the matrix: codes of at most 4 bits
  through ``_weight_int4pack_mm_for_cpu`` (the "tinygemm" int4 kernel torchao uses), 8-bit
  per-channel codes through ``_weight_int8pack_mm``; activations and outputs pass through
  bf16 there (perplexity of the quickstart's GPTQ int4 student: 127.08 against 127.07 exact).
  On first use the packed codes are re-laid out in place into the kernel's order (the same
  bytes, so no second copy); ``state_dict`` writes llm4all's order back. Otherwise (GPU,
  autograd, group-wise 8-bit, shapes the kernels refuse, or ``LLM4ALL_QKERNEL=0``) each
  forward de-quantises into a scratch buffer shared by all layers (one per shape and dtype,
  so a 30-layer model holds one de-quantised matrix at a time, not thirty) and calls
  ``F.linear``.
* ``Int8Linear``: int8 per-channel weights with per-token int8 activations (dynamic W8A8,
  Xiao et al. 2023 "SmoothQuant" baseline) and an optional set of fp16 outlier input
  columns (LLM.int8(), Dettmers et al. 2022); the int8 product runs through
  ``torch._int_mm`` (int32 accumulation).
* ``TernaryLinear``: BitNet b1.58 weights {−1, 0, +1}·γ (2 bits each) with per-token 8-bit
  activations, the inference form of ``quantize.bitnet.BitLinear``; also through _int_mm.
* ``LowRankLinear``: W ≈ U·V as two thin products.

Every module has ``spec()`` (its entry in llm4all_quant.json), ``dense_weight()`` (the
weight it applies, for fake-quantised comparisons) and is rebuilt from a spec by
``from_spec`` before its buffers are loaded.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from llm4all.compress.formats import pack, pack_ternary, storage_bits, unpack, unpack_ternary

_SCRATCH: dict[tuple, torch.Tensor] = {}


def _scratch(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A reusable buffer (not thread-safe: the result is valid until the next call)."""
    key = (shape, dtype)
    if key not in _SCRATCH:
        _SCRATCH[key] = torch.empty(shape, dtype=dtype)
    return _SCRATCH[key]


KERNEL_BLOCK_N = 64  # output rows per block in the CPU int4 kernel's weight layout
KERNEL_GROUPS = (256, 128, 64, 32)  # group sizes the kernel accepts
INT8_KERNEL_K = 16  # _weight_int8pack_mm (torch 2.13) crashes the process when in_features % 16 != 0


def to_kernel_layout(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes (N, K) -> uint8 (N, K/2) in the CPU int4 kernel's order.

    The order ``torch.ops.aten._convert_weight_to_int4pack_for_cpu`` produces (tested against
    it): blocks of 64 output rows; within a block, for each input column k, 32 bytes whose low
    nibble is row j's code and high nibble row j + 32's.
    """
    n, k = codes.shape
    c = codes.to(torch.uint8).view(n // KERNEL_BLOCK_N, KERNEL_BLOCK_N, k).transpose(1, 2)  # (nb, K, 64)
    half = KERNEL_BLOCK_N // 2
    return (c[..., :half] | (c[..., half:] << 4)).reshape(n, k // 2)


def from_kernel_layout(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of ``to_kernel_layout``: uint8 codes (N, K)."""
    p = packed.view(n // KERNEL_BLOCK_N, k, KERNEL_BLOCK_N // 2)
    return torch.cat([p & 15, p >> 4], -1).transpose(1, 2).reshape(n, k)


_HAS_KERNELS = all(hasattr(torch.ops.aten, op) for op in ("_weight_int4pack_mm_for_cpu",
                                                         "_weight_int8pack_mm"))


def kernels_enabled() -> bool:
    """Whether the CPU weight-only kernels may run (``LLM4ALL_QKERNEL=0`` forces exact de-quantisation)."""
    return _HAS_KERNELS and os.environ.get("LLM4ALL_QKERNEL", "1") != "0"


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8: x ≈ q · s with q ∈ [−127, 127]; returns (q int8, s (…, 1) fp32)."""
    s = x.abs().amax(-1, keepdim=True).float().clamp(min=1e-8) / 127.0
    return torch.round(x.float() / s).clamp_(-127, 127).to(torch.int8), s


def _int8_matmul(xq: torch.Tensor, wq_t: torch.Tensor) -> torch.Tensor:
    """(T, in) int8 @ (in, out) int8 -> (T, out) int32."""
    return torch._int_mm(xq.contiguous(), wq_t)


class QuantLinear(nn.Module):
    """Group-wise b-bit Linear: W[o, i] = (code − zero[o, g]) · scale[o, g], g = i // group_size."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int | None,
                 symmetric: bool, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.group_size = group_size or in_features
        self.symmetric = symmetric
        groups = in_features // self.group_size
        cols = -(-in_features * storage_bits(bits) // 8)
        self.register_buffer("qweight", torch.zeros(out_features, cols, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, groups, dtype=torch.float16))
        if not symmetric:
            self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=torch.uint8))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._kernel: str | None = None  # "int4"/"int8" while qweight is in a CPU kernel's order

    @classmethod
    def from_codes(cls, codes, scales, zeros, bits, group_size, bias=None) -> QuantLinear:
        out_features, in_features = codes.shape
        m = cls(in_features, out_features, bits, group_size, zeros is None, bias is not None)
        m.qweight.copy_(pack(codes, bits))
        m.scales.copy_(scales)
        if zeros is not None:
            m.zeros.copy_(zeros)
        if bias is not None:
            m.bias = bias.detach().float().clone()
        return m

    def spec(self) -> dict:
        return {"kind": "int", "bits": self.bits, "group_size": self.group_size,
                "symmetric": self.symmetric, "in_features": self.in_features,
                "out_features": self.out_features, "bias": self.bias is not None}

    def codes(self) -> torch.Tensor:
        """The unsigned codes (out, in) as uint8, whichever order ``qweight`` is in."""
        if self._kernel == "int4":
            return from_kernel_layout(self.qweight, self.out_features, self.in_features)
        if self._kernel == "int8":
            return (self.qweight.view(torch.int8).to(torch.int16) + 128).to(torch.uint8)
        return unpack(self.qweight, self.bits, self.in_features)

    def _kernel_kind(self) -> str | None:
        """Which CPU kernel can run this layer: int4 (≤ 4-bit codes), int8 (per-channel 8-bit)."""
        if storage_bits(self.bits) == 4 and self.out_features % KERNEL_BLOCK_N == 0 and any(
                self.group_size % g == 0 for g in KERNEL_GROUPS):
            return "int4"
        if self.bits == 8 and self.group_size == self.in_features and self.in_features % INT8_KERNEL_K == 0:
            return "int8"
        return None

    def _to_kernel(self, kind: str) -> None:
        """Re-lay ``qweight`` out for ``kind``'s kernel (replacing the old order) and build its scales."""
        codes = self.codes()
        scales = self.scales.float()  # (out, groups)
        zeros = torch.full_like(scales, 2.0 ** (self.bits - 1)) if self.symmetric else self.zeros.float()
        if kind == "int4":
            # the kernel computes (q − 8)·s + m per group, so m = (8 − zero)·s gives our (q − zero)·s;
            # a group it does not take (per-channel, 192, ...) is its divisors' groups, scales repeated
            group = next(g for g in KERNEL_GROUPS if self.group_size % g == 0)
            sz = torch.stack([scales, (8.0 - zeros) * scales], -1)  # (out, groups, 2)
            sz = sz.repeat_interleave(self.group_size // group, dim=1)  # (out, in / group, 2)
            self._kernel_scales = sz.transpose(0, 1).contiguous().to(torch.bfloat16)
            self._kernel_group = group
            self.qweight = to_kernel_layout(codes).contiguous()
        else:
            # (q − zero)·s = (q − 128)·s + (128 − zero)·s: an int8 product plus s·(128 − zero)·Σx
            self._kernel_scales = scales[:, 0].to(torch.bfloat16)
            self._kernel_shift = ((128.0 - zeros[:, 0]) * scales[:, 0]) if not self.symmetric else None
            self.qweight = (codes.to(torch.int16) - 128).to(torch.int8).view(torch.uint8)
        self._kernel = kind

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._kernel is not None:  # always saved in llm4all's order
            destination[prefix + "qweight"] = pack(self.codes(), self.bits)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self._kernel is not None:  # loading brings llm4all's order (and its shape) back
            cols = -(-self.in_features * storage_bits(self.bits) // 8)
            self.qweight = torch.empty(self.out_features, cols, dtype=torch.uint8, device=self.qweight.device)
            self._kernel = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def dense_weight(self, dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None):
        rows, cols, gs = self.out_features, self.in_features, self.group_size
        w = torch.empty(rows, cols, dtype=torch.float32) if out is None else out
        w.copy_(self.codes())
        w3 = w.view(rows, cols // gs, gs)  # (out, groups, group_size)
        if self.symmetric:
            w3.sub_(2 ** (self.bits - 1))
        else:
            w3.sub_(self.zeros.float()[..., None])
        w3.mul_(self.scales.float()[..., None])
        return w if dtype == torch.float32 else w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and self.qweight.device.type == "cpu"
                and not (torch.is_grad_enabled() and x.requires_grad) and kernels_enabled()):
            if self._kernel is None and (kind := self._kernel_kind()) is not None:
                self._to_kernel(kind)
            if self._kernel is not None:
                return self._kernel_forward(x)
        w = self.dense_weight(x.dtype, out=_scratch((self.out_features, self.in_features), torch.float32))
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def _kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        xb = x2.to(torch.bfloat16)
        if self._kernel == "int4":
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, self.qweight, self._kernel_group,
                                                           self._kernel_scales).to(x.dtype)
        else:
            y = torch.ops.aten._weight_int8pack_mm(xb, self.qweight.view(torch.int8),
                                                   self._kernel_scales).to(x.dtype)
            if self._kernel_shift is not None:
                y += x2.sum(-1, keepdim=True) * self._kernel_shift.to(x.dtype)
        if self.bias is not None:
            y += self.bias.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)


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


def from_spec(spec: dict, dtype: torch.dtype = torch.float32) -> nn.Module:
    """An empty runtime module for a llm4all_quant.json entry (buffers loaded afterwards)."""
    if spec["kind"] == "embedding":
        from llm4all.compress.embedding import PackedEmbedding

        return PackedEmbedding(spec["num_embeddings"], spec["embedding_dim"], spec["dtype"], dtype,
                               spec["role"])
    kind, i, o, b = spec["kind"], spec["in_features"], spec["out_features"], spec.get("bias", False)
    if kind == "int":
        return QuantLinear(i, o, spec["bits"], spec["group_size"], spec["symmetric"], b)
    if kind == "int8":
        return Int8Linear(i, o, spec["outliers"], b)
    if kind == "ternary":
        return TernaryLinear(i, o, b)
    if kind == "lowrank":
        return LowRankLinear(i, o, spec["rank"], b)
    if kind in ("dense", "sparse"):
        linear = nn.Linear(i, o, bias=b)
        linear.llm4all_kind, linear.llm4all_resized = kind, kind == "dense"  # re-saved in the same form
        return linear
    raise ValueError(f"unknown module kind {kind!r} in llm4all_quant.json")
