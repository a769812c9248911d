"""The CPU weight-only kernels a packed Linear runs through, and their weight layouts.

PyTorch ships two weight-only matrix products for the CPU that never de-quantise a matrix:
``_weight_int4pack_mm_for_cpu`` (the "tinygemm" int4 kernel torchao uses; groups of 32-256
input columns, blocks of 64 output rows) and ``_weight_int8pack_mm`` (int8 per output
channel). ``to_kernel_layout`` re-lays 4-bit codes out in the int4 kernel's order;
``kernels_enabled`` says whether they may run (``LLM4ALL_QKERNEL=0`` forces exact
de-quantisation). ``scratch`` is the de-quantisation buffer the exact path shares.
"""

from __future__ import annotations

import logging
import os

import torch

_SCRATCH: dict[tuple, torch.Tensor] = {}


def scratch(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """A reusable buffer on ``device`` (not thread-safe: the result is valid until the next call).

    One per inference mode too: a tensor made under ``torch.inference_mode`` cannot be written
    outside it (``perplexity`` runs in inference mode, ``model(...)`` under ``no_grad`` does not).
    """
    key = (shape, dtype, str(device), torch.is_inference_mode_enabled())
    if key not in _SCRATCH:
        _SCRATCH[key] = torch.empty(shape, dtype=dtype, device=device)
    return _SCRATCH[key]


KERNEL_BLOCK_N = 64  # output rows per block in the CPU int4 kernel's weight layout
KERNEL_GROUPS = (256, 128, 64, 32)  # group sizes the kernel accepts
INT8_KERNEL_K = 16  # _weight_int8pack_mm (torch 2.13) crashes the process when in_features % 16 != 0


ALIGNMENT = 64  # bytes: torch's own allocations; the CPU int4/int8 kernels assume at least this


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it whose data starts on an ALIGNMENT-byte boundary.

    safetensors hands out tensors at their offsets in the file (8-byte aligned), and
    ``_weight_int8pack_mm`` (torch 2.13) crashes the process on an int8 matrix that starts
    56 bytes past a 64-byte boundary (found on a student checkpoint whose embedding followed an
    odd number of float16 scales); a copy is allocated by torch, aligned.
    """
    return t if t.data_ptr() % ALIGNMENT == 0 else t.clone()


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


HAS_KERNELS = all(hasattr(torch.ops.aten, op) for op in ("_weight_int4pack_mm_for_cpu",
                                                         "_weight_int8pack_mm"))


def kernels_enabled() -> bool:
    """Whether the CPU weight-only kernels may run (``LLM4ALL_QKERNEL=0`` forces exact de-quantisation)."""
    return HAS_KERNELS and os.environ.get("LLM4ALL_QKERNEL", "1") != "0"


# --- CUDA -----------------------------------------------------------------------------------
# torch's CUDA int4 kernel (``_weight_int4pack_mm``, tinygemm, sm80+) takes the same
# (K/group, N, 2) bf16 scales-and-offsets as the CPU one, and a weight tiled by
# ``_convert_weight_to_int4pack`` from bytes holding two codes, high nibble first.
CUDA_INNER_K_TILES = 8  # the conversion's tiling: K must be a multiple of 16 · CUDA_INNER_K_TILES
CUDA_CHECK_TOLERANCE = 2e-2  # relative error of the kernel's first product against the exact one

_log = logging.getLogger("llm4all.models.packed")
_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Log ``message`` once per process (one line per kind of layer that cannot use a kernel)."""
    if key not in _WARNED:
        _WARNED.add(key)
        _log.warning(message)


def cuda_int4_layout(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes (N, K) on a CUDA device -> the CUDA int4 kernel's tiled weight."""
    c = codes.to(torch.uint8)
    return torch.ops.aten._convert_weight_to_int4pack((c[:, ::2] << 4) | c[:, 1::2], CUDA_INNER_K_TILES)


def agrees(y: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether a kernel's product ``y`` matches the exact ``reference`` (relative Frobenius error)."""
    err = (y.float() - reference.float()).norm() / reference.float().norm().clamp(min=1e-12)
    return bool(err <= CUDA_CHECK_TOLERANCE)
