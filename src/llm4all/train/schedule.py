"""Learning-rate schedules as pure functions of the step.

- ``cosine``: linear warm-up, then half a cosine from the peak to ``min_lr_ratio × peak``
  (Loshchilov & Hutter 2017, "SGDR"; the warm-up + cosine of GPT-3, Brown et al. 2020 app. B).
- ``wsd``: warm-up, stable at the peak, then a decay over the last ``decay_fraction`` of the
  steps (Hu et al. 2024, "MiniCPM", sec. 4: Warmup-Stable-Decay; linear decay here, as in
  Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
  Durations", who find a (1 − sqrt) cooldown slightly better -- ``decay_shape: sqrt``).
- ``constant``: warm-up, then the peak.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from llm4all.errors import UserError

Schedule = Literal["cosine", "wsd", "constant"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)


def lr_factor(step: int, total: int, schedule: Schedule = "cosine", warmup: int = 0,
              min_lr_ratio: float = 0.1, decay_fraction: float = 0.2,
              decay_shape: Literal["linear", "sqrt"] = "linear") -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based) of ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_steps = max(1, round(decay_fraction * total))
        start = total - decay_steps
        if step < start:
            return 1.0
        x = min(1.0, (step - start) / decay_steps)
        drop = x if decay_shape == "linear" else math.sqrt(x)
        return 1.0 - (1 - min_lr_ratio) * drop
    raise UserError(f"unknown schedule {schedule!r}; valid: cosine, wsd, constant")
