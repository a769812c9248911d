"""Quantizers: packing round trips, RTN anchors, GPTQ ≤ RTN, bad inputs."""

from __future__ import annotations

import pytest
import torch

from llm4all.compress.quantize.gptq import gptq_quantize, layer_error
from llm4all.compress.quantize.rtn import rtn_quantize
from llm4all.errors import UserError
from llm4all.models.packed.formats import pack, pack_mask, pack_ternary, unpack, unpack_mask, unpack_ternary


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_round_trip(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (5, 37), generator=g, dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (5, {2: 10, 3: 19, 4: 19, 8: 37}[bits])  # ceil(37·s/8)
    assert torch.equal(unpack(packed, bits, 37), codes)


def test_int4_nibble_order_is_documented_low_first():
    assert pack(torch.tensor([[3, 12]], dtype=torch.uint8), 4).item() == 3 | (12 << 4)
    assert pack(torch.tensor([[1, 2, 0, 3]], dtype=torch.uint8), 2).item() == 1 | 2 << 2 | 3 << 6


def test_ternary_and_mask_round_trip():
    w = torch.tensor([[-1, 0, 1, 1, -1], [0, 0, -1, 1, 0]], dtype=torch.int8)
    assert torch.equal(unpack_ternary(pack_ternary(w), 5), w)
    m = torch.rand(3, 19, generator=torch.Generator().manual_seed(0)) > 0.5
    assert torch.equal(unpack_mask(pack_mask(m), 19), m)


def test_rtn_hand_computed_symmetric_int8():
    W = torch.tensor([[1.0, -0.5, 0.25, 0.0]])
    q = rtn_quantize(W, 8, None, symmetric=True)
    # s = 1/127; codes = round(w·127) + 128
    assert q.codes.tolist() == [[255, 128 - 64, 128 + 32, 128]]  # -63.5 rounds to -64 (half to even)
    assert torch.allclose(q.dequantize(), W, atol=1 / 254)


def test_rtn_asymmetric_keeps_zero_exact_and_error_bound():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(8, 32, generator=g)
    W[0, :4] = 0
    q = rtn_quantize(W, 4, 8, symmetric=False)
    Wq = q.dequantize()
    assert torch.all(Wq[0, :4] == 0)
    step = q.scales.float().repeat_interleave(8, dim=1)
    assert torch.all((W - Wq).abs() <= step / 2 + 1e-6)
    assert q.zeros is not None and q.zeros.max() <= 15


def test_gptq_error_not_above_rtn():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(512, 64, generator=g) @ torch.randn(64, 64, generator=g)  # correlated inputs
    W = torch.randn(48, 64, generator=g)
    H = 2 * X.T @ X / X.shape[0]
    for bits, gs in [(4, 16), (3, 32), (4, None)]:
        rtn = rtn_quantize(W, bits, gs, symmetric=False).dequantize()
        gptq = gptq_quantize(W, H, bits, gs).dequantize()
        assert layer_error(W, gptq, H) <= layer_error(W, rtn, H)
        assert layer_error(W, gptq, H) < 0.8 * layer_error(W, rtn, H)  # and clearly better
    act = gptq_quantize(W, H, 4, 16, act_order=True).dequantize()
    assert layer_error(W, act, H) < layer_error(W, rtn_quantize(W, 4, 16, False).dequantize(), H)


def test_gptq_with_identity_hessian_is_rtn():
    """With H = I there is no correlation to exploit: GPTQ reduces to round-to-nearest."""
    W = torch.randn(6, 32, generator=torch.Generator().manual_seed(2))
    q = gptq_quantize(W, torch.eye(32), 4, 8, percdamp=0.0)
    assert torch.equal(q.codes, rtn_quantize(W, 4, 8, symmetric=False).codes)


def test_bad_bits_and_group_size():
    W = torch.randn(4, 32)
    with pytest.raises(UserError, match="does not divide"):
        rtn_quantize(W, 4, 12)
    with pytest.raises(UserError, match="bits must be one of"):
        rtn_quantize(W, 5, 8)
    with pytest.raises(UserError, match="does not divide"):
        gptq_quantize(W, torch.eye(32), 4, 24)
    with pytest.raises(UserError, match=r"group_size 0: use -1 \(or null\) for per-channel"):
        rtn_quantize(W, 4, 0)
    assert rtn_quantize(W, 4, -1).group_size == 32 == rtn_quantize(W, 4, None).group_size
