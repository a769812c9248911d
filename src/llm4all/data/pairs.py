"""(document, summary) pairs: read them in the common shapes of summarisation data sets.

Shapes, detected per record (``summary_record``):

- **XSum** (Narayan et al. 2018) and most others: ``{"document": str, "summary": str}``;
- **CNN/DailyMail** (Hermann et al. 2015; the HF ``cnn_dailymail`` fields): ``{"article": str,
  "highlights": str}``;
- **text + summary** (BillSum and friends): ``{"text": str, "summary": str}``: there ``text`` is
  the document;
- our own documents (``curate --format summary``'s output): ``{"text": summary, "meta":
  {"document": str}}``.

Each becomes a ``Document`` whose ``text`` is the summary (what a summariser learns to write, and
what curate's signals, dedup and selectors then look at) and whose ``meta["document"]`` is the
source, so the kept output reads back here unchanged. A record with a document but no summary
(or the reverse) is an error naming the missing field, at its file and line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from llm4all.data.document import Document
from llm4all.data.readers import read_documents, record_id_and_meta

#: (document field, summary field) of the shapes above, tried in this order
SHAPES = (("document", "summary"), ("article", "highlights"), ("text", "summary"))
DOCUMENT_KEY = "document"  # where the source lives in meta


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        found = "missing" if value is None else type(value).__name__
        raise ValueError(f"field {field!r} must be a string ({found})")
    return value


def pair_of(obj: dict) -> tuple[str, str, tuple[str, ...]]:
    """(document, summary, the fields they came from) of one record in any known shape."""
    meta = obj.get("meta")
    if isinstance(meta, dict) and DOCUMENT_KEY in meta:  # curate --format summary's own output
        document = _string(meta[DOCUMENT_KEY], f"meta.{DOCUMENT_KEY}")
        return document, _string(obj.get("text"), "text"), ("text",)
    for doc_field, sum_field in SHAPES:
        if doc_field in obj and (doc_field != "text" or sum_field in obj):  # {text} alone: no pair
            return (_string(obj[doc_field], doc_field), _string(obj.get(sum_field), sum_field),
                    (doc_field, sum_field))
    for doc_field, sum_field in SHAPES[:2]:
        if sum_field in obj:
            raise ValueError(f"field {doc_field!r} must be a string (missing)")
    raise ValueError("field 'summary' must be a string (missing): a summarisation pair is "
                     "{document, summary}, {article, highlights}, {text, summary} or "
                     "{text: summary, meta: {document}}")


def summary_record(obj: Any, default_id: str, text_key: str = "text", where: str = "") -> Document:
    """A (document, summary) record (any shape above) as a ``Document`` (the readers' parser)."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    document, summary, used = pair_of(obj)
    doc_id, meta = record_id_and_meta(obj, default_id, used)
    return Document(doc_id, summary, {**meta, DOCUMENT_KEY: document}, where=where)


def read_pairs(paths: str | Path | Iterable[str | Path], *, skip_bad: bool = False,
               rejects=None) -> Iterator[Document]:
    """(document, summary) pairs from JSONL(.gz/.zst) or parquet files or folders, with the
    readers' per-line errors (or ``skip_bad``: the rejects file)."""
    yield from read_documents(paths, skip_bad=skip_bad, rejects=rejects, parse=summary_record)
