"""The documents of one curate run, with their texts on disk: the driver holds no corpus.

``curate`` reads its input once, in order, into a ``DocStore``: every text is appended as
UTF-8 to one anonymous temporary file (beside the output, removed when the store closes), its
meta and source location as JSON to a second one, and only their byte offsets stay in memory,
with the ids and the text lengths. Signals, steps and writers then read texts back through
``TextView`` and meta through ``MetaView`` (lazy sequences: an index or a slice reads just
those records with ``os.pread``), one shard or one batch at a time. The driver's memory is then
the per-document numbers (ids, offsets, signal columns, a step's own state such as MinHash
signatures), not the text or its meta: doubling the corpus leaves the peak resident memory flat
(docs/curate.md, issue 17). The disk holds one extra copy of the text meanwhile.
"""

from __future__ import annotations

import json
import os
import tempfile
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from llm4all.data.document import Document
from llm4all.errors import UserError


class DocStore:
    """Append-only documents: texts and meta in temporary files, ids and lengths in memory."""

    def __init__(self, directory: str | Path | None = None):
        self._file = tempfile.TemporaryFile(dir=directory, prefix=".curate-texts-")  # noqa: SIM115
        self._meta_file = tempfile.TemporaryFile(dir=directory, prefix=".curate-meta-")  # noqa: SIM115
        self._offsets = array("q", [0])  # byte offset of each text; the last one is the file's end
        self._meta_offsets = array("q", [0])  # the same for each [meta, where] JSON record
        self.ids: list[str] = []
        self.lengths = array("q")  # characters of each text
        self.metas = MetaView(self)
        self._unflushed = False

    def add(self, doc: Document) -> int:
        """Append ``doc``; returns its index."""
        self.add_text(doc)
        self.add_meta(doc)
        return len(self.ids) - 1

    def add_text(self, doc: Document) -> int:
        """Append ``doc``'s id and text; its meta follows with ``add_meta`` (documents' metas
        are added in the same order as their texts). Returns its index."""
        data = doc.text.encode("utf-8")
        self._file.write(data)
        self._offsets.append(self._offsets[-1] + len(data))
        self.ids.append(doc.id)
        self.lengths.append(len(doc.text))
        self._unflushed = True
        return len(self.ids) - 1

    def add_meta(self, doc: Document) -> None:
        """Append the meta and source location of the next document whose text came first."""
        if len(self._meta_offsets) > len(self.ids):
            raise RuntimeError(f"DocStore: meta of {doc.id!r} before its text")
        try:
            record = json.dumps([doc.meta, doc.where], ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as e:  # the outputs are JSON: say so before any work
            raise UserError(f"{doc.where or doc.id}: meta is not JSON-serialisable ({e}); curate "
                            "writes meta as JSON: keep strings, numbers, lists and objects") from None
        self._meta_file.write(record)
        self._meta_offsets.append(self._meta_offsets[-1] + len(record))
        self._unflushed = True

    def __len__(self) -> int:
        return len(self.ids)

    def _read(self, file, offsets: array, i: int) -> bytes:
        if self._unflushed:  # os.pread reads the file, not the writer's buffer
            self._file.flush()
            self._meta_file.flush()
            self._unflushed = False
        start, end = offsets[i], offsets[i + 1]
        return os.pread(file.fileno(), end - start, start)

    def text(self, i: int) -> str:
        return self._read(self._file, self._offsets, i).decode("utf-8")

    def meta_and_where(self, i: int) -> tuple[dict[str, Any], str]:
        meta, where = json.loads(self._read(self._meta_file, self._meta_offsets, i))
        return meta, where

    def metas_of(self, indices: Sequence[int]) -> MetaView:
        """The meta of ``indices`` as a lazy sequence."""
        return MetaView(self, indices)

    def texts(self, indices: Sequence[int] | None = None) -> TextView:
        """The texts of ``indices`` (default: all) as a lazy sequence."""
        return TextView(self, range(len(self)) if indices is None else indices)

    def document(self, i: int) -> Document:
        meta, where = self.meta_and_where(i)
        return Document(self.ids[i], self.text(i), meta, where=where)

    def close(self) -> None:
        self._file.close()  # unnamed temporary files: the OS removes them
        self._meta_file.close()

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


class MetaView(Sequence[dict[str, Any]]):
    """The meta of every document of a ``DocStore`` (or of ``indices``) by position, read from disk
    when asked for."""

    def __init__(self, store: DocStore, indices: Sequence[int] | None = None):
        self.store, self.indices = store, indices

    def __len__(self) -> int:
        return len(self.store) if self.indices is None else len(self.indices)

    def _index(self, k: int) -> int:
        return int(k) if self.indices is None else int(self.indices[k])

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self.store.meta_and_where(self._index(i))[0] for i in range(len(self))[k]]
        return self.store.meta_and_where(self._index(k))[0]
