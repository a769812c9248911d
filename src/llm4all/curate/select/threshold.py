"""Selection on one signal column: fixed bounds, a quantile range, or the top fraction.

``top_fraction`` on the column ``"ask_llm"`` is Ask-LLM selection (Sachdeva et al. 2024, "How
to Train Data-Efficient LLMs": keep the documents with the highest P("yes") from an
instruction-tuned model asked whether the text is informative for pre-training). Ranks break
ties by input order, so the quantile and top-fraction selectors keep exactly the requested
number of documents (``kept_count``) and are deterministic.
"""

from __future__ import annotations

import numpy as np

from llm4all.catalog import SELECTORS
from llm4all.curate.select.base import check_fraction, check_lengths, column, kept_count
from llm4all.curate.step import Decision
from llm4all.errors import UserError


def ranks(values: np.ndarray, descending: bool = False) -> np.ndarray:
    """0-based rank of each value (ties: earlier index first), (n,) int64."""
    order = np.lexsort((np.arange(len(values)), -values if descending else values))
    rank = np.empty(len(values), np.int64)
    rank[order] = np.arange(len(values))
    return rank


@SELECTORS.register("threshold")
class Threshold:
    """Keep documents whose signal lies between min and max (inclusive; either bound optional).

    The cut-offs are the user's; the signal modules document published ones (e.g.
    ``llm4all.curate.signals.THRESHOLDS``).

    Args:
        column: the signal column, e.g. "ppl", "mtld", "flesch_reading_ease", "ask_llm".
        min: smallest value kept (None: no lower bound).
        max: largest value kept (None: no upper bound).
    """

    def __init__(self, column: str, min: float | None = None, max: float | None = None):
        if min is None and max is None:
            raise UserError(f"threshold: give min, max or both for column {column!r}")
        if min is not None and max is not None and min > max:
            raise UserError(f"threshold: min {min} is above max {max} for column {column!r}")
        self.column, self.min, self.max = column, min, max

    def __call__(self, ids: list[str], texts: list[str], table: dict) -> list[Decision]:
        check_lengths(ids, texts, "threshold")
        values = column(table, self.column, len(ids), "threshold")
        out = []
        for doc_id, v in zip(ids, values, strict=True):
            if self.min is not None and v < self.min:
                out.append(Decision(doc_id, False, {"reason": "below_min", "column": self.column,
                                                    "value": float(v), "bound": self.min}))
            elif self.max is not None and v > self.max:
                out.append(Decision(doc_id, False, {"reason": "above_max", "column": self.column,
                                                    "value": float(v), "bound": self.max}))
            else:
                out.append(Decision(doc_id, True))
        return out


@SELECTORS.register("quantile")
class Quantile:
    """Keep the documents whose rank on a signal falls in the quantile range [low, high).

    Rank-based (ties by input order): of n documents, ranks round(low·n) … round(high·n) − 1
    in ascending value are kept, e.g. ``low: 0.1, high: 0.9`` drops the 10% tails.

    Args:
        column: the signal column.
        low: lower quantile, in [0, 1).
        high: upper quantile, in (low, 1].
    """

    def __init__(self, column: str, low: float = 0.0, high: float = 1.0):
        if not 0.0 <= low < high <= 1.0:
            raise UserError(f"quantile: need 0 <= low < high <= 1, got low={low}, high={high}")
        self.column, self.low, self.high = column, low, high

    def __call__(self, ids: list[str], texts: list[str], table: dict) -> list[Decision]:
        check_lengths(ids, texts, "quantile")
        n = len(ids)
        values = column(table, self.column, n, "quantile")
        rank = ranks(values)
        first = int(np.floor(self.low * n + 0.5))
        stop = int(np.floor(self.high * n + 0.5))
        out = []
        for doc_id, v, r in zip(ids, values, rank, strict=True):
            if first <= r < stop:
                out.append(Decision(doc_id, True))
            else:
                side = "below_quantile" if r < first else "above_quantile"
                out.append(Decision(doc_id, False, {
                    "reason": side, "column": self.column, "value": float(v),
                    "quantile": round(float(r) / n, 4),
                    "bound": self.low if r < first else self.high,
                }))
        return out


@SELECTORS.register("top_fraction")
class TopFraction:
    """Keep the top fraction of documents by a signal (Ask-LLM: column "ask_llm").

    Sachdeva et al. 2024, "How to Train Data-Efficient LLMs" rank by the Ask-LLM score and
    keep the top fraction; any other column works the same (``largest: false`` keeps the
    lowest values, e.g. of perplexity).

    Args:
        column: the signal column, e.g. "ask_llm".
        fraction: share of documents kept, in (0, 1].
        largest: keep the highest values (True) or the lowest (False).
    """

    def __init__(self, column: str, fraction: float = 0.5, largest: bool = True):
        check_fraction(fraction, "fraction", "top_fraction")
        self.column, self.fraction, self.largest = column, fraction, largest

    def __call__(self, ids: list[str], texts: list[str], table: dict) -> list[Decision]:
        check_lengths(ids, texts, "top_fraction")
        n = len(ids)
        values = column(table, self.column, n, "top_fraction")
        m = kept_count(self.fraction, n)
        rank = ranks(values, descending=self.largest)
        cutoff = float(values[rank == m - 1][0]) if m else None  # last kept value
        out = []
        for doc_id, v, r in zip(ids, values, rank, strict=True):
            if r < m:
                out.append(Decision(doc_id, True))
            else:
                out.append(Decision(doc_id, False, {
                    "reason": "not_top_fraction", "column": self.column, "value": float(v),
                    "cutoff": cutoff, "fraction": self.fraction,
                }))
        return out
