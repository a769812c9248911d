"""``KDConfig``: how ``distill`` transfers the teacher's knowledge (mode, divergence, weights).

The loop's own options are ``train.args.TrainingConfig``, shared with ``train``; these are
the distillation-only ones, one doc line per field, expanded into ``distill``'s flags and
recipe keys by ``signature.py`` and checked in ``__post_init__`` (the divergence and its
``kd_options`` included) before any teacher is loaded or any cache is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llm4all.errors import UserError

Mode = Literal["offline", "online", "self", "on_policy", "sequence"]
MODES = ("offline", "online", "self", "on_policy", "sequence")


@dataclass(frozen=True)
class KDConfig:
    """Which signal the student learns from and how it is weighed against the data."""

    mode: Mode = "offline"
    """offline (top-k cache), online, self, on_policy (GKD) or sequence (black-box)."""
    cache: Path | None = None
    """teacher cache directory for offline mode (built in OUT/teacher_cache if absent)."""
    top_k: int = 64
    """log-probabilities cached per token (offline)."""
    max_windows: int | None = None
    """cache at most this many windows of seq-len tokens, drawn uniformly (offline; sequence: prompts)."""
    divergence: str = "forward_kl"
    """forward_kl, reverse_kl, jsd, skew_kl, skew_reverse_kl, total_variation (`llm4all ls kd_losses`)."""
    kd_options: dict = field(default_factory=dict)
    """options of the divergence, e.g. {beta: 0.5} for jsd."""
    alpha: float = 0.5
    """weight of the KD term; 1 - alpha weighs the cross-entropy on the data."""
    temperature: float = 1.0
    """softening temperature of both distributions (KD scaled by T²)."""
    sparse_mode: Literal["renormalize", "bucket"] = "bucket"
    """offline: one class for the teacher's leftover mass (T = 1), or renormalize the top-k."""
    feature_weight: float = 0.0
    """online: weight of hidden-state feature KD (learned projections)."""
    relation_weight: float = 0.0
    """online: weight of MiniLM attention-relation KD (last layer)."""
    relation_heads: int = 0
    """relation heads for relation KD (0: the student's head count)."""
    on_policy_fraction: float = 0.5
    """on_policy: probability that a batch is the student's own samples."""
    prompt_tokens: int = 32
    """on_policy/sequence: tokens of data used as the prompt."""
    teacher_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """teacher weights' dtype (online modes and cache building)."""

    def __post_init__(self) -> None:
        from llm4all.distill.losses import check_divergence

        object.__setattr__(self, "kd_options", dict(self.kd_options or {}))
        if self.mode not in MODES:
            raise UserError(f"--mode: {self.mode!r} is not valid; valid: {', '.join(MODES)}")
        check_divergence(self.divergence, self.temperature, self.kd_options)
        if not (isinstance(self.alpha, int | float) and 0 <= self.alpha <= 1):
            raise UserError(f"--alpha must be in [0, 1], got {self.alpha!r}")
        if not 0 <= self.on_policy_fraction <= 1:
            raise UserError(f"--on-policy-fraction must be in [0, 1], got {self.on_policy_fraction!r}")
        for name in ("feature_weight", "relation_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise UserError(f"--{name.replace('_', '-')} must be a number ≥ 0, got {value!r}")
        for name, low in (("top_k", 1), ("relation_heads", 0), ("prompt_tokens", 1)):
            if getattr(self, name) < low:
                raise UserError(f"--{name.replace('_', '-')} must be ≥ {low}, got {getattr(self, name)}")
        if self.max_windows is not None and self.max_windows < 1:
            raise UserError(f"--max-windows must be ≥ 1, got {self.max_windows}")
        if self.mode == "offline" and self.sparse_mode == "bucket" and self.temperature != 1.0:
            raise UserError(f"--sparse-mode bucket needs --temperature 1 (the cached leftover mass is at "
                            f"T = 1), got {self.temperature}; use --sparse-mode renormalize for other "
                            "temperatures")
        if self.mode not in ("online", "self") and (self.feature_weight or self.relation_weight):
            raise UserError(f"--feature-weight and --relation-weight need the teacher's hidden states: "
                            f"--mode online or self, not {self.mode}")

    def cross_check(self, training) -> None:
        """Checks against the loop's options (``TrainingConfig``): a prompt shorter than the window."""
        if self.mode in ("on_policy", "sequence") and not 0 < self.prompt_tokens < training.seq_len:
            raise UserError(f"--prompt-tokens must be in (0, --seq-len {training.seq_len}), "
                            f"got {self.prompt_tokens}")
