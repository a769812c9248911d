"""Degenerate and arbitrary text: every signal returns finite floats, never NaN or inf."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm4all.catalog import SIGNALS
from llm4all.curate.signals import compute_signals, signals_of

# the text signals; model-based (batched) ones have their own degenerate-input tests with a
# tiny model in test_model_signals.py
TEXT_SIGNALS = [n for n in SIGNALS.names() if not getattr(SIGNALS.get(n), "batched", False)]

DEGENERATE = [
    "",
    "word",
    "no sentence end here",
    "x" * 50_000,  # one 50 KB line, one word
    "lorem " * 10_000,  # one 60 KB line, one repeated word
    "!!! ... ?? ###",
    "123 456 7890",
    "\n\n\n   \t",
    "\x00\ud800",  # NUL and a lone surrogate
]


@pytest.mark.parametrize("text", DEGENERATE, ids=range(len(DEGENERATE)))
def test_degenerate_texts_are_finite(text):
    values = signals_of(text, TEXT_SIGNALS)
    assert values and all(np.isfinite(v) for v in values.values())


def test_empty_text_defined_values():
    values = signals_of("", TEXT_SIGNALS)
    assert all(v == 0.0 for v in values.values())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=400), min_size=1, max_size=4))
def test_arbitrary_unicode_is_finite(texts):
    out = compute_signals(texts, TEXT_SIGNALS)
    for col, values in out.items():
        assert values.shape == (len(texts),), col
        assert np.isfinite(values).all(), col
