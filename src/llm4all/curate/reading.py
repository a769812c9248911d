"""Reading a curate run's input into its document store, every rejected record in the ledger.

``read_all`` streams the documents (or conversations) of every input file into the on-disk
``DocStore``, identifying their languages on the way (blocks of documents on the run's
workers while the next ones are read); a malformed record is
an error, or with ``--skip-bad`` a removal at step ``read`` written to the ledger with its file,
line and reason. ``Ledger`` counts and writes every removal of the run so that kept + removed ==
read can be checked at the end.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm4all.curate.engine import Workers
from llm4all.curate.store import DocStore
from llm4all.data.document import Document
from llm4all.data.readers import Parse
from llm4all.errors import UserError


class Ledger:
    """Counts and writes every removal, so that kept + removed == read can be checked."""

    def __init__(self, writer):
        self.writer = writer
        self.by_step: dict[str, Counter] = {}
        self.removed = 0

    def remove(self, step: str, doc: dict[str, Any], reason: dict[str, Any]) -> None:
        self.by_step.setdefault(step, Counter())[str(reason.get("reason", "unspecified"))] += 1
        self.removed += 1
        self.writer.write({**doc, "step": step, "reason": reason})


def set_languages(docs: list[Document], found: list[tuple[str, float]]) -> list[Document]:
    """Set each document's meta.lang (and lang_score) to the (language, score) ``found`` for it
    (``data.langid.identify``); a different language the input declared stays in
    meta.lang_declared."""
    for doc, (lang, score) in zip(docs, found, strict=True):
        declared = doc.meta.get("lang")
        doc.meta = {**doc.meta, "lang": lang, "lang_score": score}
        if declared is not None and declared != lang:
            doc.meta["lang_declared"] = declared
    return docs


LANG_BLOCK = 256  # documents language-identified per task (their first 4,000 characters wait in
# memory while in flight: 512 held 8 MiB more at the window's peak, and was no faster)


def read_all(docs: DocStore, data: list[Path], text_key: str, skip_bad: bool, max_docs: int | None,
             ledger: Ledger, rejects_file: Path | None = None, lang_id: bool = False,
             per_shard: int | None = None, parse: Parse | None = None,
             executor: Workers | None = None) -> int:
    """Read every document into ``docs`` (ids checked unique; with ``lang_id`` their languages
    identified, ``LANG_BLOCK`` documents per task on the ``executor``'s workers while the next
    ones are read); returns the rejected count. Each rejected record goes to the ledger (removed
    at step ``read``, with its file, line, reason and text) and to ``rejects_file``. ``parse``
    reads a record of another shape (``formats.record_parser``: conversations, pairs)."""
    from llm4all.data.langid import MAX_CHARS, identify
    from llm4all.data.readers import Rejects, read_documents

    rejects = Rejects(rejects_file, per_shard)  # a folder of parts with per_shard
    seen: set[str] = set()
    waiting: deque[list[Document]] = deque()  # blocks whose languages are being identified

    def blocks() -> Iterator[list[str]]:
        """Each block's texts for the model, their documents' texts already in the store: only
        their meta waits (in ``waiting``) for the languages, not the texts."""
        block: list[Document] = []
        for doc in read_documents(data, text_key=text_key, skip_bad=skip_bad, rejects=rejects, parse=parse):
            if doc.id in seen:
                raise UserError(f"{doc.where or 'input'}: duplicate document id {doc.id!r} (an earlier "
                                "document has it); ids must be unique")
            seen.add(doc.id)
            docs.add_text(doc)
            block.append(Document(doc.id, doc.text[:MAX_CHARS], doc.meta, where=doc.where))
            full = max_docs is not None and len(seen) >= max_docs
            if len(block) >= LANG_BLOCK or full:
                waiting.append(block)
                yield [d.text for d in block]  # all the model reads
                block = []
            if full:
                return
        if block:
            waiting.append(block)
            yield [d.text for d in block]

    texts = blocks()
    if lang_id:  # one block is not worth starting worker processes for
        head = list(itertools.islice(texts, 2))
        found = (executor or Workers("local", 1)).map(identify, itertools.chain(head, texts),
                                                      inline=len(head) < 2)
    else:
        found = texts
    for result in found:
        block = waiting.popleft()
        for doc in set_languages(block, result) if lang_id else block:
            docs.add_meta(doc)
    rejects.close()
    for n, row in enumerate(_rejected_rows(rejects.files, rejects.count)):
        where = f"{row['source']}:{row['line']}" if row else str(n)
        ledger.remove("read", {"id": f"rejected/{where}", "text": row.get("raw", ""),
                               "meta": {"source": row.get("source"), "line": row.get("line")}},
                      {"reason": "malformed record", "detail": row.get("reason", "unknown")})
    if not len(docs):
        raise UserError(f"{', '.join(map(str, data))}: no documents to curate")
    return rejects.count


def _rejected_rows(files: list[Path], count: int) -> Iterator[dict]:
    """The rejects files' rows, a line at a time (or ``count`` empty rows without a file)."""
    if not files:
        yield from ({} for _ in range(count))
    for file in files:
        with file.open(encoding="utf-8") as lines:
            yield from (json.loads(line) for line in lines)
