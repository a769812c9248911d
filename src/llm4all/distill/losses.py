"""Knowledge-distillation losses on logits: a registry of divergences, dense and top-k (sparse).

Every divergence compares the teacher distribution p = softmax(z_t / T) with the student
distribution q = softmax(z_s / T) at each position, is computed in fp32, multiplied by T²
(Hinton et al. 2015, §2.1: the soft-target gradients scale as 1/T², so T² keeps their weight
against the hard-label loss constant when T changes) and averaged over the positions whose
label is not ``ignore_index``. Logits are (B, T, V) or (N, V); labels are aligned with them
(``labels[..., i]`` is the token that ``logits[..., i, :]`` predicts, i.e. already shifted).

``kd_loss`` mixes a divergence with the hard-label cross-entropy, ``alpha·KD + (1−alpha)·CE``;
with ``chunk_size`` it walks the positions in chunks under activation checkpointing, so the
fp32 (chunk, V) intermediates of one chunk exist at a time (V = 49,152 for SmolLM2), and its
value and gradients equal the unchunked ones.

``sparse_kd`` is the same loss when the teacher is known only on its top-k ids per position
(the offline cache of ``llm4all.distill.teacher_cache``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from llm4all.catalog import KD_LOSSES
from llm4all.errors import UserError, did_you_mean
from llm4all.registry import check_options

# Log-probabilities are clamped here before use: e^-1e4 is 0 in fp32, so the value is
# unchanged, but an exact -inf (a masked vocabulary entry) no longer yields 0·inf = nan.
LOG_FLOOR = -1e4


# ---- per-position divergences on log-probabilities: (..., C) fp32 -> (...) -------------

def kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ_c p_c (log p_c − log q_c) over the last dim."""
    logp, logq = logp.clamp(min=LOG_FLOOR), logq.clamp(min=LOG_FLOOR)
    return (logp.exp() * (logp - logq)).sum(-1)


def _mixture(logp: torch.Tensor, logq: torch.Tensor, w: float) -> torch.Tensor:
    """log(w·p + (1−w)·q), stably."""
    return torch.logaddexp(logp + math.log(w), logq + math.log1p(-w))


