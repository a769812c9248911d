"""Cross-entropy through the output head, chunk by chunk, never holding (B·T, V) logits.

With a 49k-token vocabulary and a small model, the logits dominate a training step: for
B·T = 2048 positions they are 400 MB in fp32, written by the head matmul, read by
log-softmax, written again as their gradient. This function computes, for each chunk of
positions, the logits, the loss and -- already in the forward pass -- the gradients with
respect to the hidden states and the head weight, so only ``chunk × V`` floats ever exist.
The same idea as Liger Kernel's fused linear cross-entropy (Hsu et al. 2024) and Cut
Cross-Entropy (Wijmans et al. 2024, "Cut Your Losses in Large-Vocabulary Language Models"),
written in plain PyTorch.

Matmuls run in the autocast dtype when autocast is on (bf16 on this CPU: AMX), the softmax
and the loss in fp32, and the weight gradient accumulates in the weight's own dtype.
"""

from __future__ import annotations

import torch


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk: int, compute_dtype):
        # hidden: (N, H), weight: (V, H), labels: (N,) -> mean loss over N
        n = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight)
        w = weight.to(compute_dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, n, chunk):
            h = hidden[s : s + chunk].to(compute_dtype)
            rows = torch.arange(h.shape[0], device=hidden.device)
            y = labels[s : s + chunk]
            probs = (h @ w.t()).float()  # (c, V) logits, computed in the compute dtype
            torch.softmax(probs, dim=-1, out=probs)  # in place: one (c, V) fp32 buffer at a time
            p_y = probs[rows, y]
            nll = -torch.log(p_y)
            lost = p_y < 1e-30  # p_y underflowed (a logit gap beyond ~69 nats): recompute those rows
            if lost.any():
                exact = (h[lost] @ w.t()).float()
                nll[lost] = torch.logsumexp(exact, dim=-1) - exact.gather(1, y[lost][:, None])[:, 0]
            total += nll.sum()
            probs[rows, y] -= 1.0  # dloss/dlogits = (softmax - onehot) / N
            grad = probs.to(compute_dtype)
            del probs
            # the 1/N of the mean goes onto the small (c, H) operands, not the (c, V) one
            grad_hidden[s : s + chunk] = ((grad @ w) / n).to(hidden.dtype)
            grad_weight += (grad.t() @ (h / n)).to(weight.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total / n

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors  # in place: the graph is not backpropagated twice
        return grad_hidden.mul_(grad_output), grad_weight.mul_(grad_output), None, None, None


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                               chunk: int = 1024) -> torch.Tensor:
    """mean_i CE(hidden_i · weightᵀ, labels_i) for (..., H) hidden and (V, H) weight."""
    device = hidden.device.type
    compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    with torch.autocast(device_type=device, enabled=False):
        return _FusedLinearCE.apply(hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1),
                                    chunk, compute)
