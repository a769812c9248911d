"""Each text signal against hand-computed values, and the compute_signals contract."""

import math
import zlib
from fractions import Fraction

import numpy as np
import pytest

from llm4all.catalog import SIGNALS
from llm4all.curate.signals import THRESHOLDS, Doc, compute_signals, signal, signals_of
from llm4all.curate.signals.heuristics import ngram_char_fractions
from llm4all.curate.signals.lexical import fit_d, hdd, mtld, ttr_curve, vocd_d
from llm4all.errors import UserError


def test_entropies():
    assert signals_of("aabb", ["char_entropy"])["char_entropy"] == pytest.approx(1.0)
    assert signals_of("abcd", ["byte_entropy"])["byte_entropy"] == pytest.approx(2.0)
    assert signals_of("aaaa", ["char_entropy"])["char_entropy"] == 0.0
    # "é" is two UTF-8 bytes (0xC3 0xA9): one code point, two distinct bytes
    assert signals_of("é", ["char_entropy", "byte_entropy"]) == {
        "char_entropy": 0.0,
        "byte_entropy": pytest.approx(1.0),
    }
    # words a b a c: p = 1/2, 1/4, 1/4 -> 1.5 bits
    assert signals_of("a b a c", ["word_entropy"])["word_entropy"] == pytest.approx(1.5)


def test_compression_ratios():
    text = "to be or not to be " * 50
    data = text.encode()
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    expected = len(data) / len(c.compress(data) + c.flush())
    got = signals_of(text, ["zlib_ratio", "zstd_ratio"])
    assert got["zlib_ratio"] == pytest.approx(expected)
    assert got["zstd_ratio"] > 10  # 19-byte period repeated 50 times compresses well
    assert signals_of("", ["zlib_ratio", "zstd_ratio"]) == {"zlib_ratio": 0.0, "zstd_ratio": 0.0}


def test_ttr_and_mtld_by_hand():
    assert signals_of("a b a c", ["ttr"])["ttr"] == 0.75
    # forward a|a -> TTR 0.5 closes a factor, then b c d stays at TTR 1: 1 factor -> 5
    # backward d c b a a: TTR 0.8 at the end: partial factor (1 - 0.8) / 0.28 -> 5 / 0.714 = 7
    assert mtld(list("aabcd")) == pytest.approx(6.0)
    assert mtld(list("abcd")) == 4.0  # never leaves TTR 1: one factor, MTLD = N
    assert mtld([]) == 0.0


def test_hdd_by_hand():
    # N = 3 (a, a, b), 2 draws: P(a seen) = 1, P(b seen) = 1 - C(2,2)/C(3,2) = 2/3
    assert hdd([2, 1], draws=2) == pytest.approx((1 + 2 / 3) / 2)
    # fewer tokens than draws: the whole text is drawn, HD-D = TTR
    assert hdd([3, 1, 1], draws=42) == pytest.approx(3 / 5)
    assert hdd([], draws=42) == 0.0


def _mtld_reference(tokens, threshold=0.72):
    """Plain transcription of McCarthy & Jarvis (2010): factors with a partial remainder."""

    def factors(seq):
        total, start = 0.0, 0
        for i in range(len(seq)):
            segment = seq[start : i + 1]
            if len(set(segment)) / len(segment) <= threshold:
                total, start = total + 1, i + 1
        rest = seq[start:]
        if rest:
            total += (1 - len(set(rest)) / len(rest)) / (1 - threshold)
        return total or 1.0

    return (len(tokens) / factors(tokens) + len(tokens) / factors(tokens[::-1])) / 2


def _hdd_reference(tokens, draws=42):
    """Exact rational hypergeometric sum with math.comb."""
    n = len(tokens)
    total = sum(
        1 - Fraction(math.comb(n - tokens.count(t), draws), math.comb(n, draws))
        for t in set(tokens)
    )
    return float(total / draws)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mtld_hdd_equal_independent_reference(seed):
    rng = np.random.default_rng(seed)
    tokens = [f"w{int(i)}" for i in rng.zipf(1.6, size=300) % 80]
    assert mtld(tokens) == pytest.approx(_mtld_reference(tokens), rel=1e-12)
    counts = np.unique(tokens, return_counts=True)[1]
    assert hdd(counts) == pytest.approx(_hdd_reference(tokens), rel=1e-9)


def test_vocd_fit_recovers_d_and_matches_the_expected_curve():
    sizes = np.arange(35, 51, dtype=float)
    assert fit_d(sizes, ttr_curve(sizes, 57.0)) == pytest.approx(57.0, rel=1e-6)
    rng = np.random.default_rng(3)
    counts = np.bincount(rng.zipf(1.5, size=2000) % 400)
    counts = counts[counts > 0]
    # hdd(counts, n) is exactly the expected TTR of an n-token draw, the curve vocd samples
    expected = fit_d(sizes, np.array([hdd(counts, int(n)) for n in sizes]))
    assert vocd_d(counts, seed=0) == pytest.approx(expected, rel=0.05)
    assert vocd_d(counts, seed=0) == vocd_d(counts, seed=0)  # local RNG: deterministic
    assert vocd_d(counts[:5] * 0 + 1) == 0.0  # 5 tokens < 50: undefined, reported 0


