"""KD losses: invariants, hand-computed values, parity with naive formulas, chunking, top-k."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llm4all.catalog import KD_LOSSES
from llm4all.distill.losses import DIVERGENCES, kd_and_ce, kd_loss, sparse_kd
from llm4all.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "total_variation"]


def _logits(seed: int, shape=(2, 5, 11), scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale


def naive(name: str, s: torch.Tensor, t: torch.Tensor, T: float = 1.0, **opts) -> torch.Tensor:
    """Reference in float64 probability space, straight from the papers' formulas."""
    q, p = torch.softmax(s.double() / T, -1), torch.softmax(t.double() / T, -1)

    def KL(a, b):
        return (a * torch.log(a / b)).sum(-1)

    if name == "forward_kl":
        d = KL(p, q)
    elif name == "reverse_kl":
        d = KL(q, p)
    elif name == "jsd":
        b = opts.get("beta", 0.5)
        m = b * p + (1 - b) * q
        d = b * KL(p, m) + (1 - b) * KL(q, m)
    elif name == "skew_kl":
        a = opts.get("skew", 0.1)
        d = KL(p, a * p + (1 - a) * q)
    elif name == "skew_reverse_kl":
        a = opts.get("skew", 0.1)
        d = KL(q, a * q + (1 - a) * p)
    else:
        d = 0.5 * (p - q).abs().sum(-1)
    return d.mean() * T**2


def test_registry_lists_every_divergence_with_a_citation():
    assert KD_LOSSES.names() == sorted(NAMES) == sorted(DIVERGENCES)
    for name, line in KD_LOSSES.describe():
        assert any(str(y) in line for y in (2015, 2023, 2024)), (name, line)


@pytest.mark.parametrize("name", NAMES)
def test_zero_when_student_equals_teacher_and_nonnegative(name):
    t = _logits(0)
    assert KD_LOSSES.get(name)(t.clone(), t, temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    for seed in range(1, 6):
        assert KD_LOSSES.get(name)(_logits(seed), t).item() >= 0.0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("T", [1.0, 2.5])
def test_value_and_gradient_match_naive_formula(name, T):
    s, t = _logits(1).requires_grad_(), _logits(2)
    got = KD_LOSSES.get(name)(s, t, temperature=T)
    (g_got,) = torch.autograd.grad(got, s)
    s64 = s.detach().double().requires_grad_()
    ref = naive(name, s64, t, T)
    (g_ref,) = torch.autograd.grad(ref, s64)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(g_got.double(), g_ref, rtol=1e-4, atol=1e-7)


def test_two_class_hand_values():
    """p_teacher = (0.8, 0.2), q_student = (0.5, 0.5), worked by hand."""
    t = torch.log(torch.tensor([[0.8, 0.2]]))
    s = torch.log(torch.tensor([[0.5, 0.5]]))
    fkl = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)  # 0.192745
    rkl = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)  # 0.223144
    jsd = 0.5 * (0.8 * math.log(0.8 / 0.65) + 0.2 * math.log(0.2 / 0.35)) \
        + 0.5 * (0.5 * math.log(0.5 / 0.65) + 0.5 * math.log(0.5 / 0.35))  # 0.050672, m = (0.65, 0.35)
    skew = 0.8 * math.log(0.8 / 0.53) + 0.2 * math.log(0.2 / 0.47)  # m = 0.1 p + 0.9 q = (0.53, 0.47)
    expected = {"forward_kl": fkl, "reverse_kl": rkl, "jsd": jsd, "skew_kl": skew, "total_variation": 0.3}
    for name, value in expected.items():
        assert KD_LOSSES.get(name)(s, t).item() == pytest.approx(value, rel=1e-5), name
    assert fkl == pytest.approx(0.192745, abs=1e-6) and jsd == pytest.approx(0.050672, abs=1e-6)
    # T² scaling (Hinton): at T = 2 the softened KL is multiplied by 4
    soft = naive("forward_kl", s, t, 2.0).item()
    assert KD_LOSSES.get("forward_kl")(s, t, temperature=2.0).item() == pytest.approx(soft, rel=1e-5)


