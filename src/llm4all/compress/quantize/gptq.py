"""GPTQ: one-shot weight quantisation with second-order error compensation.

Frantar, Ashkboos, Hoefler & Alistarh 2023, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", Algorithm 1. For a Linear with weight W (rows × cols)
and calibration inputs X, minimise ‖WX − ŴX‖² column by column: quantise column j, then
spread its error over the not-yet-quantised columns with the inverse Hessian H⁻¹, H = 2XXᵀ.
The three ingredients of the paper's fast form:

* arbitrary order (columns in the same order for every row) — or act-order, columns by
  decreasing diag(H) (the reference code's ``--act-order``);
* lazy batch updates: errors inside a block of ``blocksize`` columns update only the block;
  the rest of W is updated once per block with a matrix product;
* Cholesky reformulation: the needed rows of H⁻¹ are the rows of the upper Cholesky factor
  of H⁻¹ (computed once, after dampening H by ``percdamp`` · mean(diag H)).

Groups (``group_size``) get their scale and zero point when their first column is reached,
from the already-updated weights, as in the reference code. With act-order and groups the
group parameters are computed up front from W in its original column order (the reference
code's ``static_groups``), so packed groups stay contiguous and no column index is stored.
Rows are independent given H, so q/k/v (and gate/up), which read the same input, share one
Hessian, accumulated once by the calibration driver.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from llm4all.catalog import QUANTIZERS
from llm4all.compress.method import InputStats, Method, check_range
from llm4all.compress.quantize.rtn import Quantized, check_bits_group, quant_params, quantize_codes, to_module


def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int | None = None,
                  blocksize: int = 128, percdamp: float = 0.01, act_order: bool = False,
                  symmetric: bool = False) -> Quantized:
    """GPTQ (Algorithm 1) of W (rows, cols) given the Hessian H (cols, cols) of its inputs."""
    rows, cols = W.shape
    gs = check_bits_group(bits, group_size, cols)
    W = W.detach().float().clone()
    H = H.detach().float().clone()
    dead = torch.diag(H) == 0  # inputs that never fire: their columns cannot matter
    H[dead, dead] = 1
    W[:, dead] = 0
    static = None
    if act_order:
        if gs < cols:  # group parameters fixed from the original columns (static groups)
            static = quant_params(W.view(rows, cols // gs, gs), bits, symmetric)  # 2 × (rows, groups)
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    else:
        perm = torch.arange(cols)
    with single_thread():
        Hinv = _inverse_cholesky(H, percdamp)
        codes, scales, zeros = _columns(W, Hinv, perm, bits, gs, blocksize, symmetric, static)
    inverse = torch.argsort(perm)
    return Quantized(codes[:, inverse].to(torch.uint8), scales.half(),
                     None if symmetric else zeros.to(torch.uint8), bits, gs)


def _columns(W, Hinv, perm, bits, gs, blocksize, symmetric, static):
    """Algorithm 1's loop over blocks and columns; returns (codes, scales, zeros) as floats."""
    rows, cols = W.shape
    blocksize = max(gs, blocksize // gs * gs) if gs < cols else blocksize
    codes = torch.zeros(rows, cols)
    scales = torch.zeros(rows, cols // gs)
    zeros = torch.zeros(rows, cols // gs)
    scale = zero = None
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()  # (rows, block)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i  # position in the (possibly permuted) order
            g = int(perm[j]) // gs  # group of the original column
            if static is not None:
                scale, zero = static[0][:, g], static[1][:, g]
            elif j % gs == 0:  # first column of a group: parameters from the updated weights
                scale, zero = quant_params(W1[:, i : i + gs] if gs < cols else W, bits, symmetric)
                scales[:, g], zeros[:, g] = scale, zero
            w, d = W1[:, i], Hinv1[i, i]
            c = quantize_codes(w, scale, zero, bits)
            codes[:, j] = c
            err = (w - (c - zero) * scale) / d
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]  # within-block update
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # lazy batch update of the remaining columns
    if static is not None:
        scales, zeros = static
    return codes, scales, zeros


@contextlib.contextmanager
def single_thread():
    """Run with one intra-op thread: the column loop is ~10^4 small ops, and on a loaded 2-core
    machine LAPACK's threaded cholesky_inverse took 2 s (576²) and 20 s (1536²) instead of 0.02 s
    and 0.3 s on one thread (measured here, load average 4–11)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _inverse_cholesky(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)⁻¹, λ = percdamp · mean(diag H); λ grows ×10 if H is not PD."""
    mean = torch.mean(torch.diag(H))
    for attempt in range(4):
        damped = H.clone()
        damped.diagonal().add_(percdamp * 10**attempt * mean)
        L, info = torch.linalg.cholesky_ex(damped)
        if info == 0:
            return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    raise ValueError("GPTQ: the Hessian is not positive definite even with 1000× dampening")


def layer_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W − Ŵ) H (W − Ŵ)ᵀ): the GPTQ objective ‖WX − ŴX‖² for H = XXᵀ (up to its constant)."""
    D = (W - W_hat).float()
    return float(torch.sum((D @ H) * D))


@QUANTIZERS.register("gptq")
def gptq(bits: int = 4, group_size: int | None = 128, symmetric: bool = False, act_order: bool = False,
         blocksize: int = 128, percdamp: float = 0.01) -> Method:
    """GPTQ: column-wise quantisation with inverse-Hessian error updates (Frantar et al. 2023)."""
    check_bits_group(bits, None, 1, "gptq")
    check_range("percdamp", percdamp, 0.0, 1.0, "gptq")

    def compress(name: str, linear: nn.Linear, stats: InputStats | None) -> nn.Module:
        assert stats is not None and stats.hessian is not None
        check_bits_group(bits, group_size, linear.in_features, name)
        q = gptq_quantize(linear.weight, stats.hessian, bits, group_size, blocksize, percdamp,
                          act_order, symmetric)
        return to_module(q, linear)

    options = {"bits": bits, "group_size": group_size, "symmetric": symmetric, "act_order": act_order,
               "blocksize": blocksize, "percdamp": percdamp}
    return Method("gptq", options, compress, stats="hessian")
