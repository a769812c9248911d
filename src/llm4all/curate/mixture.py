"""Mixtures: sampling weights over groups of documents (domains, languages, sources).

Three ways to weight groups with sizes n_i (characters of text):
- ``fixed``: the user's weights, normalised;
- ``proportional``: q_i = n_i / sum(n);
- ``temperature``: q_i ∝ (n_i / sum n)^(1/τ) — τ = 1 is proportional, τ → ∞ uniform; the
  multilingual up-sampling of Arivazhagan et al. 2019 ("Massively Multilingual NMT", sec. 4.2,
  T = 5) and Conneau et al. 2020 (XLM-R, α = 1/τ = 0.3).
The manifest (``mixture.json``) lists each group's weight, size and ids; the trainer's sampler
draws a group by weight, then a document or window from it.
"""

from __future__ import annotations

from typing import Literal

from llm4all.errors import UserError


def weights(sizes: dict[str, float], method: Literal["fixed", "proportional", "temperature"],
            fixed: dict[str, float] | None = None, tau: float = 1.0) -> dict[str, float]:
    """Normalised sampling weight per group."""
    if not sizes:
        raise UserError("mixture: no groups")
    if method == "fixed":
        if not fixed:
            raise UserError("mixture: method 'fixed' needs weights: {group: weight}")
        missing = sorted(set(sizes) - set(fixed))
        extra = sorted(set(fixed) - set(sizes))
        if missing or extra:
            raise UserError(f"mixture: weights must name exactly the groups {sorted(sizes)}; "
                            f"missing {missing}, unknown {extra}")
        raw = {g: float(fixed[g]) for g in sizes}
        if any(w < 0 for w in raw.values()) or sum(raw.values()) <= 0:
            raise UserError("mixture: weights must be non-negative with a positive sum")
    elif method == "proportional":
        raw = dict(sizes)
    elif method == "temperature":
        if tau <= 0:
            raise UserError(f"mixture: tau must be positive, got {tau}")
        total = sum(sizes.values())
        raw = {g: (n / total) ** (1.0 / tau) for g, n in sizes.items()}
    else:
        raise UserError(f"mixture: unknown method {method!r}; valid: fixed, proportional, temperature")
    total = sum(raw.values())
    return {g: w / total for g, w in raw.items()}


def build(ids: list[str], metas: list[dict], texts_len: list[int], by: str = "lang",
          method: Literal["fixed", "proportional", "temperature"] = "temperature",
          weights_: dict[str, float] | None = None, tau: float = 1.0) -> dict:
    """The mixture manifest: groups by ``meta[by]`` with weights and ids."""
    groups: dict[str, list[int]] = {}
    for i, meta in enumerate(metas):
        key = meta.get(by)
        if key is None:
            raise UserError(f"mixture: document {ids[i]!r} has no meta field {by!r}")
        groups.setdefault(str(key), []).append(i)
    sizes = {g: float(sum(texts_len[i] for i in idx)) for g, idx in groups.items()}
    w = weights(sizes, method, weights_, tau)
    return {"kind": "mixture", "by": by, "method": method, "tau": tau,
            "groups": {g: {"weight": w[g], "chars": sizes[g], "docs": len(idx),
                           "natural_weight": sizes[g] / sum(sizes.values()),
                           "ids": [ids[i] for i in idx]} for g, idx in sorted(groups.items())}}
