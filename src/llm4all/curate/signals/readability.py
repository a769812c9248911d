"""Readability formulas from words per sentence (ASL) and syllables per word (ASW).

Counts come from text.py (offline syllable heuristic, no dictionary). A text without words
scores 0 on every formula (as textstat does); a text with words has at least one sentence.
"""

from __future__ import annotations

from llm4all.curate.signals.compute import signal
from llm4all.curate.signals.text import Doc

# Flesch 1948, "A new readability yardstick", J. Appl. Psychol. 32(3): RE = 206.835 - 1.015 ASL
# - 84.6 ASW
FRE_BASE, FRE_ASL, FRE_ASW = 206.835, 1.015, 84.6
# Kincaid, Fishburne, Rogers & Chissom 1975, Navy research branch report 8-75: grade = 0.39 ASL
# + 11.8 ASW - 15.59
FKGL_ASL, FKGL_ASW, FKGL_BASE = 0.39, 11.8, 15.59
# Kandel & Moles 1958, "Application de l'indice de Flesch a la langue francaise", Cahiers
# Etudes de Radio-Television 19: RE = 207 - 1.015 ASL - 73.6 ASW
KM_BASE, KM_ASL, KM_ASW = 207.0, 1.015, 73.6


def flesch_reading_ease(words: int, sentences: int, syllables: int) -> float:
    """Flesch Reading Ease from counts; 0 when there is no word."""
    if words == 0 or sentences == 0:
        return 0.0
    return FRE_BASE - FRE_ASL * words / sentences - FRE_ASW * syllables / words


def flesch_kincaid_grade(words: int, sentences: int, syllables: int) -> float:
    """Flesch-Kincaid grade level from counts; 0 when there is no word."""
    if words == 0 or sentences == 0:
        return 0.0
    return FKGL_ASL * words / sentences + FKGL_ASW * syllables / words - FKGL_BASE


def kandel_moles(words: int, sentences: int, syllables: int) -> float:
    """Kandel-Moles (French Flesch) reading ease from counts; 0 when there is no word."""
    if words == 0 or sentences == 0:
        return 0.0
    return KM_BASE - KM_ASL * words / sentences - KM_ASW * syllables / words


@signal("flesch", ("flesch_reading_ease", "flesch_kincaid_grade"))
def flesch(doc: Doc) -> dict[str, float]:
    """Flesch Reading Ease (Flesch 1948) and Flesch-Kincaid grade (Kincaid et al. 1975), English."""
    w, s, y = len(doc.words), doc.n_sentences, doc.syllables("en")
    return {
        "flesch_reading_ease": flesch_reading_ease(w, s, y),
        "flesch_kincaid_grade": flesch_kincaid_grade(w, s, y),
    }


@signal("flesch_fr", ("flesch_reading_ease_fr",))
def flesch_fr(doc: Doc) -> dict[str, float]:
    """French reading ease 207 - 1.015 ASL - 73.6 ASW (Kandel & Moles 1958), French syllables."""
    w, s, y = len(doc.words), doc.n_sentences, doc.syllables("fr")
    return {"flesch_reading_ease_fr": kandel_moles(w, s, y)}
