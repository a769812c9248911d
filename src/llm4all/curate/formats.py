"""What ``curate --format`` reads, and the columns each format adds to the signal table.

- ``text``: documents (``{id, text, meta}``, web archives, text folders; ``data/readers.py``);
- ``chat``: conversations, curated on their transcripts (``conversations.py``): columns turns,
  prompt_words, response_words;
- ``summary``: (document, summary) pairs, curated on their summaries with the source in
  ``meta.document`` (``summaries.py``): the factual-consistency columns.

Each format's kept output reads back with the same format unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llm4all.data.readers import Parse
from llm4all.errors import UserError

FORMATS = ("text", "chat", "summary")


def check_format(format: str) -> None:  # noqa: A002 - curate's option
    if format not in FORMATS:
        raise UserError(f"--format must be {' or '.join(FORMATS)}, got {format!r}")


def record_parser(format: str) -> Parse | None:  # noqa: A002
    """The readers' record parser of ``format`` (None: the plain document schema)."""
    if format == "chat":
        from llm4all.data.chat import conversation_record

        return conversation_record
    if format == "summary":
        from llm4all.data.pairs import summary_record

        return summary_record
    return None


def format_columns(format: str) -> tuple[str, ...]:  # noqa: A002
    """The column names ``format`` adds to the signal table."""
    if format == "chat":
        from llm4all.curate.conversations import COLUMNS as CHAT

        return CHAT
    if format == "summary":
        from llm4all.curate.summaries import COLUMNS as SUMMARY

        return SUMMARY
    return ()


def column_values(format: str, texts: Sequence[str], metas: Sequence[dict]) -> dict[str, np.ndarray]:  # noqa: A002
    """The columns of ``format`` for every record (``texts`` and ``metas`` aligned)."""
    if format == "chat":
        from llm4all.curate.conversations import chat_columns

        return chat_columns(metas)
    if format == "summary":
        from llm4all.curate.summaries import summary_columns

        return summary_columns(texts, metas)
    return {}
