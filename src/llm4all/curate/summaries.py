"""Curating summarisation pairs (``curate --format summary``): factual-consistency columns.

A (document, summary) pair is read as a document whose text is the summary and whose
``meta.document`` holds the source (``data/pairs.py``), so every signal, filter, dedup and
selector works on it as on any document, and the kept output reads back unchanged. These
columns, computed from the pair itself (``entities.py``, span matching), join the signal table,
so ``{filter: bounds, bounds: {entity_precision: [1, null]}}`` and reports can use them; the
``factual`` selector (``select/factual.py``) is the step that also names what is unsupported:

- ``entity_precision``: Nan et al. 2021's prec_s, the share of the summary's distinct entities
  that the document supports (1 when it names none); ``number_precision``: the same for numbers;
- ``summary_entities``, ``summary_numbers``: how many distinct ones the summary has;
  ``unsupported_entities``, ``unsupported_numbers``: how many of them the document does not support;
- ``unigram_precision``: ROUGE-1 precision of the summary against the document (Lin 2004);
- ``summary_words``, ``document_words``: lengths in words; the summary's share of the document's
  words is the compression ratio.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from llm4all.curate.entities import Source, check, unigram_precision, words
from llm4all.data.pairs import DOCUMENT_KEY

COLUMNS = ("entity_precision", "number_precision", "summary_entities", "summary_numbers",
           "unsupported_entities", "unsupported_numbers", "unigram_precision", "summary_words",
           "document_words")


def pair_row(summary: str, document: str) -> tuple[float, ...]:
    """The ``COLUMNS`` of one pair, in order."""
    source = Source(document)
    s = check(summary, source)
    return (s.entity_precision, s.number_precision, len(s.entities), len(s.numbers),
            len(s.unsupported_entities), len(s.unsupported_numbers), unigram_precision(summary, source),
            len(words(summary)), len(source.words))


def summary_columns(texts: Iterable[str], metas: Iterable[dict]) -> dict[str, np.ndarray]:
    """The ``COLUMNS`` of every pair: its summary (``texts``) against ``meta["document"]``."""
    rows = [pair_row(text, meta[DOCUMENT_KEY]) for text, meta in zip(texts, metas, strict=True)]
    values = np.asarray(rows, np.float64).reshape(-1, len(COLUMNS))
    return {c: values[:, k] for k, c in enumerate(COLUMNS)}