def test_jsd_endpoints_and_symmetry_and_skew_zero():
    s, t = _logits(3), _logits(4)
    f = KD_LOSSES.get("forward_kl")(s, t)
    r = KD_LOSSES.get("reverse_kl")(s, t)
    jsd = KD_LOSSES.get("jsd")
    assert jsd(s, t, beta=0.0).item() == pytest.approx(f.item(), rel=1e-6)
    assert jsd(s, t, beta=1.0).item() == pytest.approx(r.item(), rel=1e-6)
    assert jsd(s, t, beta=0.5).item() == pytest.approx(jsd(t, s, beta=0.5).item(), rel=1e-5)
    for beta in (0.1, 0.9):  # the formula at other β, against the float64 reference
        assert jsd(s, t, beta=beta).item() == pytest.approx(naive("jsd", s, t, beta=beta).item(), rel=1e-5)
    assert KD_LOSSES.get("skew_kl")(s, t, skew=0.0).item() == pytest.approx(f.item(), rel=1e-6)
    assert KD_LOSSES.get("skew_reverse_kl")(s, t, skew=0.0).item() == pytest.approx(r.item(), rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_chunked_equals_unchunked_values_and_gradients(name):
    t = _logits(5, (3, 7, 13))
    labels = torch.randint(0, 13, (3, 7), generator=torch.Generator().manual_seed(0))
    labels[0, :3] = -100
    grads, values = [], []
    for chunk in (None, 4, 5, 100):
        s = _logits(6, (3, 7, 13)).requires_grad_()
        loss = kd_loss(name, s, t, labels, alpha=0.7, temperature=1.5, chunk_size=chunk)
        loss.backward()
        values.append(loss.item())
        grads.append(s.grad)
    for v, g in zip(values[1:], grads[1:], strict=True):
        assert v == pytest.approx(values[0], abs=1e-6)
        torch.testing.assert_close(g, grads[0], rtol=0, atol=1e-6)


def test_ignore_index_masks_positions_and_alpha_mixes_with_cross_entropy():
    s, t = _logits(7), _logits(8)
    labels = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(1))
    labels[1, 2:] = -100
    keep = labels != -100
    kd, ce = kd_and_ce("forward_kl", s, t, labels)
    assert kd.item() == pytest.approx(naive("forward_kl", s[keep], t[keep]).item(), rel=1e-5)
    assert ce.item() == pytest.approx(F.cross_entropy(s.reshape(-1, 11), labels.reshape(-1)).item(), rel=1e-6)
    ce_at_t2 = kd_and_ce("forward_kl", s, t, labels, temperature=2.0)[1]  # hard labels stay at T = 1
    assert ce_at_t2.item() == pytest.approx(ce.item(), rel=1e-6)
    total = kd_loss("forward_kl", s, t, labels, alpha=0.25)
    assert total.item() == pytest.approx(0.25 * kd.item() + 0.75 * ce.item(), rel=1e-6)
    assert kd_loss("forward_kl", s, t, labels, alpha=0.0).item() == pytest.approx(ce.item(), rel=1e-6)
    # all positions ignored: zero, not nan
    assert kd_loss("reverse_kl", s, t, torch.full_like(labels, -100)).item() == 0.0


def test_bf16_logits_are_computed_in_fp32():
    s, t = _logits(9), _logits(10)
    got = KD_LOSSES.get("forward_kl")(s.bfloat16(), t.bfloat16())
    assert got.dtype == torch.float32
    ref = naive("forward_kl", s.bfloat16().float(), t.bfloat16().float())
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_bad_inputs_are_user_errors():
    s, t = _logits(0), _logits(1)
    with pytest.raises(UserError, match="did you mean 'forward_kl'"):
        kd_loss("forward_kll", s, t, None, alpha=1.0)
    with pytest.raises(UserError, match="unknown option 'bta'"):
        kd_loss("jsd", s, t, None, alpha=1.0, bta=0.3)
    with pytest.raises(UserError, match="differ"):
        kd_loss("forward_kl", s, t[..., :7], None, alpha=1.0)
    with pytest.raises(UserError, match="labels are needed"):
        kd_loss("forward_kl", s, t, None, alpha=0.5)
    with pytest.raises(UserError, match="temperature"):
        kd_loss("forward_kl", s, t, None, alpha=1.0, temperature=0.0)
    with pytest.raises(UserError, match="beta"):
        kd_loss("jsd", s, t, None, alpha=1.0, beta=1.5)


