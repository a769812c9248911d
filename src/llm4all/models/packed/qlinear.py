"""``QuantLinear``: group-wise b-bit weights (RTN, GPTQ) stored packed, run packed.

On CPU without autograd it runs PyTorch's weight-only kernels (``kernels.py``), which never
de-quantise the matrix: codes of at most 4 bits through ``_weight_int4pack_mm_for_cpu``,
8-bit per-channel codes through ``_weight_int8pack_mm``; activations and outputs pass through
bf16 there (perplexity of the quickstart's GPTQ int4 student: 127.08 against 127.07 exact).
On first use the packed codes are re-laid out in place into the kernel's order (the same
bytes, so no second copy); ``state_dict`` writes llm4all's order back. On CUDA, ≤ 4-bit
layers run torch's CUDA int4 kernel (``_weight_int4pack_mm``) from a tiled copy of their codes,
after one check against the exact product. Otherwise (autograd, 8-bit on CUDA, group-wise
8-bit, shapes the kernels refuse, or ``LLM4ALL_QKERNEL=0``) each forward de-quantises into a
scratch buffer shared by all layers (one per shape, dtype and device, so a 30-layer model holds
one de-quantised matrix at a time, not thirty) and calls ``F.linear``; on CUDA one warning
line says so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llm4all.models.packed.formats import pack, storage_bits, unpack
from llm4all.models.packed.kernels import (
    CUDA_INNER_K_TILES,
    INT8_KERNEL_K,
    KERNEL_BLOCK_N,
    KERNEL_GROUPS,
    agrees,
    cuda_int4_layout,
    from_kernel_layout,
    kernels_enabled,
    scratch,
    to_kernel_layout,
    warn_once,
)


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
        self._cuda = None  # (weight, group, scales) in the CUDA int4 kernel's layout; False: none

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

    def _scales_zeros(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 scales and zero points (out, groups); a symmetric layer's zero is 2^(bits−1)."""
        scales = self.scales.float()
        return scales, (torch.full_like(scales, 2.0 ** (self.bits - 1)) if self.symmetric
                        else self.zeros.float())

    def _int4_scales(self) -> tuple[int, torch.Tensor]:
        """(group, bf16 (in / group, out, 2)) for torch's int4 kernels (CPU and CUDA alike).

        They compute (q − 8)·s + m per group, so m = (8 − zero)·s gives our (q − zero)·s; a group
        they do not take (per-channel, 192, ...) is its divisors' groups, scales repeated.
        """
        scales, zeros = self._scales_zeros()
        group = next(g for g in KERNEL_GROUPS if self.group_size % g == 0)
        sz = torch.stack([scales, (8.0 - zeros) * scales], -1)  # (out, groups, 2)
        sz = sz.repeat_interleave(self.group_size // group, dim=1)  # (out, in / group, 2)
        return group, sz.transpose(0, 1).contiguous().to(torch.bfloat16)

    def _to_kernel(self, kind: str) -> None:
        """Re-lay ``qweight`` out for ``kind``'s kernel (replacing the old order) and build its scales."""
        codes = self.codes()
        scales, zeros = self._scales_zeros()
        if kind == "int4":
            self._kernel_group, self._kernel_scales = self._int4_scales()
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
        self._cuda = None  # new codes: the CUDA layout is rebuilt on next use
        if self._kernel is not None:  # loading brings llm4all's order (and its shape) back
            cols = -(-self.in_features * storage_bits(self.bits) // 8)
            self.qweight = torch.empty(self.out_features, cols, dtype=torch.uint8, device=self.qweight.device)
            self._kernel = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def dense_weight(self, dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None):
        rows, cols, gs = self.out_features, self.in_features, self.group_size
        w = torch.empty(rows, cols, dtype=torch.float32, device=self.qweight.device) if out is None else out
        w.copy_(self.codes())
        w3 = w.view(rows, cols // gs, gs)  # (out, groups, group_size)
        if self.symmetric:
            w3.sub_(2 ** (self.bits - 1))
        else:
            w3.sub_(self.zeros.float()[..., None])
        w3.mul_(self.scales.float()[..., None])
        return w if dtype == torch.float32 else w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inference = not (torch.is_grad_enabled() and x.requires_grad) and kernels_enabled()
        if inference and x.device.type == "cpu" and self.qweight.device.type == "cpu":
            if self._kernel is None and (kind := self._kernel_kind()) is not None:
                self._to_kernel(kind)
            if self._kernel is not None:
                return self._kernel_forward(x)
        if inference and x.device.type == "cuda" and (y := self._cuda_forward(x)) is not None:
            return y
        return F.linear(x, self._exact_weight(x), None if self.bias is None else self.bias.to(x.dtype))

    def _exact_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The de-quantised matrix in ``x``'s dtype, in the scratch buffer of ``x``'s device."""
        buffer = scratch((self.out_features, self.in_features), torch.float32, x.device)
        return self.dense_weight(x.dtype, out=buffer)

    def _cuda_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """torch's CUDA int4 kernel, checked once per layer against the exact product.

        None (the caller de-quantises, and one warning line says so) where the layer has more
        than 4 bits, a shape the kernel's tiling refuses, or a device or build without the kernel.
        """
        if self._cuda is None:
            self._cuda = self._cuda_kernel(x)
        if self._cuda is False:
            return None
        packed, group, sz = self._cuda
        y = torch.ops.aten._weight_int4pack_mm(x.reshape(-1, self.in_features).to(torch.bfloat16),
                                               packed, group, sz).to(x.dtype)
        if self.bias is not None:
            y += self.bias.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def _cuda_kernel(self, x: torch.Tensor):
        why = ("has more than 4 bits" if storage_bits(self.bits) != 4 else
               "has a shape the kernel's tiling refuses"
               if self.in_features % (16 * CUDA_INNER_K_TILES) or self.out_features % 8
               or not any(self.group_size % g == 0 for g in KERNEL_GROUPS) else "")
        if not why:
            try:
                group, sz = self._int4_scales()
                kernel = (cuda_int4_layout(self.codes()), group, sz.to(x.device))
                self._cuda = kernel
                sample = x.reshape(-1, self.in_features)[:64]
                if agrees(self._cuda_forward(sample), F.linear(sample, self._exact_weight(sample))):
                    return kernel
                why = "disagrees with the exact product"
            except (RuntimeError, NotImplementedError) as e:
                why = f"cannot run here ({str(e).splitlines()[0][:80]})"
        warn_once(f"cuda-{why[:12]}", f"a packed {self.bits}-bit Linear {why} for torch's CUDA int4 "
                  f"kernel: such layers are de-quantised on every call on {x.device}")
        return False

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
