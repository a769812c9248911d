"""Bit packing and the on-disk layout of a compressed checkpoint.

A compressed checkpoint is a Hugging Face directory (``config.json``, tokenizer files) whose
``model.safetensors`` holds packed tensors, plus ``llm4all_quant.json`` that says how to read
them (format ``llm4all-compress/1``, documented in docs/compress.md):

* a quantised Linear ``NAME`` (``bits`` b, groups of ``group_size`` input columns):
  ``NAME.qweight`` uint8 (out, ceil(in·s/8)) codes packed along the input dimension, where
  s = 8 bits per code for b = 8, 4 for b ∈ {3, 4} (two codes per byte, low nibble = even
  column) and 2 for b = 2 (four codes per byte, lowest bits = first column);
  ``NAME.scales`` float16 (out, in / group_size); ``NAME.zeros`` uint8 (out, in / group_size)
  when asymmetric (a symmetric code c means (c − 2^(b−1))·scale). Weight = (code − zero)·scale.
* a ternary (BitNet b1.58) Linear: ``NAME.qweight`` uint8 (out, ceil(in/4)) with codes
  w + 1 ∈ {0, 1, 2}, four per byte, and ``NAME.scales`` float32 (1,) = γ (Ma et al. 2024).
* a sparse (pruned) Linear: ``NAME.mask`` uint8 (out, ceil(in/8)) little-endian bit mask and
  ``NAME.values`` float16 (nnz,) the kept weights in row-major order.
* a low-rank Linear: ``NAME.U`` (out, r) and ``NAME.V`` (r, in) in float16.
* every other tensor (embeddings, norms, dense Linears) in float16.

Codes are unsigned: a b-bit code lies in [0, 2^b − 1].
"""

from __future__ import annotations

import torch

FORMAT = "llm4all-compress/1"
BITS = (2, 3, 4, 8)


def storage_bits(bits: int) -> int:
    """Bits each code occupies on disk: 3-bit codes use a 4-bit nibble (no cross-byte codes)."""
    return {2: 2, 3: 4, 4: 4, 8: 8}[bits]


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (rows, cols) into uint8 (rows, ceil(cols·s/8)), s = storage_bits."""
    s = storage_bits(bits)
    codes = codes.to(torch.uint8)
    if s == 8:
        return codes.contiguous()
    per = 8 // s
    rows, cols = codes.shape
    pad = (-cols) % per
    if pad:
        codes = torch.nn.functional.pad(codes, (0, pad))
    codes = codes.view(rows, -1, per)  # (rows, bytes, codes per byte)
    out = torch.zeros(codes.shape[:2], dtype=torch.uint8, device=codes.device)
    for k in range(per):
        out |= codes[:, :, k] << (k * s)
    return out


def unpack(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of ``pack``: uint8 codes (rows, cols)."""
    s = storage_bits(bits)
    if s == 8:
        return packed[:, :cols]
    mask = (1 << s) - 1
    shifts = torch.arange(0, 8, s, dtype=torch.uint8, device=packed.device)  # (per,)
    codes = (packed[:, :, None] >> shifts) & mask  # (rows, bytes, per)
    return codes.reshape(packed.shape[0], -1)[:, :cols]


def pack_ternary(w: torch.Tensor) -> torch.Tensor:
    """Ternary weights {−1, 0, +1} (rows, cols) -> uint8 (rows, ceil(cols/4)), 2 bits each."""
    return pack((w + 1).to(torch.uint8), 2)


def unpack_ternary(packed: torch.Tensor, cols: int) -> torch.Tensor:
    return unpack(packed, 2, cols).to(torch.int8) - 1


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Boolean (rows, cols) -> uint8 (rows, ceil(cols/8)), bit k of byte j = column 8j+k."""
    rows, cols = mask.shape
    pad = (-cols) % 8
    m = torch.nn.functional.pad(mask.to(torch.uint8), (0, pad)).view(rows, -1, 8)
    shifts = torch.arange(8, dtype=torch.uint8, device=mask.device)
    return (m << shifts).sum(-1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, cols: int) -> torch.Tensor:
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed[:, :, None] >> shifts) & 1
    return bits.reshape(packed.shape[0], -1)[:, :cols].bool()


def sparse_tensors(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Bit mask + float16 non-zeros of a pruned weight (smaller than dense fp16 below ~94% density)."""
    mask = weight != 0
    return {"mask": pack_mask(mask), "values": weight[mask].to(torch.float16)}


def dense_from_sparse(mask: torch.Tensor, values: torch.Tensor, shape: tuple[int, int],
                      dtype: torch.dtype) -> torch.Tensor:
    dense = torch.zeros(shape, dtype=dtype, device=mask.device)
    dense[unpack_mask(mask, shape[1])] = values.to(dtype)
    return dense
