"""threshold, quantile and top_fraction selectors: hand-computed selections and bad options."""

from __future__ import annotations

import numpy as np
import pytest

from llm4all.catalog import SELECTORS
from llm4all.errors import UserError

IDS = ["a", "b", "c", "d", "e"]
TEXTS = [""] * 5
TABLE = {"ppl": np.array([10.0, 500.0, 30.0, 30.0, 2.0]), "ask_llm": np.array([.9, .1, .5, .7, .3])}


def run(spec):
    out = SELECTORS.build(spec)(IDS, TEXTS, TABLE)
    assert [d.id for d in out] == IDS  # one decision per document, in order
    assert all((d.reason is None) == d.keep for d in out)
    return out


def test_threshold_bounds_are_inclusive_and_reasons_name_column_value_bound():
    out = run({"name": "threshold", "column": "ppl", "min": 10, "max": 30})
    assert [d.keep for d in out] == [True, False, True, True, False]
    assert out[1].reason == {"reason": "above_max", "column": "ppl", "value": 500.0, "bound": 30}
    assert out[4].reason == {"reason": "below_min", "column": "ppl", "value": 2.0, "bound": 10}


def test_quantile_keeps_a_rank_range_ties_by_input_order():
    # ppl ascending: e(2) a(10) c(30) d(30) b(500); [0.2, 0.8) of 5 -> ranks 1..3 = a, c, d
    out = run({"name": "quantile", "column": "ppl", "low": 0.2, "high": 0.8})
    assert [d.keep for d in out] == [True, False, True, True, False]
    assert out[4].reason["reason"] == "below_quantile" and out[4].reason["quantile"] == 0.0
    assert out[1].reason["reason"] == "above_quantile" and out[1].reason["bound"] == 0.8
    out = run({"name": "quantile", "column": "ppl", "low": 0.4, "high": 0.6})  # rank 2: c
    assert [d.id for d in out if d.keep] == ["c"]


def test_top_fraction_is_ask_llm_selection():
    out = run({"name": "top_fraction", "column": "ask_llm", "fraction": 0.4})  # 2 of 5
    assert [d.id for d in out if d.keep] == ["a", "d"]
    assert out[2].reason == {"reason": "not_top_fraction", "column": "ask_llm", "value": 0.5,
                             "cutoff": 0.7, "fraction": 0.4}
    low = run({"name": "top_fraction", "column": "ppl", "fraction": 0.6, "largest": False})
    assert [d.id for d in low if d.keep] == ["a", "c", "e"]  # 30 tie: c before d


@pytest.mark.parametrize("fraction, n, kept", [(0.5, 5, 3), (0.1, 3, 1), (1.0, 7, 7), (0.25, 8, 2)])
def test_top_fraction_count_matches_target_within_rounding(fraction, n, kept):
    values = np.random.default_rng(n).normal(size=n)
    ids = [str(i) for i in range(n)]
    out = SELECTORS.build({"name": "top_fraction", "column": "x", "fraction": fraction})(
        ids, [""] * n, {"x": values})
    assert sum(d.keep for d in out) == kept
    assert abs(kept - fraction * n) <= 0.5 or kept == 1


@pytest.mark.parametrize("spec, match", [
    ({"name": "top_fraction", "column": "x", "fraction": 0}, r"fraction must be in \(0, 1\]"),
    ({"name": "top_fraction", "column": "x", "fraction": 1.5}, r"fraction must be in \(0, 1\]"),
    ({"name": "threshold", "column": "x"}, "give min, max or both"),
    ({"name": "threshold", "column": "x", "min": 2, "max": 1}, "above max"),
    ({"name": "quantile", "column": "x", "low": 0.5, "high": 0.5}, "low < high"),
    ({"name": "quantile", "column": "x", "lo": 0.5}, "unknown option 'lo'"),
])
def test_bad_options_fail_at_construction(spec, match):
    with pytest.raises(UserError, match=match):
        SELECTORS.build(spec)


def test_unknown_or_bad_column_fails_before_any_decision():
    with pytest.raises(UserError, match="unknown column 'ask_lm'.*did you mean 'ask_llm'"):
        SELECTORS.build({"name": "top_fraction", "column": "ask_lm"})(IDS, TEXTS, TABLE)
    with pytest.raises(UserError, match="non-finite value at row 1"):
        SELECTORS.build({"name": "threshold", "column": "x", "max": 1})(
            IDS, TEXTS, {"x": np.array([0, np.nan, 0, 0, 0])})
    with pytest.raises(UserError, match="shape"):
        SELECTORS.build({"name": "quantile", "column": "x"})(IDS, TEXTS, {"x": np.zeros(3)})
