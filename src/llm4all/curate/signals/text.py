"""Shared tokenisation for the text signals: words, sentences, lines and syllables.

One ``Doc`` per document; every property is computed at most once (``cached_property``), so
signals computed together share one tokenisation pass and a signal that needs only the
characters never pays for word splitting.

Definitions (documented in docs/curate.md, "Signals"):

- word: a maximal run of word characters (Unicode letters, digits, underscore, combining
  marks) joined by inner apostrophes or hyphens ("don't", "well-known" are one word), lower-
  cased. Punctuation-only strings are not words.
- sentence: a run of text ending in terminal punctuation (``. ! ? …`` and the CJK full-width
  marks, optionally followed by closing quotes/brackets) followed by whitespace or the end of
  the text; a trailing run without terminal punctuation counts as a sentence if it has a word.
  So text with words but no sentence end is one sentence.
- syllables: an offline vowel-group heuristic with English (silent -e, -le, -ed, -es) or
  French (mute final -e/-es, ``é`` + vowel hiatus, diaeresis) corrections; no dictionary.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cached_property

# word characters: \w plus combining diacritics (U+0300-036F) and the Indic blocks whose vowel
# signs are combining marks (U+0900-0DFF minus the danda punctuation U+0964-0965)
_W = r"[\w\u0300-\u036f\u0900-\u0963\u0966-\u0dff]"
WORD_RE = re.compile(rf"{_W}+(?:['’\-]{_W}+)*")
SENTENCE_END_RE = re.compile(r"[.!?…。！？]+[\"'”’»)\]]*(?=\s|$)")
HAS_WORD_RE = re.compile(_W)
PARAGRAPH_RE = re.compile(r"\n\s*\n")

# vowel letters for the syllable heuristics (y is a vowel letter in both languages)
VOWELS_EN = "aeiouyàâäáéèêëíîïóôöúûüù"
VOWELS_FR = "aeiouyàâäéèêëîïôöûüùœæ"
_VOWEL_GROUP_EN = re.compile(f"[{VOWELS_EN}]+")
_VOWEL_GROUP_FR = re.compile(f"[{VOWELS_FR}]+")
# English vowel pairs usually spoken as two syllables ("lion", "radio", "period"), except
# after c/g/s/t where "-tion", "-cial", "-gion", "-sion" are one syllable
_HIATUS_EN = re.compile(r"(?:^|[^cgstx])i[aou]")
_APOSTROPHE_RE = re.compile(r"['’]")
_HIATUS_FR = re.compile(r"é[aeiouyàâäéèêëîïôöûüù]|[aeiou][ïë]")
_SYLLABLE_CACHE_SIZE = 1 << 17  # words; cleared when full (keeps memory bounded)


class Doc:
    """One document's text with its tokenisation computed lazily, at most once."""

    def __init__(self, text: str):
        self.text = text

    @cached_property
    def lower(self) -> str:
        """The text, lower-cased."""
        return self.text.lower()

    @cached_property
    def words(self) -> list[str]:
        """Lower-cased words in text order (see the module docstring for the definition)."""
        return WORD_RE.findall(self.lower)

    @cached_property
    def word_counts(self) -> Counter[str]:
        """Frequency of each word type."""
        return Counter(self.words)

    @cached_property
    def word_ids(self) -> list[int]:
        """Words as dense integer ids (first occurrence order), for n-gram arithmetic."""
        index: dict[str, int] = {}
        return [index.setdefault(w, len(index)) for w in self.words]

    @cached_property
    def n_sentences(self) -> int:
        """Number of sentences; 0 iff the text has no word, else at least 1."""
        return count_sentences(self.text)

    @cached_property
    def lines(self) -> list[str]:
        """Non-blank lines, stripped."""
        return [s for s in (line.strip() for line in self.text.splitlines()) if s]

    @cached_property
    def paragraphs(self) -> list[str]:
        """Non-blank paragraphs (separated by a blank line), stripped."""
        return [s for s in (p.strip() for p in PARAGRAPH_RE.split(self.text)) if s]

    def syllables(self, lang: str = "en") -> int:
        """Total syllables of all words under the ``lang`` ("en" or "fr") heuristic."""
        counter = syllables_en if lang == "en" else syllables_fr
        return sum(counter(w) * c for w, c in self.word_counts.items())


def count_sentences(text: str) -> int:
    """Sentences in ``text``: pieces between sentence ends that contain at least one word."""
    return sum(1 for piece in SENTENCE_END_RE.split(text) if HAS_WORD_RE.search(piece))


def _cached(fn):
    """Memoise a word -> int function in a plain dict, cleared when it reaches its cap."""
    cache: dict[str, int] = {}

    def wrapper(word: str) -> int:
        n = cache.get(word)
        if n is None:
            if len(cache) >= _SYLLABLE_CACHE_SIZE:
                cache.clear()
            n = cache[word] = fn(word)
        return n

    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper


@_cached
def syllables_en(word: str) -> int:
    """English syllables of one lower-case word: vowel groups with silent-e/-le/-ed/-es rules.

    A heuristic in the tradition of the vowel-group counters used with Flesch (1948); it
    needs no dictionary. Hyphenated words are the sum of their parts; a word without a vowel
    letter (digits, "hmm") counts 1.
    """
    if "-" in word:
        return sum(syllables_en(part) for part in word.split("-") if part)
    w = word.replace("'", "").replace("’", "")
    n = len(_VOWEL_GROUP_EN.findall(w))
    if n > 1 and w.endswith("e"):
        # silent final e ("make", "there"), but "-le" after a consonant is a syllable
        # ("table", "little") and "-ee" is not silent ("agree")
        if not (w.endswith("le") and len(w) > 2 and w[-3] not in VOWELS_EN) and w[-2] != "e":
            n -= 1
    elif n > 1 and w.endswith("ed") and len(w) > 3 and w[-3] not in "td" and w[-3] not in VOWELS_EN:
        n -= 1  # "walked", "moved"; "wanted", "needed" keep the syllable
    elif (
        n > 1
        and w.endswith("es")
        and len(w) > 3
        and w[-3] not in VOWELS_EN
        and not w.endswith(("ses", "zes", "xes", "ches", "shes", "ges", "ces"))
    ):
        n -= 1  # "makes", "times"; "boxes", "houses" keep it
    n += len(_HIATUS_EN.findall(w))
    return max(1, n)


@_cached
def syllables_fr(word: str) -> int:
    """French spoken syllables of one lower-case word: vowel groups with mute-e and hiatus rules.

    Vowel groups (with y, accented vowels, œ, æ); a mute final "-e"/"-es" does not count
    ("table" 1, "livres" 1); "é" + vowel and a diaeresis after a vowel split a group
    ("réalité" 4, "naïf" 2). The verbal "-ent" ending is not detected (a known limit).
    """
    if "-" in word:
        return sum(syllables_fr(part) for part in word.split("-") if part)
    parts = _APOSTROPHE_RE.split(word)
    if len(parts) > 1:  # elided article/pronoun ("l'", "d'", "qu'") is part of the next word
        kept = [p for i, p in enumerate(parts) if p and (i == len(parts) - 1 or len(p) > 2)]
        return sum(syllables_fr(p) for p in kept) or 1
    w = word
    n = len(_VOWEL_GROUP_FR.findall(w))
    if n > 1 and (w.endswith("e") or (w.endswith("es") and len(w) > 3)):
        tail = w[-2] if w.endswith("e") else w[-3]
        if tail not in VOWELS_FR:  # "table", "livres"; "joie", "vues" are one group anyway
            n -= 1
    n += len(_HIATUS_FR.findall(w))
    return max(1, n)
