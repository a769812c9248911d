"""Curricula: the kept documents ordered by a difficulty signal, and a pacing function.

Curriculum learning (Bengio et al. 2009, "Curriculum Learning", ICML) shows a model easy
examples first and harder ones later. The curate stage writes the curriculum as a manifest
(``curriculum.json``): the kept documents' ids sorted by a signal column, and a pacing
function — the registry ``CURRICULA`` (``llm4all ls curricula``) — that says, at training step
t of T, which prefix of that order the sampler may draw from (``train/sampler.py``). This is
the "competence" c(t) ∈ [c0, 1] of Platanios et al. 2019, "Competence-based Curriculum
Learning for Neural Machine Translation" (NAACL): at progress x = t/T a document is eligible
when its difficulty rank is within the first c(x) fraction.

In a recipe: ``curriculum: {signal: flesch_kincaid_grade, order: easy_to_hard, pacing: root,
c0: 0.1}``; the keys besides ``signal``, ``order``, ``higher_is_harder`` and ``pacing`` are the
pacing entry's options, checked against its signature before any work.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np

from llm4all.catalog import CURRICULA
from llm4all.errors import UserError, did_you_mean

Pacing = Literal["linear", "root", "step"]
ORDERS = ("easy_to_hard", "hard_to_easy")
KEYS = ("signal", "order", "higher_is_harder", "pacing")  # the curriculum's own keys


def check_c0(c0: float) -> None:
    if not isinstance(c0, int | float) or not 0.0 <= c0 <= 1.0:
        raise UserError(f"curriculum: c0 (initial competence) must be in [0, 1], got {c0!r}")


@CURRICULA.register("linear")
@dataclass(frozen=True)
class LinearPacing:
    """Linear competence c(x) = min(1, c0 + (1 − c0)·x) (Platanios et al. 2019).

    Args:
        c0: initial competence, the fraction of the order available at step 0.
    """

    c0: float = 0.1

    def __post_init__(self) -> None:
        check_c0(self.c0)

    def __call__(self, x: float) -> float:
        return min(1.0, x * (1 - self.c0) + self.c0)


@CURRICULA.register("root")
@dataclass(frozen=True)
class RootPacing:
    """Square-root competence c(x) = min(1, √(c0² + (1 − c0²)·x)) (Platanios et al. 2019).

    New data arrives fast at first and slower later, so each newly added document gets a
    similar share of the training steps (their argument for it over ``linear``).

    Args:
        c0: initial competence, the fraction of the order available at step 0.
    """

    c0: float = 0.1

    def __post_init__(self) -> None:
        check_c0(self.c0)

    def __call__(self, x: float) -> float:
        return min(1.0, math.sqrt(x * (1 - self.c0 * self.c0) + self.c0 * self.c0))


@CURRICULA.register("step")
@dataclass(frozen=True)
class StepPacing:
    """Staircase: n_steps equal stages from c0 to 1, a staged curriculum (Bengio et al. 2009).

    Bengio et al.'s language-model curriculum grows the training set in stages (the vocabulary
    by 5,000 words at a time); Hacohen & Weinshall 2019 ("On the Power of Curriculum Learning
    in Training Deep Networks", ICML) call such staircase schedules pacing functions. Stage k of
    n (k = 0 .. n−1, each x ∈ [k/n, (k+1)/n)) allows c0 + (1 − c0)·k/(n − 1); one stage is all
    data from the start.

    Args:
        c0: competence of the first stage.
        n_steps: number of stages.
    """

    c0: float = 0.1
    n_steps: int = 4

    def __post_init__(self) -> None:
        check_c0(self.c0)
        if not isinstance(self.n_steps, int) or isinstance(self.n_steps, bool) or self.n_steps < 1:
            raise UserError(f"curriculum: n_steps must be an integer >= 1, got {self.n_steps!r}")

    def __call__(self, x: float) -> float:
        if self.n_steps == 1:
            return 1.0
        stage = math.floor(x * self.n_steps + 1e-9)
        return min(1.0, self.c0 + (1 - self.c0) * stage / (self.n_steps - 1))


def competence(t: int, total: int, pacing: Pacing = "root", c0: float = 0.1, n_steps: int = 4) -> float:
    """Fraction of the ordered data available at step ``t`` of ``total`` (in [c0, 1]).

    ``pacing`` names a ``CURRICULA`` entry; ``n_steps`` is read only by entries that take it
    (``step``): manifests carry the options of their own entry.
    """
    if total <= 0:
        raise UserError(f"curriculum: total steps must be positive, got {total}")
    entry = CURRICULA.get(pacing)
    taken = {f.name for f in fields(entry)}
    options = {k: v for k, v in (("c0", c0), ("n_steps", n_steps)) if k in taken}
    return entry(**options)(min(max(t / total, 0.0), 1.0))


def order(ids: list[str], values: np.ndarray, direction: Literal["easy_to_hard", "hard_to_easy"],
          higher_is_harder: bool = True) -> list[str]:
    """Ids sorted by difficulty (stable: ties keep input order)."""
    key = np.asarray(values, dtype=np.float64) * (1 if higher_is_harder else -1)
    if direction == "hard_to_easy":
        key = -key
    elif direction != "easy_to_hard":
        raise UserError(f"curriculum: order must be easy_to_hard or hard_to_easy, got {direction!r}")
    return [ids[i] for i in np.argsort(key, kind="stable")]


@dataclass(frozen=True)
class Curriculum:
    """A validated ``curriculum:`` recipe mapping: what to sort by, which way, how to pace."""

    signal: str
    order: str = "easy_to_hard"
    higher_is_harder: bool = True
    pacing: str = "root"
    options: dict[str, Any] = field(default_factory=dict)  # the pacing entry's, defaults filled


def parse(spec: dict[str, Any]) -> Curriculum:
    """Check a ``curriculum:`` mapping through the registry before any work; UserError names the key."""
    if not isinstance(spec, dict):
        raise UserError(f"curriculum: expected a mapping like {{signal: NAME, pacing: root}}, got {spec!r}")
    if "signal" not in spec:
        raise UserError("curriculum: needs signal: NAME (a computed signal column)")
    pacing = spec.get("pacing", "root")
    if pacing not in CURRICULA.names():
        raise UserError(f"curriculum: unknown pacing {pacing!r}; "
                        f"{did_you_mean(str(pacing), CURRICULA.names())}")
    entry = CURRICULA.get(pacing)
    valid = [*KEYS, *(f.name for f in fields(entry))]
    for key in spec:
        if key not in valid:
            raise UserError(f"curriculum: unknown key {key!r} (pacing {pacing!r}); "
                            f"{did_you_mean(key, valid)}")
    if spec.get("order", "easy_to_hard") not in ORDERS:
        raise UserError(f"curriculum: order must be easy_to_hard or hard_to_easy, got {spec['order']!r}")
    if not isinstance(spec.get("higher_is_harder", True), bool):
        raise UserError("curriculum: higher_is_harder must be true or false, "
                        f"got {spec['higher_is_harder']!r}")
    pace = CURRICULA.build({"name": pacing, **{k: v for k, v in spec.items() if k not in KEYS}})
    return Curriculum(spec["signal"], spec.get("order", "easy_to_hard"),
                      spec.get("higher_is_harder", True), pacing, asdict(pace))


def manifest(curriculum: Curriculum, ids: list[str], table: dict[str, np.ndarray]) -> dict:
    """``curriculum.json`` for the kept documents: the order and the pacing (name and options)."""
    if curriculum.signal not in table:
        raise UserError(f"curriculum: no signal column {curriculum.signal!r}; computed: {', '.join(table)}")
    return {"kind": "curriculum", "signal": curriculum.signal, "order": curriculum.order,
            "higher_is_harder": curriculum.higher_is_harder,
            "pacing": {"name": curriculum.pacing, **curriculum.options},
            "ids": order(ids, table[curriculum.signal], curriculum.order, curriculum.higher_is_harder)}
