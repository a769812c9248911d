"""Quality-filter quantities of Gopher (Rae et al. 2021, appendix A) and C4 (Raffel et al. 2020).

The signals only measure; a filter step compares them with ``THRESHOLDS`` (published cut-offs).
Words are ``Doc.words`` (lower-cased, punctuation-free, see text.py); lines and paragraphs
are the non-blank ones. Every fraction is in [0, 1] and is 0 when its denominator is empty
(no words, no lines): empty text passes no minimum and breaks no maximum, so word_count
(minimum 50) is what removes it.
"""

from __future__ import annotations

import re

import numpy as np

from llm4all.curate.signals.compute import signal
from llm4all.curate.signals.text import Doc

# Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training
# Gopher", appendix A.1.1: a document must contain at least two of these words
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
BULLETS = ("•", "‣", "●", "○", "◦", "▪", "▫", "■", "□", "-", "*", "–", "—")
ELLIPSES = ("...", "…")
C4_END_MARKS = (".", "?", "!", '"')  # Raffel et al. 2020 sec. 2.2; TFDS c4_utils _END_MARKS
TOP_NGRAMS = (2, 3, 4)  # Rae et al. 2021 table A1: most frequent n-gram, n = 2..4
DUP_NGRAMS = (5, 6, 7, 8, 9, 10)  # Rae et al. 2021 table A1: duplicate n-grams, n = 5..10
_ALPHA_TOKEN_RE = re.compile(r"\S*?[^\W\d_]\S*")  # a whitespace token with a letter

_GOPHER = "Rae et al. 2021 (Gopher), app. A.1.1"
_GOPHER_A1 = "Rae et al. 2021 (Gopher), table A1"
_C4 = "Raffel et al. 2020 (C4), sec. 2.2; TFDS c4_utils (_MIN_NUM_SENTENCES = 3)"

#: column -> (minimum, maximum, citation); None = no bound on that side. A document passes
#: when min <= value <= max.
THRESHOLDS: dict[str, tuple[float | None, float | None, str]] = {
    "word_count": (50, 100_000, _GOPHER),
    "mean_word_length": (3, 10, _GOPHER),
    "hash_word_ratio": (None, 0.1, _GOPHER),
    "ellipsis_word_ratio": (None, 0.1, _GOPHER),
    "bullet_line_fraction": (None, 0.9, _GOPHER),
    "ellipsis_line_fraction": (None, 0.3, _GOPHER),
    "alpha_word_fraction": (0.8, None, _GOPHER),
    "stop_word_count": (2, None, _GOPHER),
    "dup_line_fraction": (None, 0.30, _GOPHER_A1),
    "dup_para_fraction": (None, 0.30, _GOPHER_A1),
    "dup_line_char_fraction": (None, 0.20, _GOPHER_A1),
    "dup_para_char_fraction": (None, 0.20, _GOPHER_A1),
    **{
        f"top_{n}gram_char_fraction": (None, t, _GOPHER_A1)
        for n, t in zip(TOP_NGRAMS, (0.20, 0.18, 0.16), strict=True)
    },
    **{
        f"dup_{n}gram_char_fraction": (None, t, _GOPHER_A1)
        for n, t in zip(DUP_NGRAMS, (0.15, 0.14, 0.13, 0.12, 0.11, 0.10), strict=True)
    },
    "sentence_count": (3, None, _C4),
    "c4_lorem_ipsum": (None, 0, _C4),
    "c4_curly_bracket": (None, 0, _C4),
}


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


@signal(
    "gopher_quality",
    (
        "word_count",
        "mean_word_length",
        "hash_word_ratio",
        "ellipsis_word_ratio",
        "bullet_line_fraction",
        "ellipsis_line_fraction",
        "alpha_word_fraction",
        "stop_word_count",
    ),
)
def gopher_quality(doc: Doc) -> dict[str, float]:
    """Gopher quality-filter quantities: length, symbols, bullets, stop words (Rae 2021, A.1.1).

    word_count and mean_word_length use the words of text.py; hash/ellipsis ratios count "#"
    and "..."/"…" per word; bullet/ellipsis fractions are over non-blank lines;
    alpha_word_fraction is over whitespace tokens (so "|" or "---" count as non-alphabetic);
    stop_word_count counts occurrences of the eight stop words (as datatrove and Dolma do).
    """
    text, words, lines = doc.text, doc.words, doc.lines
    n = len(words)
    tokens = len(text.split())  # whitespace tokens: symbol-only tokens count as non-alphabetic
    counts = doc.word_counts
    return {
        "word_count": float(n),
        "mean_word_length": _ratio(sum(len(w) * c for w, c in counts.items()), n),
        "hash_word_ratio": _ratio(text.count("#"), n),
        "ellipsis_word_ratio": _ratio(text.count("...") + text.count("…"), n),
        "bullet_line_fraction": _ratio(sum(s.startswith(BULLETS) for s in lines), len(lines)),
        "ellipsis_line_fraction": _ratio(sum(s.endswith(ELLIPSES) for s in lines), len(lines)),
        "alpha_word_fraction": _ratio(len(_ALPHA_TOKEN_RE.findall(text)), tokens),
        "stop_word_count": float(sum(counts.get(w, 0) for w in STOP_WORDS)),
    }


