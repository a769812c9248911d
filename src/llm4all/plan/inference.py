"""Inference-aware sizing (Sardana et al. 2023, "Beyond Chinchilla-Optimal").

For a target loss ℓ and a lifetime inference demand, choose N (and the D_train that reaches ℓ
with it) to minimise the total cost

    cost(N) = w_train · 6·N·D_train(N, ℓ) + w_inf · 2·N·D_inf,

where D_train(N, ℓ) = (B / (ℓ − E − A/N^α))^(1/β) inverts the Chinchilla law. With
w_train = w_inf = 1 this is Sardana et al.'s FLOPs objective (their Eq. 3); their cost variant
(Section 4) divides each phase's FLOPs by hardware FLOP/s × utilisation (MFU) and multiplies by
the price per second, with separate utilisations for training, prefill (input) and decode
(output) tokens. Both reduce to one weighted 1-D minimisation over log N, solved here with a
bounded scalar search (Sardana et al. use Newton's method on the same objective).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from llm4all.errors import UserError
from llm4all.plan.scaling import ChinchillaLaw


def min_params_for_loss(law: ChinchillaLaw, loss: float) -> float:
    """The N below which ``loss`` is out of reach even with infinite data: A/N^α = ℓ − E."""
    if loss <= law.E:
        raise UserError(f"target loss {loss} is at or below the law's irreducible loss E={law.E}")
    return (law.A / (loss - law.E)) ** (1 / law.alpha)


def inference_optimal(law: ChinchillaLaw, loss: float, inference_tokens: float,
                      train_weight: float = 1.0, inference_weight: float = 1.0) -> dict:
    """Minimise train_weight·6·N·D + inference_weight·2·N·D_inf subject to L(N, D) = loss."""
    n_min = min_params_for_loss(law, loss)

    def cost(log_n: float) -> float:
        n = np.exp(log_n)
        d = float(law.tokens_for_loss(n, loss))
        return train_weight * 6 * n * d + inference_weight * 2 * n * inference_tokens

    # the optimum lies between just above n_min (infinite data) and far beyond Chinchilla's N
    lo, hi = np.log(n_min * (1 + 1e-9)), np.log(n_min) + 30.0
    grid = np.linspace(lo + 1e-6, hi, 400)
    costs = np.array([cost(x) for x in grid])
    i = int(np.nanargmin(costs))
    res = minimize_scalar(cost, bounds=(grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]),
                          method="bounded", options={"xatol": 1e-9})
    n = float(np.exp(res.x))
    d = float(law.tokens_for_loss(n, loss))
    return {"params": n, "train_tokens": d, "tokens_per_param": d / n,
            "train_flops": 6 * n * d, "inference_flops": 2 * n * inference_tokens,
            "total_flops": 6 * n * d + 2 * n * inference_tokens, "loss": loss}


def chinchilla_point(law: ChinchillaLaw, params: float) -> dict:
    """The compute-optimal (Chinchilla) training of a model with ``params`` parameters."""
    d = float(law.optimal_tokens_for(params))
    return {"params": params, "train_tokens": d, "tokens_per_param": d / params,
            "train_flops": 6 * params * d, "loss": float(law.loss(params, d))}


def compare_with_chinchilla(law: ChinchillaLaw, params: float, inference_tokens: float,
                            train_weight: float = 1.0, inference_weight: float = 1.0) -> dict:
    """Sardana et al. Figure 1: a Chinchilla-optimal N against the inference-aware model of
    the same loss; returns both and the total cost saved."""
    chin = chinchilla_point(law, params)
    chin["inference_flops"] = 2 * params * inference_tokens
    chin["total_flops"] = chin["train_flops"] + chin["inference_flops"]
    opt = inference_optimal(law, chin["loss"], inference_tokens, train_weight, inference_weight)

    def weighted(p):
        return train_weight * p["train_flops"] + inference_weight * p["inference_flops"]

    saved = weighted(chin) - weighted(opt)
    return {"chinchilla": chin, "inference_optimal": opt, "saved": saved,
            "saved_fraction": saved / weighted(chin)}


def cost_weights(train_flops_per_s: float, train_mfu: float, train_price_per_hour: float,
                 inference_flops_per_s: float, prefill_mfu: float, decode_mfu: float,
                 inference_price_per_hour: float, input_fraction: float) -> tuple[float, float]:
    """Dollars per training FLOP and per inference FLOP (Sardana et al. 2023, Section 4).

    ``input_fraction`` of inference tokens are prompt (prefill) tokens, the rest generated
    (decode) tokens; each runs at its own utilisation (decode is memory-bound, so low MFU).
    """
    for name, v in (("train_mfu", train_mfu), ("prefill_mfu", prefill_mfu),
                    ("decode_mfu", decode_mfu)):
        if not 0 < v <= 1:
            raise UserError(f"--{name.replace('_', '-')} must be in (0, 1], got {v}")
    if not 0 <= input_fraction <= 1:
        raise UserError(f"--input-fraction must be in [0, 1], got {input_fraction}")
    w_train = train_price_per_hour / 3600 / (train_flops_per_s * train_mfu)
    per_flop = inference_price_per_hour / 3600 / inference_flops_per_s
    w_inf = per_flop * (input_fraction / prefill_mfu + (1 - input_fraction) / decode_mfu)
    return w_train, w_inf
