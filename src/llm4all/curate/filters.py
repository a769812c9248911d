"""Rule filters over signal columns: keep, or drop with a reason naming the rule and its source.

``published`` applies the cut-offs that production pipelines published (Gopher, Rae et al.
2021 app. A.1.1 and table A1; C4, Raffel et al. 2020 sec. 2.2), as collected in
``llm4all.curate.signals.heuristics.THRESHOLDS``, to whichever of those columns the pipeline
computed. ``bounds`` applies the user's own ``{column: [min, max]}``. A filter judges each
document by its own signals, so on Ray it runs in blocks of documents (``engine.filter_on_ray``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from llm4all.catalog import FILTERS
from llm4all.curate.step import Decision
from llm4all.errors import UserError, did_you_mean

Bounds = Mapping[str, tuple[float | None, float | None, str]]


def bound_decisions(ids: list[str], table: Mapping[str, np.ndarray], bounds: Bounds,
                    rule: str) -> list[Decision]:
    """Drop a document at the first column outside its [min, max]; the reason says which."""
    for col in bounds:
        if col not in table:
            raise UserError(f"filter {rule!r}: no signal column {col!r}; "
                            f"{did_you_mean(col, list(table))}")
    out = []
    for i, doc_id in enumerate(ids):
        reason = None
        for col, (lo, hi, source) in bounds.items():
            value = float(table[col][i])
            if lo is not None and value < lo:
                reason = {"reason": f"{col} < {lo:g}", "rule": rule, "value": value, "source": source}
            elif hi is not None and value > hi:
                reason = {"reason": f"{col} > {hi:g}", "rule": rule, "value": value, "source": source}
            if reason:
                break
        out.append(Decision(doc_id, reason is None, reason))
    return out


@FILTERS.register("published")
def published(ids: list[str], table: Mapping[str, np.ndarray],
              only: list[str] | None = None) -> list[Decision]:
    """Gopher and C4 published cut-offs on every computed column that has one (Rae 2021; Raffel 2020)."""
    from llm4all.curate.signals.heuristics import THRESHOLDS

    if only:
        unknown = [c for c in only if c not in THRESHOLDS]
        if unknown:
            raise UserError(f"filter 'published': no published threshold for {unknown[0]!r}; "
                            f"{did_you_mean(unknown[0], list(THRESHOLDS))}")
    columns = only or [c for c in THRESHOLDS if c in table]
    if not columns:
        raise UserError("filter 'published': none of the computed signals has a published "
                        "threshold; add gopher_quality, gopher_repetition or c4 to signals")
    return bound_decisions(ids, table, {c: THRESHOLDS[c] for c in columns}, "published")


@FILTERS.register("bounds")
def user_bounds(ids: list[str], table: Mapping[str, np.ndarray],
                bounds: Mapping[str, list]) -> list[Decision]:
    """The user's own ``{column: [min, max]}`` bounds on signal columns (null = open side)."""
    parsed = {}
    for col, pair in bounds.items():
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise UserError(f"filter 'bounds': {col}: expected [min, max], got {pair!r}")
        parsed[col] = (pair[0], pair[1], "user")
    return bound_decisions(ids, table, parsed, "bounds")

