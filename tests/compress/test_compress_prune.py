"""Pruners and low-rank factorisation: masks, SparseGPT vs magnitude, exact full rank."""

from __future__ import annotations

import pytest
import torch

from llm4all.compress.lowrank import choose_rank, saves_flops, svd_factorize
from llm4all.compress.prune.magnitude import magnitude_mask
from llm4all.compress.prune.sparsegpt import sparsegpt_prune
from llm4all.compress.prune.wanda import wanda_mask
from llm4all.compress.quantize.gptq import layer_error
from llm4all.errors import UserError


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(256, 32, generator=g) * torch.linspace(0.1, 3, 32)  # uneven feature scales
    return torch.randn(16, 32, generator=g), 2 * X.T @ X / 256, X


def test_two_four_masks_have_exactly_two_of_four():
    W, H, X = _data()
    masks = [magnitude_mask(W, 0, 2, 4), wanda_mask(W, X.norm(dim=0), 0, 2, 4),
             sparsegpt_prune(W, H, 0, 2, 4) == 0]
    for m in masks:
        assert torch.all(m.view(16, 8, 4).sum(-1) == 2)


def test_wanda_hand_computed_row_order():
    W = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    x_norm = torch.tensor([10.0, 1.0, 1.0, 0.1])  # scores 10, 2, 3, 0.4
    assert wanda_mask(W, x_norm, 0.5).tolist() == [[False, True, False, True]]
    assert magnitude_mask(W, 0.5).tolist() == [[True, True, False, False]]


def test_unstructured_sparsity_and_sparsegpt_beats_magnitude():
    W, H, X = _data(1)
    mag = W.masked_fill(magnitude_mask(W, 0.5), 0)
    sgpt = sparsegpt_prune(W, H, 0.5)
    assert (sgpt == 0).float().mean() == pytest.approx(0.5, abs=0.02)
    assert layer_error(W, sgpt, H) < layer_error(W, mag, H)


def test_bad_sparsity():
    W, H, _ = _data()
    for bad in (1.0, -0.1):
        with pytest.raises(UserError, match="sparsity"):
            sparsegpt_prune(W, H, bad)
    with pytest.raises(UserError, match="prunen"):
        sparsegpt_prune(W, H, 0.5, 4, 2)


def test_full_rank_svd_reproduces_layer_and_energy_rank():
    W, _, X = _data(2)
    U, V = svd_factorize(W, 16)
    assert torch.allclose(U @ V, W, atol=1e-5)
    scale = X.norm(dim=0) / X.norm(dim=0).mean()
    U, V = svd_factorize(W, 16, scale)  # activation-aware: still exact at full rank
    assert torch.allclose(U @ V, W, atol=1e-4)
    low = torch.diag(torch.tensor([10.0, 1, 0.1, 0.01]))
    assert choose_rank(low, energy=0.99) == 1 and choose_rank(low, energy=0.999) == 2
    assert choose_rank(low, ratio=0.5) == 2
    assert saves_flops(576, 576, 287) and not saves_flops(576, 576, 288)
