"""Offline KD through the output head, chunk by chunk, never holding (B·T, V) logits.

The offline KD loss of ``llm4all distill`` is ``alpha · sparse KD + (1 − alpha) · CE`` on the
student's logits. With a 49k-token vocabulary and a small student, the logits dominate the
step: the (B·T, V) block is written by the head, cast to fp32, read by two log-softmaxes (the
KD's and the cross-entropy's) and written again as its gradient. ``fused_sparse_kd_ce`` does
for this loss what ``llm4all.models.fused_ce`` does for plain cross-entropy (the idea of Liger
Kernel's fused linear cross-entropy, Hsu et al. 2024, and of Cut Cross-Entropy, Wijmans et al.
2024): for each chunk of positions it computes the logits, both losses and, already in the
forward pass, the gradients with respect to the hidden states and the head weight, so only
``chunk × V`` floats exist at a time and one log-softmax serves both terms.

The forward KL (the default divergence) has a closed-form gradient with respect to the student
logits z, q = softmax(z/T) (Hinton et al. 2015, eq. 2, for the dense case):

- ``renormalize``: KL between teacher and student restricted to the k ids and renormalised
  there; ∂(T²·KL)/∂z_j = T·(q̂_j − p̂_j) on the k ids (q̂, p̂ renormalised), 0 elsewhere.
- ``bucket`` (T = 1): the k ids plus one class for the leftover mass; with q_r = 1 − Σ_k q and
  p_r the teacher's leftover mass, ∂KL/∂z_j = q_j − p_j on the k ids and q_j·(1 − p_r/q_r) off
  them.

Other divergences differentiate the chunk's loss with autograd (the same per-chunk memory).
Values and gradients equal the unfused ``sparse_kd`` + ``cross_entropy`` (tested).
"""

from __future__ import annotations

import torch

from llm4all.distill.losses import LOG_FLOOR, _sparse_sums, check_divergence


def _forward_kl_chunk(z, ids, t_logp, t_rest, mask, temperature: float, mode: str):
    """(Σ T²·KL, ∂/∂z) over the masked rows of one chunk of fp32 student logits z (c, V)."""
    if mode == "renormalize":
        zs = z.gather(-1, ids) / temperature  # (c, k)
        logq = torch.log_softmax(zs, -1)
        logp = torch.log_softmax(t_logp / temperature, -1)
        p = logp.exp()
        kl = (p * (logp.clamp(min=LOG_FLOOR) - logq)).sum(-1)  # (c,)
        grad = torch.zeros_like(z).scatter_(-1, ids, temperature * (logq.exp() - p))
    else:
        lse = torch.logsumexp(z, -1, keepdim=True)  # (c, 1)
        logq_ids = z.gather(-1, ids) - lse  # (c, k)
        q = (z - lse).exp_().scatter_(-1, ids, 0.0)  # (c, V) student probabilities off the ids
        q_rest = q.sum(-1).clamp(min=torch.finfo(z.dtype).tiny)  # (c,) summed, not 1 − Σ_k (cancellation)
        logp = torch.log_softmax(torch.cat([t_logp, t_rest[:, None]], -1), -1)  # (c, k + 1), renormalised
        p = logp.exp()
        logq = torch.cat([logq_ids, q_rest.log()[:, None]], -1)
        kl = (p * (logp.clamp(min=LOG_FLOOR) - logq.clamp(min=LOG_FLOOR))).sum(-1)
        # off the ids: q_j·(1 − p_r/q_r); on the ids: q_j − p_j
        grad = q.mul_((1.0 - p[:, -1] / q_rest)[:, None])
        grad.scatter_(-1, ids, logq_ids.exp() - p[:, :-1])
        temperature = 1.0
    kl = torch.where(mask, kl, 0.0)
    return kl.sum() * temperature**2, grad * mask[:, None]


