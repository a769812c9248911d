"""SparseGPT: one-shot pruning with inverse-Hessian reconstruction of the kept weights.

Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot", Algorithm 1: columns are processed in blocks; inside a block the mask is chosen
by the OBS saliency w² / [H⁻¹]²_jj (adaptive mask selection, per block of ``blocksize``
columns or per N:M group), each pruned weight's error is spread over the later columns with
the Cholesky factor of H⁻¹, exactly as in GPTQ with "quantise" replaced by "zero if masked".
"""

from __future__ import annotations

import torch
from torch import nn

from llm4all.catalog import PRUNERS
from llm4all.compress.method import InputStats, Method
from llm4all.compress.prune.magnitude import check_sparsity, pruned_linear
from llm4all.compress.quantize.gptq import _inverse_cholesky, single_thread


def sparsegpt_prune(W: torch.Tensor, H: torch.Tensor, sparsity: float = 0.5, prunen: int = 0,
                    prunem: int = 0, blocksize: int = 128, percdamp: float = 0.01) -> torch.Tensor:
    """Pruned and reconstructed W (rows, cols) given the input Hessian H (cols, cols)."""
    check_sparsity(sparsity, prunen, prunem, "sparsegpt")
    rows, cols = W.shape
    W = W.detach().float().clone()
    H = H.detach().float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    with single_thread():  # many small ops: see gptq.py
        Hinv = _inverse_cholesky(H, percdamp)
        for i1 in range(0, cols, blocksize):
            i2 = min(i1 + blocksize, cols)
            W1 = W[:, i1:i2].clone()
            Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            d = torch.diag(Hinv1)[None, :]  # (1, block)
            if prunen == 0:  # adaptive mask: the block's lowest OBS saliencies
                tmp = W1**2 / d**2
                k = int(tmp.numel() * sparsity)
                mask1 = torch.zeros(tmp.numel(), dtype=torch.bool)
                mask1[torch.topk(tmp.flatten(), k, largest=False).indices] = True
                mask1 = mask1.view_as(W1)
            else:
                mask1 = torch.zeros_like(W1, dtype=torch.bool)
            for i in range(i2 - i1):
                w = W1[:, i]
                if prunen and i % prunem == 0:
                    tmp = W1[:, i : i + prunem] ** 2 / d[:, i : i + prunem] ** 2
                    mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False).indices, True)
                q = w.masked_fill(mask1[:, i], 0)
                Q1[:, i] = q
                err = (w - q) / Hinv1[i, i]
                W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
                Err1[:, i] = err
            W[:, i1:i2] = Q1
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W


@PRUNERS.register("sparsegpt")
def sparsegpt(sparsity: float = 0.5, prunen: int = 0, prunem: int = 0, blocksize: int = 128,
              percdamp: float = 0.01) -> Method:
    """SparseGPT: OBS mask selection + inverse-Hessian weight reconstruction (Frantar & Alistarh 2023)."""
    check_sparsity(sparsity, prunen, prunem, "sparsegpt")

    def compress(name: str, linear: nn.Linear, stats: InputStats | None) -> nn.Module:
        assert stats is not None and stats.hessian is not None
        W = sparsegpt_prune(linear.weight, stats.hessian, sparsity, prunen, prunem, blocksize, percdamp)
        return pruned_linear(linear, W)

    options = {"sparsity": sparsity, "prunen": prunen, "prunem": prunem, "blocksize": blocksize,
               "percdamp": percdamp}
    return Method("sparsegpt", options, compress, stats="hessian")
