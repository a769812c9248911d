"""Mixtures: sampling weights over groups of documents (languages, domains, sources).

The curate stage groups the kept documents by a meta field (``by: lang``), measures each
group's size n_i in characters of text, and weights the groups by a ``MIXTURES`` entry
(``llm4all ls mixtures``). The manifest (``mixture.json``) lists each group's weight, natural
weight n_i / Σ n, size and ids; the trainer's sampler (``train/sampler.py``) draws a group by
weight, then a window from one of its documents.

In a recipe: ``mixture: {by: lang, method: temperature, tau: 2.0}``; the keys besides ``by``
and ``method`` are the method's options, checked against its signature before any work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from llm4all.catalog import MIXTURES
from llm4all.errors import UserError, did_you_mean

Method = Literal["fixed", "proportional", "temperature"]
KEYS = ("by", "method")  # the mixture's own keys


def normalised(raw: dict[str, float]) -> dict[str, float]:
    total = sum(raw.values())
    return {g: w / total for g, w in raw.items()}


@MIXTURES.register("fixed")
@dataclass(frozen=True)
class FixedWeights:
    """The user's weight per group, normalised (hand-set mixtures, e.g. The Pile, Gao et al. 2020).

    The Pile ("An 800GB Dataset of Diverse Text for Language Modeling", table 1) sets each
    component's share by hand (epochs per component); DoReMi (Xie et al. 2023) is one way
    to search for such weights. The weights must name exactly the groups found.

    Args:
        weights: {group: weight}, non-negative with a positive sum.
    """

    weights: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if not self.weights or not isinstance(self.weights, dict):
            raise UserError("mixture: method 'fixed' needs weights: {group: weight}")
        values = list(self.weights.values())
        if not all(isinstance(w, int | float) and w >= 0 for w in values) or sum(values) <= 0:
            raise UserError("mixture: weights must be non-negative with a positive sum")

    def __call__(self, sizes: dict[str, float]) -> dict[str, float]:
        missing = sorted(set(sizes) - set(self.weights))
        extra = sorted(set(self.weights) - set(sizes))
        if missing or extra:
            raise UserError(f"mixture: weights must name exactly the groups {sorted(sizes)}; "
                            f"missing {missing}, unknown {extra}")
        return normalised({g: float(self.weights[g]) for g in sizes})


@MIXTURES.register("proportional")
@dataclass(frozen=True)
class ProportionalWeights:
    """q_i = n_i / Σ n: the natural distribution (T5's examples-proportional mixing, Raffel et al. 2020).

    T5 caps each task's size at K before mixing; here no cap (use ``temperature`` to flatten).
    """

    def __call__(self, sizes: dict[str, float]) -> dict[str, float]:
        return normalised(dict(sizes))


@MIXTURES.register("temperature")
@dataclass(frozen=True)
class TemperatureWeights:
    """q_i ∝ (n_i / Σ n)^(1/τ): temperature sampling over groups (Arivazhagan et al. 2019; XLM; mT5).

    τ = 1 is proportional and τ → ∞ uniform, so small groups (low-resource languages) are
    up-sampled. Arivazhagan et al. 2019 ("Massively Multilingual Neural Machine Translation in
    the Wild") use T = 5; XLM (Lample & Conneau 2019) samples languages ∝ p_i^α with α = 1/τ,
    XLM-R (Conneau et al. 2020) and mT5 (Xue et al. 2021) with α = 0.3; T5 (Raffel et al. 2020)
    calls it temperature-scaled mixing.

    Args:
        tau: the temperature τ > 0.
    """

    tau: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.tau, int | float) or isinstance(self.tau, bool) or self.tau <= 0:
            raise UserError(f"mixture: tau must be positive, got {self.tau!r}")

    def __call__(self, sizes: dict[str, float]) -> dict[str, float]:
        total = sum(sizes.values())
        return normalised({g: (n / total) ** (1.0 / self.tau) for g, n in sizes.items()})


def weights(sizes: dict[str, float], method: Method, fixed: dict[str, float] | None = None,
            tau: float = 1.0) -> dict[str, float]:
    """Normalised sampling weight per group by the ``MIXTURES`` entry ``method``.

    ``fixed`` is read by ``fixed`` (its ``weights``), ``tau`` by ``temperature``.
    """
    if not sizes:
        raise UserError("mixture: no groups")
    entry = MIXTURES.get(method)
    taken = {f.name for f in fields(entry)}
    options = {k: v for k, v in (("weights", fixed), ("tau", tau)) if k in taken}
    return entry(**options)(sizes)


@dataclass(frozen=True)
class Mixture:
    """A validated ``mixture:`` recipe mapping: the meta field to group by and the weighting."""

    by: str = "lang"
    method: str = "temperature"
    options: dict[str, Any] = field(default_factory=dict)  # the method's, defaults filled


def parse(spec: dict[str, Any]) -> Mixture:
    """Check a ``mixture:`` mapping through the registry before any work; UserError names the key."""
    if not isinstance(spec, dict):
        raise UserError(f"mixture: expected a mapping like {{by: lang, method: temperature}}, got {spec!r}")
    method = spec.get("method", "temperature")
    if method not in MIXTURES.names():
        raise UserError(f"mixture: unknown method {method!r}; {did_you_mean(str(method), MIXTURES.names())}")
    valid = [*KEYS, *(f.name for f in fields(MIXTURES.get(method)))]
    for key in spec:
        if key not in valid:
            raise UserError(f"mixture: unknown key {key!r} (method {method!r}); {did_you_mean(key, valid)}")
    weighting = MIXTURES.build({"name": method, **{k: v for k, v in spec.items() if k not in KEYS}})
    return Mixture(str(spec.get("by", "lang")), method, asdict(weighting))


def manifest(mixture: Mixture, ids: list[str], metas: list[dict], lengths: list[int]) -> dict:
    """``mixture.json``: the kept documents grouped by ``meta[by]``, with weights and ids."""
    groups: dict[str, list[int]] = {}
    for i, meta in enumerate(metas):
        key = meta.get(mixture.by)
        if key is None:
            raise UserError(f"mixture: document {ids[i]!r} has no meta field {mixture.by!r}")
        groups.setdefault(str(key), []).append(i)
    if not groups:
        raise UserError("mixture: no groups")
    sizes = {g: float(sum(lengths[i] for i in idx)) for g, idx in groups.items()}
    w = MIXTURES.build({"name": mixture.method, **mixture.options})(sizes)
    return {"kind": "mixture", "by": mixture.by, "method": mixture.method, **mixture.options,
            "groups": {g: {"weight": w[g], "chars": sizes[g], "docs": len(idx),
                           "natural_weight": sizes[g] / sum(sizes.values()),
                           "ids": [ids[i] for i in idx]} for g, idx in sorted(groups.items())}}
