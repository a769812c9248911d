"""Feature and relation KD: zeros at identity, invariances, reference parity, a projector that learns."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llm4all.distill.features import (
    FeatureProjector,
    attention_relation_loss,
    capture_qkv,
    default_layer_map,
    feature_loss,
    gram_relation_loss,
)
from llm4all.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(_randn(d, d, seed=seed))
    return q


def test_default_layer_map_is_uniform_and_ends_last_to_last():
    assert default_layer_map(3, 30) == [(1, 10), (2, 20), (3, 30)]
    assert default_layer_map(2, 2) == [(1, 1), (2, 2)]
    m = default_layer_map(4, 6)
    assert m[-1] == (4, 6) and [t for _, t in m] == sorted(t for _, t in m)
    with pytest.raises(UserError):
        default_layer_map(0, 4)


def test_feature_loss_zero_at_identity_projection_and_hand_value():
    hs = [_randn(2, 5, 8, seed=i) for i in range(3)]
    proj = FeatureProjector(8, 8, [(1, 1), (2, 2)])
    with torch.no_grad():
        for lin in proj.proj:
            lin.weight.copy_(torch.eye(8))
            lin.bias.zero_()
    for kind in ("mse", "cosine"):
        assert feature_loss(hs, hs, proj, kind=kind).item() == pytest.approx(0.0, abs=1e-6)
    # teacher = student + 1 everywhere: MSE is exactly 1; cosine ignores a rescaled teacher
    shifted = [h + 1.0 for h in hs]
    assert feature_loss(hs, shifted, proj, kind="mse").item() == pytest.approx(1.0, rel=1e-6)
    assert feature_loss(hs, [3.0 * h for h in hs], proj, kind="cosine").item() == pytest.approx(0.0, abs=1e-6)
    # a mask keeps positions: differences only at masked-out positions do not count
    noisy = [h.clone() for h in hs]
    for h in noisy:
        h[:, -1] += 5.0
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[:, -1] = False
    assert feature_loss(hs, noisy, proj, mask=mask).item() == pytest.approx(0.0, abs=1e-6)


def test_projector_learns_a_linear_map_between_widths():
    torch.manual_seed(0)
    student = [_randn(4, 6, 8, seed=10 + i) for i in range(3)]  # embeddings + 2 layers, width 8
    W = _randn(8, 12, seed=3)
    t1, t2 = student[1] @ W, student[2] @ W
    teacher = [_randn(4, 6, 12, seed=20), t1, t1, t2, t2]  # embeddings + 4 layers, width 12
    layer_map = default_layer_map(2, 4)  # [(1, 2), (2, 4)]
    proj = FeatureProjector(8, 12, layer_map)
    opt = torch.optim.Adam(proj.parameters(), lr=3e-2)
    first = None
    for _ in range(150):
        loss = feature_loss(student, teacher, proj, kind="mse")
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first


def test_feature_loss_bad_inputs():
    hs = [_randn(1, 3, 4)] * 2
    proj = FeatureProjector(4, 4, [(1, 5)])
    with pytest.raises(UserError, match="out of range"):
        feature_loss(hs, hs, proj)
    with pytest.raises(UserError, match="valid: cosine, mse"):
        feature_loss(hs, hs, FeatureProjector(4, 4, [(1, 1)]), kind="l1")
    with pytest.raises(UserError, match="empty"):
        FeatureProjector(4, 4, [])


def _naive_relation(qkv_s, qkv_t, R):
    total = 0.0
    for xs, xt in zip(qkv_s, qkv_t, strict=True):
        B, T, _ = xs.shape
        for b in range(B):
            for r in range(R):
                hs = xs[b].double().chunk(R, dim=-1)[r]
                ht = xt[b].double().chunk(R, dim=-1)[r]
                ps = torch.softmax(hs @ hs.T / math.sqrt(hs.shape[-1]), -1)
                pt = torch.softmax(ht @ ht.T / math.sqrt(ht.shape[-1]), -1)
                total += (pt * (pt / ps).log()).sum().item() / (B * R * T)
    return total


def test_attention_relation_matches_reference_with_different_widths():
    s = [_randn(2, 5, 16, seed=1), _randn(2, 5, 8, seed=2), _randn(2, 5, 8, seed=3)]   # GQA: k, v narrower
    t = [_randn(2, 5, 24, seed=4), _randn(2, 5, 12, seed=5), _randn(2, 5, 12, seed=6)]
    got = attention_relation_loss(s, t, n_relation_heads=4)
    assert got.item() == pytest.approx(_naive_relation(s, t, 4), rel=1e-5)
    assert got.item() > 0
    assert attention_relation_loss(s, s, n_relation_heads=4).item() == pytest.approx(0.0, abs=1e-6)
    # invariant to an orthogonal rotation inside each relation head (the relation is X·Xᵀ)
    rot = torch.block_diag(*[_orthogonal(4, seed=k) for k in range(4)])  # four 4x4 blocks, width 16
    rotated = [s[0] @ rot, s[1], s[2]]
    assert attention_relation_loss(rotated, s, n_relation_heads=4).item() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(UserError, match="valid: 1, 2, 4"):
        attention_relation_loss(s, t, n_relation_heads=5)


def test_attention_relation_masks_and_causal():
    s = [_randn(1, 4, 8, seed=7)]
    t = [_randn(1, 4, 8, seed=8)]
    mask = torch.tensor([[True, True, True, False]])
    t2 = [t[0].clone()]
    t2[0][:, -1] += 10.0  # only the masked position differs
    a = attention_relation_loss(s, t, n_relation_heads=2, mask=mask)
    b = attention_relation_loss(s, t2, n_relation_heads=2, mask=mask)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    c = attention_relation_loss(s, t, n_relation_heads=2, causal=True)
    assert torch.isfinite(c) and c.item() > 0
    # causal: the first row has a single key, so it contributes exactly 0
    c_first = attention_relation_loss([s[0][:, :1]], [t[0][:, :1]], n_relation_heads=2, causal=True)
    assert c_first.item() == pytest.approx(0.0, abs=1e-7)


def test_gram_relation_hand_value_and_rotation_invariance():
    h_s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # G_s = I
    h_t = torch.tensor([[[2.0, 0.0], [1.0, 0.0]]])  # G_t = all ones (after normalisation)
    assert gram_relation_loss(h_s, h_t).item() == pytest.approx(0.5)  # mean of [[0,1],[1,0]]
    h = _randn(3, 7, 16, seed=9)
    rotated = h @ _orthogonal(16, seed=1) * 2.5
    assert gram_relation_loss(h, rotated).item() == pytest.approx(0.0, abs=1e-6)
    wider = torch.cat([h, torch.zeros(3, 7, 8)], -1) @ _orthogonal(24, seed=2)  # teacher width 24
    assert gram_relation_loss(h, wider).item() == pytest.approx(0.0, abs=1e-6)
    assert gram_relation_loss(h, _randn(3, 7, 24, seed=3)).item() > 0.01
    with pytest.raises(UserError, match="differ"):
        gram_relation_loss(h, h[:, :5])


def _tiny_llama(hidden: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def test_capture_qkv_records_the_projections_and_feeds_relation_kd():
    student, teacher = _tiny_llama(32, 0), _tiny_llama(48, 1)
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    with capture_qkv(student, -1) as qkv_s:
        out = student(ids, output_hidden_states=True)
    layer = student.model.layers[1]
    x = layer.input_layernorm(out.hidden_states[1])
    torch.testing.assert_close(qkv_s["q"], layer.self_attn.q_proj(x))
    torch.testing.assert_close(qkv_s["v"], layer.self_attn.v_proj(x))
    assert qkv_s["k"].shape == (2, 6, 16)  # 2 KV heads x head_dim 8
    with torch.no_grad(), capture_qkv(teacher, 1) as qkv_t:
        teacher(ids)
    qs = [qkv_s[k] for k in "qkv"]
    loss = attention_relation_loss(qs, [qkv_t[k] for k in "qkv"], n_relation_heads=4)
    loss.backward()
    assert loss.item() > 0 and student.model.layers[1].self_attn.q_proj.weight.grad.abs().sum() > 0
    n_hooks = len(layer.self_attn.q_proj._forward_hooks)
    assert n_hooks == 0  # removed on exit
    with pytest.raises(UserError, match="out of range"), capture_qkv(student, 5):
        pass


def test_cosine_feature_gradient_matches_functional():
    hs = [_randn(1, 3, 4, seed=1), _randn(1, 3, 4, seed=2)]
    ht = [_randn(1, 3, 6, seed=3), _randn(1, 3, 6, seed=4)]
    proj = FeatureProjector(4, 6, [(1, 1)])
    got = feature_loss(hs, ht, proj, kind="cosine")
    ref = (1 - F.cosine_similarity(proj.proj[0](hs[1]), ht[1], dim=-1)).mean()
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