class _FusedSparseKDCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ids, t_logp, t_rest, settings: dict):
        # hidden (N, H), weight (V, H), labels (N,), ids / t_logp (N, k), t_rest (N,)
        alpha, chunk, compute = settings["alpha"], settings["chunk"], settings["compute_dtype"]
        mask = labels != settings["ignore_index"]
        count = mask.sum().clamp(min=1)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight)
        w = weight.to(compute)
        kd_total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        ce_total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s:s + chunk].to(compute)
            z = (h @ w.t()).float()  # (c, V)
            m, y = mask[s:s + chunk], torch.where(mask[s:s + chunk], labels[s:s + chunk], 0)
            parts = (ids[s:s + chunk], t_logp[s:s + chunk].float(), t_rest[s:s + chunk].float())
            if settings["divergence"] == "forward_kl" and not settings["opts"]:
                kd, g_kd = _forward_kl_chunk(z, *parts, m, settings["temperature"], settings["mode"])
            else:
                with torch.enable_grad():
                    zg = z.detach().requires_grad_()
                    kd = _sparse_sums(zg, parts[0], parts[1], parts[2], m, divergence=settings["divergence"],
                                      temperature=settings["temperature"], mode=settings["mode"],
                                      opts=settings["opts"])
                    (g_kd,) = torch.autograd.grad(kd, zg)
                kd = kd.detach()
            lse = torch.logsumexp(z, -1)  # (c,)
            ce_total += torch.where(m, lse - z.gather(1, y[:, None])[:, 0], 0.0).sum()
            kd_total += kd
            g_ce = z.sub_(lse[:, None]).exp_()  # softmax; z is not needed any more
            g_ce[torch.arange(g_ce.shape[0]), y] -= 1.0
            grad = (g_kd.mul_(alpha) + g_ce.mul_(m[:, None] * (1.0 - alpha))).div_(count).to(compute)
            grad_hidden[s:s + chunk] = (grad @ w).to(hidden.dtype)
            grad_weight += (grad.t() @ h).to(weight.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        kd_mean, ce_mean = kd_total / count, ce_total / count
        ctx.mark_non_differentiable(kd_mean, ce_mean)
        return alpha * kd_mean + (1.0 - alpha) * ce_mean, kd_mean, ce_mean

    @staticmethod
    def backward(ctx, grad_loss, _grad_kd, _grad_ce):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None, None, None, None


def fused_sparse_kd_ce(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                       topk_ids: torch.Tensor, topk_logp: torch.Tensor, rest_logp: torch.Tensor, *,
                       alpha: float = 0.9, mode: str = "renormalize", divergence: str = "forward_kl",
                       temperature: float = 1.0, ignore_index: int = -100, chunk: int = 1024,
                       **opts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha·KD + (1 − alpha)·CE, KD, CE) of logits ``hidden · weightᵀ`` against a top-k teacher.

    hidden (..., H), weight (V, H), labels (...), topk_ids / topk_logp (..., k), rest_logp (...):
    the arguments of ``sparse_kd`` with the head folded in. Only the first output is
    differentiable; KD and CE are the means over the positions whose label is not ignored.
    """
    from llm4all.errors import UserError

    check_divergence(divergence, temperature, opts)
    if mode not in ("renormalize", "bucket"):
        raise UserError(f"unknown sparse KD mode {mode!r}; valid: bucket, renormalize")
    if mode == "bucket" and temperature != 1.0:
        raise UserError("sparse KD mode 'bucket' needs temperature 1 (the cached leftover mass is at T = 1)")
    k = topk_ids.shape[-1]
    n = hidden.reshape(-1, hidden.shape[-1]).shape[0]
    if topk_ids.numel() != n * k or labels.numel() != n or rest_logp.numel() != n:
        raise UserError(f"top-k ids {tuple(topk_ids.shape)}, labels {tuple(labels.shape)} and leftover "
                        f"{tuple(rest_logp.shape)} do not match {n} positions")
    device = hidden.device.type
    compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    settings = {"alpha": alpha, "mode": mode, "divergence": divergence, "temperature": temperature,
                "ignore_index": ignore_index, "chunk": chunk, "compute_dtype": compute, "opts": opts}
    with torch.autocast(device_type=device, enabled=False):
        return _FusedSparseKDCE.apply(hidden.reshape(n, -1), weight, labels.reshape(n),
                                      topk_ids.reshape(n, k).long(), topk_logp.reshape(n, k),
                                      rest_logp.reshape(n), settings)
