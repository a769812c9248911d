"""The documents of one curate run, with their texts on disk: the driver holds no corpus.

``curate`` reads its input once, in order, into a ``DocStore``: every text is appended as
UTF-8 to one anonymous temporary file (beside the output, removed when the store closes) and
only its byte offsets stay in memory, with the ids, the meta and the text lengths. Signals,
steps and writers then read texts back through ``TextView`` (a lazy sequence: an index or a
slice reads just those texts with ``os.pread``), one shard or one batch at a time. The
driver's memory is then the per-document numbers (ids, meta, signal columns, a step's own
state such as MinHash signatures), not the text: doubling the corpus leaves the peak resident
memory flat (docs/curate.md, issue 17). The disk holds one extra copy of the text meanwhile.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from llm4all.data.document import Document


class DocStore:
    """Append-only documents: texts in a temporary file, ids / meta / lengths in memory."""

    def __init__(self, directory: str | Path | None = None):
        self._file = tempfile.TemporaryFile(dir=directory, prefix=".curate-texts-")  # noqa: SIM115
        self._offsets = array("q", [0])  # byte offset of each text; the last one is the file's end
        self.ids: list[str] = []
        self.metas: list[dict[str, Any]] = []
        self.lengths = array("q")  # characters of each text
        self.wheres: list[str] = []
        self._unflushed = False

    def add(self, doc: Document) -> int:
        """Append ``doc``; returns its index."""
        data = doc.text.encode("utf-8")
        self._file.write(data)
        self._offsets.append(self._offsets[-1] + len(data))
        self.ids.append(doc.id)
        self.metas.append(doc.meta)
        self.lengths.append(len(doc.text))
        self.wheres.append(doc.where)
        self._unflushed = True
        return len(self.ids) - 1

    def __len__(self) -> int:
        return len(self.ids)

    def text(self, i: int) -> str:
        if self._unflushed:  # os.pread reads the file, not the writer's buffer
            self._file.flush()
            self._unflushed = False
        start, end = self._offsets[i], self._offsets[i + 1]
        return os.pread(self._file.fileno(), end - start, start).decode("utf-8")

    def texts(self, indices: Sequence[int] | None = None) -> TextView:
        """The texts of ``indices`` (default: all) as a lazy sequence."""
        return TextView(self, range(len(self)) if indices is None else indices)

    def document(self, i: int) -> Document:
        return Document(self.ids[i], self.text(i), self.metas[i], where=self.wheres[i])

    def close(self) -> None:
        self._file.close()  # an unnamed temporary file: the OS removes it

    def __enter__(self) -> DocStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TextView(Sequence[str]):
    """Texts of a ``DocStore`` by position, read from disk when asked for (never all at once)."""

    def __init__(self, store: DocStore, indices: Sequence[int]):
        self.store, self.indices = store, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self.store.text(int(i)) for i in self.indices[k]]
        return self.store.text(int(self.indices[k]))

    def __iter__(self) -> Iterator[str]:
        for i in self.indices:
            yield self.store.text(int(i))