def forward_kl_terms(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return kl(t, s)


def reverse_kl_terms(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return kl(s, t)


def jsd_terms(s: torch.Tensor, t: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """GKD's JSD(β) with m = β·p + (1−β)·q: β·KL(p‖m) + (1−β)·KL(q‖m); β=0 / β=1: the KL limits."""
    if not 0.0 <= beta <= 1.0:
        raise UserError(f"jsd: beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return kl(t, s)
    if beta == 1.0:
        return kl(s, t)
    m = _mixture(t, s, beta)
    return beta * kl(t, m) + (1.0 - beta) * kl(s, m)


def skew_kl_terms(s: torch.Tensor, t: torch.Tensor, skew: float = 0.1) -> torch.Tensor:
    """KL(p ‖ α·p + (1−α)·q) with α = ``skew``."""
    if not 0.0 <= skew < 1.0:
        raise UserError(f"skew_kl: skew must be in [0, 1), got {skew}")
    return kl(t, _mixture(t, s, skew) if skew > 0 else s)


def skew_reverse_kl_terms(s: torch.Tensor, t: torch.Tensor, skew: float = 0.1) -> torch.Tensor:
    """KL(q ‖ α·q + (1−α)·p) with α = ``skew``."""
    if not 0.0 <= skew < 1.0:
        raise UserError(f"skew_reverse_kl: skew must be in [0, 1), got {skew}")
    return kl(s, _mixture(s, t, skew) if skew > 0 else t)


def total_variation_terms(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """½ Σ_c |p_c − q_c|."""
    return 0.5 * (t.exp() - s.exp()).abs().sum(-1)


#: name -> per-position divergence f(student_logq, teacher_logp, **opts) -> (...)
DIVERGENCES: dict[str, Callable[..., torch.Tensor]] = {
    "forward_kl": forward_kl_terms, "reverse_kl": reverse_kl_terms, "jsd": jsd_terms,
    "skew_kl": skew_kl_terms, "skew_reverse_kl": skew_reverse_kl_terms,
    "total_variation": total_variation_terms,
}


# ---- chunked mean over positions --------------------------------------------------------

def _flatten(logits: torch.Tensor, labels: torch.Tensor | None, ignore_index: int):
    """(N, V) logits and the (N,) bool mask of positions that count."""
    if logits.dim() not in (2, 3):
        raise UserError(f"logits must be (B, T, V) or (N, V), got shape {tuple(logits.shape)}")
    flat = logits.reshape(-1, logits.shape[-1])
    if labels is None:
        return flat, torch.ones(flat.shape[0], dtype=torch.bool, device=flat.device)
    if labels.shape != logits.shape[:-1]:
        raise UserError(f"labels shape {tuple(labels.shape)} does not match logits {tuple(logits.shape)}")
    return flat, labels.reshape(-1) != ignore_index


def _chunked_sum(fn: Callable[..., torch.Tensor], tensors: list[torch.Tensor],
                 chunk_size: int | None) -> torch.Tensor:
    """Σ over chunks of rows of ``fn(*chunk)``; chunks run under activation checkpointing."""
    n = tensors[0].shape[0]
    if chunk_size is None or chunk_size >= n:
        return fn(*tensors)
    if chunk_size < 1:
        raise UserError(f"chunk_size must be at least 1, got {chunk_size}")
    total = None
    for start in range(0, n, chunk_size):
        parts = [x[start:start + chunk_size] for x in tensors]
        if torch.is_grad_enabled() and any(x.requires_grad for x in parts):
            value = checkpoint(fn, *parts, use_reentrant=False)
        else:
            value = fn(*parts)
        total = value if total is None else total + value
    return total


def _dense_sums(s_logits, t_logits, mask, labels, *, divergence, temperature, opts):
    """(Σ T²·divergence, Σ cross-entropy) over the masked rows of one chunk of (n, V) logits."""
    s32, t32 = s_logits.float(), t_logits.float()
    logq = F.log_softmax(s32 / temperature, dim=-1)
    logp = F.log_softmax(t32 / temperature, dim=-1)
    div = torch.where(mask, DIVERGENCES[divergence](logq, logp, **opts), 0.0).sum() * temperature**2
    if labels is None:
        return torch.stack([div, torch.zeros_like(div)])
    target = torch.where(mask, labels, 0)[:, None]
    logq1 = logq if temperature == 1.0 else F.log_softmax(s32, dim=-1)  # the hard-label loss is at T = 1
    ce = -logq1.gather(-1, target)[:, 0]  # (n,)
    return torch.stack([div, torch.where(mask, ce, 0.0).sum()])


def check_divergence(divergence: str, temperature: float, opts: dict) -> None:
    """Raise UserError for an unknown divergence, a temperature ≤ 0 or an option it does not take."""
    if divergence not in DIVERGENCES:
        valid = did_you_mean(divergence, list(DIVERGENCES))
        raise UserError(f"unknown KD divergence {divergence!r}; {valid}")
    if not temperature > 0:
        raise UserError(f"temperature must be > 0, got {temperature}")
    check_options(DIVERGENCES[divergence], opts, where=f"kd loss {divergence!r}")


def kd_and_ce(divergence: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
              labels: torch.Tensor | None = None, *, temperature: float = 1.0,
              ignore_index: int = -100, chunk_size: int | None = None,
              **opts) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean T²·divergence, mean hard-label cross-entropy) over the non-ignored positions.

    The cross-entropy is 0 when ``labels`` is None. Both are differentiable scalars (fp32).
    """
    return _dense(divergence, student_logits, teacher_logits, labels, temperature=temperature,
                  ignore_index=ignore_index, chunk_size=chunk_size, with_ce=labels is not None, **opts)


def _dense(divergence, student_logits, teacher_logits, labels, *, temperature, ignore_index, chunk_size,
           with_ce, **opts) -> tuple[torch.Tensor, torch.Tensor]:
    check_divergence(divergence, temperature, opts)
    if student_logits.shape != teacher_logits.shape:
        raise UserError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                        f"{tuple(teacher_logits.shape)} differ (same vocabulary and positions needed)")
    s, mask = _flatten(student_logits, labels, ignore_index)
    t = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    fn = functools.partial(_dense_sums, divergence=divergence, temperature=temperature, opts=opts)
    if not with_ce:
        sums = _chunked_sum(lambda a, b, m: fn(a, b, m, None), [s, t, mask], chunk_size)
    else:
        sums = _chunked_sum(fn, [s, t, mask, labels.reshape(-1)], chunk_size)
    count = mask.sum().clamp(min=1)
    return sums[0] / count, sums[1] / count


def kd_loss(divergence: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            labels: torch.Tensor | None, *, alpha: float = 0.5, temperature: float = 1.0,
            chunk_size: int | None = None, ignore_index: int = -100, **opts) -> torch.Tensor:
    """``alpha · KD + (1 − alpha) · CE(labels)``, the KD term a registered divergence (Hinton et al. 2015)."""
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"alpha must be in [0, 1], got {alpha}")
    if labels is None and alpha < 1.0:
        raise UserError("labels are needed for the hard-label term unless alpha = 1")
    kd, ce = kd_and_ce(divergence, student_logits, teacher_logits, labels, temperature=temperature,
                       ignore_index=ignore_index, chunk_size=chunk_size, **opts)
    return alpha * kd + (1.0 - alpha) * ce


# ---- the registry: one entry per divergence, same signature ----------------------------

def _entry(name: str, doc: str):
    def loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
             labels: torch.Tensor | None = None, ignore_index: int = -100,
             chunk_size: int | None = None, **opts) -> torch.Tensor:
        return _dense(name, student_logits, teacher_logits, labels, temperature=temperature,
                      ignore_index=ignore_index, chunk_size=chunk_size, with_ce=False, **opts)[0]

    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = doc
    return KD_LOSSES.register(name)(loss)


forward_kl = _entry("forward_kl", """Forward KL(p_teacher ‖ q_student) × T² (Hinton et al. 2015).

    "Distilling the Knowledge in a Neural Network". Mass-covering: the student is pushed to
    put probability wherever the teacher does.""")
reverse_kl = _entry("reverse_kl", """Reverse KL(q_student ‖ p_teacher) × T² (Gu et al. 2023, MiniLLM).

    Mode-seeking: the student is penalised for mass where the teacher has little.""")
jsd = _entry("jsd", """Generalised JSD(β) × T² (Agarwal et al. 2024, GKD); option beta (default 0.5).

    Convention (GKD's, as in TRL's GKDTrainer): m = β·p_teacher + (1−β)·q_student and
    JSD(β) = β·KL(p ‖ m) + (1−β)·KL(q ‖ m); β = 0 is defined as forward KL(p ‖ q) and β = 1 as
    reverse KL(q ‖ p) (the limits of JSD(β)/β and JSD(β)/(1−β)).""")
skew_kl = _entry("skew_kl", """Skew KL(p ‖ α·p + (1−α)·q) × T² (Ko et al. 2024, DistiLLM); option skew = α.

    Default α = 0.1 as in DistiLLM; α = 0 is the forward KL.""")
skew_reverse_kl = _entry("skew_reverse_kl", """Skew reverse KL(q ‖ α·q + (1−α)·p) × T² (Ko et al. 2024).

    DistiLLM. Option skew = α (default 0.1); α = 0 is the reverse KL.""")
total_variation = _entry("total_variation", """Total variation ½·Σ|p − q| × T² (Wen et al. 2023).

    "f-Divergence Minimization for Sequence-Level Knowledge Distillation", ACL 2023.""")


# ---- sparse (top-k) teacher --------------------------------------------------------------

def _sparse_sums(s_logits, ids, t_logp, t_rest, mask, *, divergence, temperature, mode, opts):
    """Σ T²·divergence over the masked rows; the teacher known on ``ids`` (n, k) only."""
    z = s_logits.float() / temperature  # (n, V)
    t_logp = t_logp.float()
    if mode == "renormalize":
        logq = F.log_softmax(z.gather(-1, ids), dim=-1)  # (n, k) student renormalised on the k ids
        logp = F.log_softmax(t_logp / temperature, dim=-1)  # (n, k) exact at any T
    else:
        lse = torch.logsumexp(z, dim=-1, keepdim=True)  # (n, 1)
        outside = z.scatter(-1, ids, torch.finfo(z.dtype).min)  # k ids removed (finite: no nan grads)
        logq = torch.cat([z.gather(-1, ids), torch.logsumexp(outside, -1, keepdim=True)], -1) - lse
        if t_rest is None:
            t_rest = torch.log1p(-t_logp.exp().sum(-1).clamp(max=1.0 - 1e-7))
        # (n, k + 1); renormalised to absorb fp16 rounding of the cached values
        logp = F.log_softmax(torch.cat([t_logp, t_rest.float()[:, None]], -1), dim=-1)
    div = DIVERGENCES[divergence](logq, logp, **opts)
    return torch.where(mask, div, 0.0).sum() * temperature**2


def sparse_kd(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logp: torch.Tensor, *,
              rest_logp: torch.Tensor | None = None,
              mode: Literal["renormalize", "bucket"] = "renormalize", divergence: str = "forward_kl",
              temperature: float = 1.0, labels: torch.Tensor | None = None, ignore_index: int = -100,
              chunk_size: int | None = None, **opts) -> torch.Tensor:
    """Mean T²·divergence when the teacher is known only on its top-k ids per position.

    Args: student_logits (B, T, V) or (N, V); topk_ids (..., k) integer ids; topk_logp (..., k)
    the teacher's log-probabilities (at T = 1) on them; rest_logp (...) log of the teacher's
    leftover mass (computed from topk_logp when None).

    ``mode="renormalize"``: both distributions restricted to the k ids and renormalised there
    (the common top-k practice; exact for any temperature). ``mode="bucket"``: one extra class
    holds the leftover mass, log(1 − Σ_k p) for the teacher and the student's mass outside the
    k ids, so the student is also told how much mass the tail should get (the "ghost token"
    of Anshumann et al. 2025, "Sparse Logit Sampling", which shows plain top-k renormalisation
    biases the student). The bucket needs T = 1: the cache does not say how the teacher's tail
    mass changes with T.
    """
    check_divergence(divergence, temperature, opts)
    if mode not in ("renormalize", "bucket"):
        raise UserError(f"unknown sparse KD mode {mode!r}; valid: bucket, renormalize")
    if mode == "bucket" and temperature != 1.0:
        raise UserError("sparse KD mode 'bucket' needs temperature 1 (the cached leftover mass is at T = 1); "
                        "use mode 'renormalize' for other temperatures")
    s, mask = _flatten(student_logits, labels, ignore_index)
    k = topk_ids.shape[-1]
    if topk_ids.shape != topk_logp.shape or topk_ids.numel() != s.shape[0] * k:
        raise UserError(f"top-k ids {tuple(topk_ids.shape)} / log-probs {tuple(topk_logp.shape)} do not "
                        f"match {s.shape[0]} positions of student logits {tuple(student_logits.shape)}")
    ids = topk_ids.reshape(-1, k).long()
    if int(ids.max()) >= s.shape[-1] or int(ids.min()) < 0:
        raise UserError(f"top-k ids out of range for a vocabulary of {s.shape[-1]} "
                        "(teacher and student vocabularies differ?)")
    tensors = [s, ids, topk_logp.reshape(-1, k), mask]
    fn = functools.partial(_sparse_sums, divergence=divergence, temperature=temperature, mode=mode, opts=opts)
    if rest_logp is None or mode == "renormalize":
        total = _chunked_sum(lambda a, b, c, m: fn(a, b, c, None, m), tensors, chunk_size)
    else:
        rest = rest_logp.reshape(-1)
        total = _chunked_sum(lambda a, b, c, m, r: fn(a, b, c, r, m), tensors + [rest], chunk_size)
    return total / mask.sum().clamp(min=1)
