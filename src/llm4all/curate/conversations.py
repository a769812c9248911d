"""Curating conversations (``curate --format chat``): per-conversation columns for the steps.

A conversation is read as a document whose text is its transcript and whose ``meta.messages``
holds its turns (``data/chat.py``), so every signal, filter, dedup and selector works on it as
on any document, and the kept output reads back into ``tokenize --format chat`` unchanged. These
columns, computed from the turns themselves, join the signal table:

- ``turns``: the assistant's turns;
- ``prompt_words``: words of the system and user turns;
- ``response_words``: words of the assistant's turns — the length LIMA-style selections weigh
  (Zhao et al. 2024, "Long Is More for Alignment": the 1,000 longest responses of an
  instruction set are a strong SFT subset; ``{select: lima, quality: response_words}`` mixes
  that with QDIT diversity).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

COLUMNS = ("turns", "prompt_words", "response_words")


def chat_columns(metas: Iterable[dict]) -> dict[str, np.ndarray]:
    """The ``COLUMNS`` of every conversation, from its ``meta["messages"]``."""
    rows = []
    for meta in metas:
        messages = meta["messages"]
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        prompts = [m["content"] for m in messages if m["role"] != "assistant"]
        words = (sum(len(p.split()) for p in prompts), sum(len(a.split()) for a in answers))
        rows.append((len(answers), *words))
    values = np.asarray(rows, np.float64).reshape(-1, len(COLUMNS))
    return {c: values[:, k] for k, c in enumerate(COLUMNS)}
