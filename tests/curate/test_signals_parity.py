"""Parity with the peers on the same inputs: lexicalrichness (TTR, MTLD, HD-D, vocd) and
textstat (Flesch pair). Skipped when the peers are not installed (dev extras)."""

import numpy as np
import pytest

from llm4all.curate.signals import Doc, signals_of
from llm4all.curate.signals.lexical import vocd_d

TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it "
    "was the season of light, it was the season of darkness, it was the spring of hope, it "
    "was the winter of despair, we had everything before us, we had nothing before us, we "
    "were all going direct to heaven, we were all going direct the other way."
)


def _lexicalrichness(text):
    lexicalrichness = pytest.importorskip("lexicalrichness")
    words = Doc(text).words  # the same token list for both implementations
    return lexicalrichness.LexicalRichness(text, preprocessor=None, tokenizer=lambda _: words)


def test_lexical_diversity_equals_lexicalrichness_on_same_tokens():
    lr = _lexicalrichness(TEXT)
    ours = signals_of(TEXT, ["ttr", "mtld", "hdd"])
    assert ours["ttr"] == pytest.approx(lr.ttr, rel=1e-12)
    assert ours["mtld"] == pytest.approx(lr.mtld(threshold=0.72), rel=1e-12)
    assert ours["hdd"] == pytest.approx(lr.hdd(draws=42), rel=1e-9)


def test_vocd_agrees_with_lexicalrichness_within_sampling_noise():
    lr = _lexicalrichness(TEXT * 3)
    counts = np.fromiter(Doc(TEXT * 3).word_counts.values(), dtype=np.int64)
    theirs = lr.vocd(ntokens=50, within_sample=100, iterations=3, seed=42)
    assert vocd_d(counts, seed=42) == pytest.approx(theirs, rel=0.08)


def _textstat_pyphen():
    textstat = pytest.importorskip("textstat")
    from textstat.backend.counts import _count_syllables

    return textstat, _count_syllables


def test_flesch_equals_textstat_where_counts_agree(monkeypatch):
    textstat, counts = _textstat_pyphen()
    # textstat's English syllables need nltk's CMU dictionary (a download); without it
    # textstat falls back to pyphen, which is what runs here
    monkeypatch.setattr(counts, "get_cmudict", lambda lang: None)
    # monosyllabic words, sentences of more than two words (textstat ignores shorter ones):
    # both sides count 12 words, 2 sentences, 12 syllables
    text = "The cat sat on the mat. The dog ran to the park."
    ours = signals_of(text, ["flesch"])
    assert ours["flesch_reading_ease"] == pytest.approx(textstat.flesch_reading_ease(text))
    assert ours["flesch_kincaid_grade"] == pytest.approx(textstat.flesch_kincaid_grade(text))