def duplicate_fractions(items: list[str]) -> tuple[float, float]:
    """(fraction of items equal to an earlier item, fraction of their characters)."""
    seen: set[str] = set()
    dup, dup_chars, chars = 0, 0, 0
    for s in items:
        chars += len(s)
        if s in seen:
            dup += 1
            dup_chars += len(s)
        else:
            seen.add(s)
    return _ratio(dup, len(items)), _ratio(dup_chars, chars)


def ngram_char_fractions(ids: np.ndarray, lengths: np.ndarray) -> dict[str, float]:
    """Gopher n-gram repetition over word ids (N,) with word lengths (N,), in characters.

    top_{n}gram: characters of the words covered by the most frequent n-gram (ties: the one
    with most characters; 0 when no n-gram occurs twice); dup_{n}gram: characters of the
    words covered by any n-gram that occurs at least twice. A word covered by overlapping
    occurrences counts once; both are fractions of all word characters (Rae et al. 2021,
    table A1 and its text).
    """
    out = {f"top_{n}gram_char_fraction": 0.0 for n in TOP_NGRAMS}
    out |= {f"dup_{n}gram_char_fraction": 0.0 for n in DUP_NGRAMS}
    total = float(lengths.sum())
    if total == 0:
        return out
    cum = np.concatenate([[0], np.cumsum(lengths)])  # (N+1,) characters before word i
    key = ids.astype(np.int64)  # (N - n + 1,) dense id of each n-gram, built up n by n
    for n in range(2, max(DUP_NGRAMS) + 1):
        if len(ids) < n:
            break
        # exact: re-densify after each step so key * n_ids stays far below 2**63
        _, key = np.unique(key[:-1] * (int(ids.max()) + 1) + ids[n - 1 :], return_inverse=True)
        freq = np.bincount(key)  # (distinct n-grams,)
        if n in TOP_NGRAMS:
            starts = np.arange(len(key))
            chars = cum[starts + n] - cum[starts]  # (N - n + 1,) characters of each n-gram
            best = np.flatnonzero(freq == freq.max())
            if freq[best[0]] < 2:  # no n-gram repeats: nothing is "most frequent"
                best = -1
            elif len(best) > 1:  # tie on count: the n-gram with most characters
                _, first = np.unique(key, return_index=True)  # first start of each n-gram
                best = best[np.argmax(chars[first[best]])]
            else:
                best = best[0]
            out[f"top_{n}gram_char_fraction"] = _covered(key == best, n, lengths) / total
        if n in DUP_NGRAMS:
            out[f"dup_{n}gram_char_fraction"] = _covered(freq[key] > 1, n, lengths) / total
    return out


def _covered(start_mask: np.ndarray, n: int, lengths: np.ndarray) -> float:
    """Characters of the words inside at least one n-gram starting where ``start_mask``."""
    delta = np.zeros(len(lengths) + 1, dtype=np.int64)
    starts = np.flatnonzero(start_mask)
    np.add.at(delta, starts, 1)
    np.add.at(delta, starts + n, -1)
    return float(lengths[np.cumsum(delta[:-1]) > 0].sum())


@signal(
    "gopher_repetition",
    (
        "dup_line_fraction",
        "dup_para_fraction",
        "dup_line_char_fraction",
        "dup_para_char_fraction",
        *(f"top_{n}gram_char_fraction" for n in TOP_NGRAMS),
        *(f"dup_{n}gram_char_fraction" for n in DUP_NGRAMS),
    ),
)
def gopher_repetition(doc: Doc) -> dict[str, float]:
    """Gopher repetition: duplicate lines/paragraphs, top/duplicate n-grams (Rae 2021, table A1).

    Line and paragraph fractions count occurrences after the first (as datatrove does), in
    items and in characters of the non-blank stripped lines/paragraphs; n-gram fractions are
    those of ``ngram_char_fractions``.
    """
    line_frac, line_chars = duplicate_fractions(doc.lines)
    para_frac, para_chars = duplicate_fractions(doc.paragraphs)
    ids = np.asarray(doc.word_ids, dtype=np.int64)
    lengths = np.fromiter(map(len, doc.words), dtype=np.int64, count=len(doc.words))
    return {
        "dup_line_fraction": line_frac,
        "dup_para_fraction": para_frac,
        "dup_line_char_fraction": line_chars,
        "dup_para_char_fraction": para_chars,
        **ngram_char_fractions(ids, lengths),
    }


@signal(
    "c4",
    ("sentence_count", "c4_terminal_punct_line_fraction", "c4_lorem_ipsum", "c4_curly_bracket"),
)
def c4(doc: Doc) -> dict[str, float]:
    """C4 page-cleaning quantities: sentences, terminal-punctuation lines (Raffel 2020, sec. 2.2).

    C4 keeps only lines ending in . ? ! or a closing quote (not "..."), drops pages with
    fewer than 3 sentences, any "lorem ipsum" and any curly bracket. The version of TFDS
    c4_utils that datatrove follows uses 5 sentences instead; THRESHOLDS uses 3.
    sentence_count counts the whole document's sentences, not only the kept lines.
    """
    lines = doc.lines
    terminal = sum(s.endswith(C4_END_MARKS) and not s.endswith("...") for s in lines)
    return {
        "sentence_count": float(doc.n_sentences),
        "c4_terminal_punct_line_fraction": _ratio(terminal, len(lines)),
        "c4_lorem_ipsum": float("lorem ipsum" in doc.lower),
        "c4_curly_bracket": float("{" in doc.text),
    }
