"""Fused head + offline KD loss: parity with the unfused sparse_kd + cross-entropy, bf16, bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm4all.distill.fused import fused_sparse_kd_ce
from llm4all.distill.losses import sparse_kd
from llm4all.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, H, V, K = 37, 16, 300, 8  # positions, hidden, vocabulary, top-k


def _case(seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=g) * 0.5).to(dtype).requires_grad_()
    t_logp = torch.log_softmax(torch.randn(N, V, generator=g) * 2, -1)
    vals, ids = t_logp.topk(K, -1)
    rest = torch.log1p(-vals.exp().sum(-1))
    labels = torch.randint(0, V, (N,), generator=g)
    labels[[3, 10]] = -100  # ignored positions
    return hidden, weight, labels, ids, vals, rest


def _unfused(hidden, weight, labels, ids, vals, rest, alpha, **kw):
    z = hidden @ weight.t()
    kd = sparse_kd(z, ids, vals, rest_logp=rest, labels=labels, **kw)
    ce = F.cross_entropy(z.float(), labels)
    return alpha * kd + (1 - alpha) * ce, kd, ce


@pytest.mark.parametrize("mode, divergence, T, alpha, opts", [
    ("renormalize", "forward_kl", 1.0, 0.9, {}),   # closed-form gradient
    ("renormalize", "forward_kl", 2.0, 0.5, {}),
    ("bucket", "forward_kl", 1.0, 0.7, {}),
    ("bucket", "reverse_kl", 1.0, 1.0, {}),        # autograd per chunk
    ("renormalize", "jsd", 1.5, 0.3, {"beta": 0.9}),
    ("bucket", "forward_kl", 1.0, 0.0, {}),        # CE only
])
def test_values_and_gradients_equal_the_unfused_loss(mode, divergence, T, alpha, opts):
    case = _case(0)
    kw = dict(mode=mode, divergence=divergence, temperature=T, **opts)
    loss, kd, ce = fused_sparse_kd_ce(*case, alpha=alpha, chunk=10, **kw)  # 4 chunks, the last short
    grads = torch.autograd.grad(loss, case[:2])
    ref_loss, ref_kd, ref_ce = _unfused(*case, alpha, **kw)
    ref_grads = torch.autograd.grad(ref_loss, case[:2])
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kd, ref_kd.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ce, ref_ce.detach(), rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert not kd.requires_grad and not ce.requires_grad


def test_bucket_gradient_is_exact_when_the_student_puts_all_mass_on_the_ids():
    hidden, weight, labels, ids, vals, rest = _case(1)
    with torch.no_grad():  # the student's logits on the teacher's ids dwarf every other logit
        weight.mul_(0.01)
        weight[ids[0]] = hidden[0].sign() * 30.0
    loss, _, _ = fused_sparse_kd_ce(hidden, weight, labels, ids, vals, rest, alpha=1.0, mode="bucket")
    ref, _, _ = _unfused(hidden, weight, labels, ids, vals, rest, 1.0, mode="bucket")
    got, want = torch.autograd.grad(loss, hidden), torch.autograd.grad(ref, hidden)
    assert torch.isfinite(got[0]).all()
    torch.testing.assert_close(got[0], want[0], rtol=1e-3, atol=1e-5)


def test_zero_kd_when_the_student_is_the_teacher():
    hidden = torch.eye(V)[:N].requires_grad_()  # (N, V): one-hot, so logits_i = column i of the weight
    t_logits = torch.randn(N, V) * 2
    weight = torch.zeros(V, V)
    weight[:, :N] = t_logits.t()  # hidden_i · Wᵀ = t_logits_i
    vals, ids = torch.log_softmax(t_logits, -1).topk(K, -1)
    rest = torch.log1p(-vals.exp().sum(-1))
    labels = torch.zeros(N, dtype=torch.long)
    for mode in ("renormalize", "bucket"):
        _, kd, _ = fused_sparse_kd_ce(hidden, weight, labels, ids, vals, rest, alpha=1.0, mode=mode)
        assert kd.item() == pytest.approx(0.0, abs=1e-5)


def test_bf16_autocast_runs_the_head_in_bf16_and_the_loss_in_fp32():
    case = _case(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, kd, ce = fused_sparse_kd_ce(*case, alpha=0.9, mode="bucket")
    ref, _, _ = _unfused(*case, 0.9, mode="bucket")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=2e-2)
    grad_w = torch.autograd.grad(loss, case[1])[0]
    assert grad_w.dtype == torch.float32 and torch.isfinite(grad_w).all()


def test_bad_inputs():
    case = _case(3)
    with pytest.raises(UserError, match="needs temperature 1"):
        fused_sparse_kd_ce(*case, mode="bucket", temperature=2.0)
    with pytest.raises(UserError, match="unknown sparse KD mode"):
        fused_sparse_kd_ce(*case, mode="ghost")
    with pytest.raises(UserError, match="do not match"):
        fused_sparse_kd_ce(case[0], case[1], case[2][:-1], *case[3:])
    with pytest.raises(UserError, match="unknown KD divergence"):
        fused_sparse_kd_ce(*case, divergence="kl")