# ---- sparse (top-k) ----------------------------------------------------------------------

def _topk(t: torch.Tensor, k: int):
    logp = torch.log_softmax(t.float(), -1)
    vals, ids = logp.topk(k, dim=-1)
    rest = torch.logsumexp(logp.scatter(-1, ids, float("-inf")), -1)
    return ids, vals, rest


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd", "total_variation"])
@pytest.mark.parametrize("mode", ["renormalize", "bucket"])
def test_sparse_with_k_equal_vocab_equals_dense(divergence, mode):
    s, t = _logits(11), _logits(12)
    ids, vals, rest = _topk(t, 11)
    dense = KD_LOSSES.get(divergence)(s, t)
    got = sparse_kd(s, ids, vals, rest_logp=rest, mode=mode, divergence=divergence)
    assert got.item() == pytest.approx(dense.item(), rel=1e-5, abs=1e-7)
    ids, vals, rest = _topk(t, 6)  # k < V: the leftover mass derived from the top-k equals the given one
    got = sparse_kd(s, ids, vals, mode=mode, divergence=divergence)
    given = sparse_kd(s, ids, vals, rest_logp=rest, mode=mode, divergence=divergence)
    assert got.item() == pytest.approx(given.item(), rel=1e-4)


def test_sparse_bucket_is_nonnegative_zero_at_equality_and_chunks_exactly():
    t = _logits(13, (2, 6, 40))
    ids, vals, rest = _topk(t, 5)
    for div in ("forward_kl", "reverse_kl", "jsd"):
        assert sparse_kd(t, ids, vals, rest_logp=rest, mode="bucket", divergence=div).item() == \
            pytest.approx(0.0, abs=1e-6)
        assert sparse_kd(t, ids, vals, mode="renormalize", divergence=div, temperature=2.0).item() == \
            pytest.approx(0.0, abs=1e-6)
    labels = torch.zeros(2, 6, dtype=torch.long)
    labels[0, 0] = -100
    out = []
    for chunk in (None, 5):
        s = _logits(14, (2, 6, 40)).requires_grad_()
        loss = sparse_kd(s, ids, vals, rest_logp=rest, mode="bucket", labels=labels, chunk_size=chunk)
        loss.backward()
        out.append((loss.item(), s.grad))
        assert loss.item() > 0
    assert out[1][0] == pytest.approx(out[0][0], abs=1e-6)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=0, atol=1e-6)
    # the bucket carries information renormalisation drops: a student matching the teacher on the
    # top-k ratios but with a different tail mass is penalised only in bucket mode
    s = t.clone()
    s.scatter_(-1, ids, s.gather(-1, ids) + 2.0)
    assert sparse_kd(s, ids, vals, mode="renormalize").item() == pytest.approx(0.0, abs=1e-6)
    assert sparse_kd(s, ids, vals, rest_logp=rest, mode="bucket").item() > 1e-3


def test_sparse_bad_inputs():
    s, t = _logits(0), _logits(1)
    ids, vals, rest = _topk(t, 4)
    with pytest.raises(UserError, match="temperature 1"):
        sparse_kd(s, ids, vals, rest_logp=rest, mode="bucket", temperature=2.0)
    with pytest.raises(UserError, match="valid: bucket, renormalize"):
        sparse_kd(s, ids, vals, mode="bukket")
    with pytest.raises(UserError, match="do not match"):
        sparse_kd(s, ids[:1], vals[:1])
    with pytest.raises(UserError, match="out of range"):
        sparse_kd(s[..., :3], ids, vals)