def test_flesch_by_hand():
    got = signals_of("The cat sat on the mat.", ["flesch", "flesch_fr"])
    # 6 words, 1 sentence, 6 syllables
    assert got["flesch_reading_ease"] == pytest.approx(206.835 - 1.015 * 6 - 84.6)
    assert got["flesch_kincaid_grade"] == pytest.approx(0.39 * 6 + 11.8 - 15.59)
    assert got["flesch_reading_ease_fr"] == pytest.approx(207 - 1.015 * 6 - 73.6)
    two = signals_of("Readability is measurable. Cats sit.", ["flesch"])
    # 5 words, 2 sentences, syllables read-a-bil-i-ty 5 + is 1 + mea-sur-a-ble 4 + 1 + 1 = 12
    assert two["flesch_reading_ease"] == pytest.approx(206.835 - 1.015 * 2.5 - 84.6 * 12 / 5)


def test_gopher_quality_by_hand():
    text = "The cat and the dog.\n• item one\n• item two..."
    got = signals_of(text, ["gopher_quality"])
    assert got == pytest.approx(
        {
            "word_count": 9,
            "mean_word_length": 29 / 9,
            "hash_word_ratio": 0.0,
            "ellipsis_word_ratio": 1 / 9,
            "bullet_line_fraction": 2 / 3,
            "ellipsis_line_fraction": 1 / 3,
            "alpha_word_fraction": 9 / 11,  # "•" twice are non-alphabetic whitespace tokens
            "stop_word_count": 3,  # the, and, the
        }
    )


def test_gopher_repetition_by_hand():
    got = signals_of("aa b\naa b\nccc d", ["gopher_repetition"])
    assert got["dup_line_fraction"] == pytest.approx(1 / 3)
    assert got["dup_line_char_fraction"] == pytest.approx(4 / 13)
    assert got["dup_para_fraction"] == 0.0
    # words aa b aa b ccc d (10 chars): "aa b" occurs twice and covers 6 chars
    assert got["top_2gram_char_fraction"] == pytest.approx(0.6)
    assert got["top_3gram_char_fraction"] == 0.0  # no 3-gram repeats
    words = [f"w{i}" for i in range(6)] * 2
    ids = np.array([i % 6 for i in range(12)])
    lengths = np.array([len(w) for w in words])
    frac = ngram_char_fractions(ids, lengths)
    assert frac["dup_5gram_char_fraction"] == 1.0  # both copies are covered
    assert frac["dup_6gram_char_fraction"] == 1.0
    assert frac["dup_7gram_char_fraction"] == 0.0


def test_c4_by_hand():
    got = signals_of("One line ends here.\nThis one does not\nWhat about this?\n{x}", ["c4"])
    assert got == {
        "sentence_count": 3.0,
        "c4_terminal_punct_line_fraction": 0.5,
        "c4_lorem_ipsum": 0.0,
        "c4_curly_bracket": 1.0,
    }


def test_thresholds_name_real_columns():
    columns = {c for name in SIGNALS.names() for c in SIGNALS.get(name).columns}
    for col, (lo, hi, cite) in THRESHOLDS.items():
        assert col in columns
        assert lo is not None or hi is not None
        assert lo is None or hi is None or lo <= hi
        assert "et al." in cite
    assert THRESHOLDS["word_count"][:2] == (50, 100_000)
    assert THRESHOLDS["dup_10gram_char_fraction"][1] == 0.10


def test_compute_signals_columns_and_errors():
    out = compute_signals(iter(["a b", "", "c"]), ["ttr", {"name": "mtld", "threshold": 0.5}])
    assert list(out) == ["ttr", "mtld"]
    assert out["ttr"].dtype == np.float64 and out["ttr"].tolist() == [1.0, 0.0, 1.0]
    assert compute_signals([], ["flesch"])["flesch_kincaid_grade"].shape == (0,)
    with pytest.raises(UserError, match="unknown signals entry 'mtdl'.*did you mean 'mtld'"):
        compute_signals(["x"], ["mtdl"])
    with pytest.raises(UserError, match="unknown option 'draw'"):
        compute_signals(["x"], [{"name": "hdd", "draw": 10}])


@pytest.fixture
def batched_signal():
    @signal("test_batched_len", ("test_n_chars",), batched=True)
    def n_chars(texts, scale: float = 1.0):
        """Characters per text, batched (test double)."""
        return {"test_n_chars": np.array([len(t) * scale for t in texts])}

    yield n_chars
    SIGNALS._entries.pop("test_batched_len")


def test_batched_hook(batched_signal):
    out = compute_signals(["ab", "abcd"], ["ttr", {"name": "test_batched_len", "scale": 2.0}])
    assert out["test_n_chars"].tolist() == [4.0, 8.0]
    assert out["ttr"].tolist() == [1.0, 1.0]
    assert Doc("ab").words == ["ab"]
