"""Curricula: an order over documents by a difficulty signal, and a pacing function.

The curriculum is a manifest (``curriculum.json``): the kept documents' ids sorted by the
signal, and the pacing function that says, at training step t of T, which prefix of that
order the sampler may draw from. Competence-based pacing follows Platanios et al. 2019,
"Competence-based Curriculum Learning for Neural Machine Translation" (eq. 3 linear and eq. 6
root, with initial competence c0); ``step`` is the baby-steps schedule of Bengio et al. 2009,
"Curriculum Learning" (sec. 4) with ``n_steps`` equal stages.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from llm4all.errors import UserError

Pacing = Literal["linear", "root", "step"]


def competence(t: int, total: int, pacing: Pacing = "root", c0: float = 0.1, n_steps: int = 4) -> float:
    """Fraction of the ordered data available at step ``t`` of ``total`` (in [c0, 1])."""
    if total <= 0:
        raise UserError(f"curriculum: total steps must be positive, got {total}")
    x = min(max(t / total, 0.0), 1.0)
    if pacing == "linear":
        return min(1.0, x * (1 - c0) + c0)
    if pacing == "root":
        return min(1.0, math.sqrt(x * (1 - c0 * c0) + c0 * c0))
    if pacing == "step":
        if n_steps <= 1:
            return 1.0
        return min(1.0, c0 + (1 - c0) * math.floor(x * n_steps + 1e-9) / (n_steps - 1))
    raise UserError(f"curriculum: unknown pacing {pacing!r}; valid: linear, root, step")


def order(ids: list[str], values: np.ndarray, direction: Literal["easy_to_hard", "hard_to_easy"],
          higher_is_harder: bool = True) -> list[str]:
    """Ids sorted by difficulty (stable: ties keep input order)."""
    key = np.asarray(values, dtype=np.float64) * (1 if higher_is_harder else -1)
    if direction == "hard_to_easy":
        key = -key
    elif direction != "easy_to_hard":
        raise UserError(f"curriculum: order must be easy_to_hard or hard_to_easy, got {direction!r}")
    return [ids[i] for i in np.argsort(key, kind="stable")]


def build(ids: list[str], table: dict[str, np.ndarray], signal: str,
          order_: Literal["easy_to_hard", "hard_to_easy"] = "easy_to_hard",
          higher_is_harder: bool = True, pacing: Pacing = "root", c0: float = 0.1,
          n_steps: int = 4) -> dict:
    """The curriculum manifest for the kept documents."""
    if signal not in table:
        raise UserError(f"curriculum: no signal column {signal!r}; computed: {', '.join(table)}")
    competence(0, 1, pacing, c0, n_steps)  # validates the pacing name
    if not 0 < c0 <= 1:
        raise UserError(f"curriculum: c0 must be in (0, 1], got {c0}")
    return {"kind": "curriculum", "signal": signal, "order": order_, "higher_is_harder": higher_is_harder,
            "pacing": {"name": pacing, "c0": c0, "n_steps": n_steps},
            "ids": order(ids, table[signal], order_, higher_is_harder)}
