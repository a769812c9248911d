"""Write documents to JSONL (optionally .gz/.zst) or parquet, atomically.

Writers are context managers: the file appears under its final name only when the ``with``
block ends without an exception.
"""

from __future__ import annotations

import contextlib
import gzip
import json
from pathlib import Path
from typing import Any

from llm4all.data.document import Document
from llm4all.runs import atomic_path


class DocumentWriter:
    """``with DocumentWriter("out.jsonl.zst") as w: w.write(doc)`` -- format from the suffix."""

    def __init__(self, path: str | Path, *, parquet_rows_per_group: int = 10_000):
        self.path = Path(path)
        self.count = 0
        self._rows: list[dict[str, Any]] = []
        self._rows_per_group = parquet_rows_per_group
        self._pq_writer = None
        self._fh = None
        self._tmp: Path | None = None

    def __enter__(self) -> DocumentWriter:
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        name = self.path.name
        if name.endswith(".parquet"):
            return self
        if name.endswith(".gz"):
            self._fh = gzip.open(self._tmp, "wt", encoding="utf-8")
        elif name.endswith(".zst"):
            import zstandard

            raw = open(self._tmp, "wb")  # noqa: SIM115
            # zstd's default level: 5.7x faster than level 10 on curate's kept documents (0.26 vs
            # 1.48 s for 54 MB of JSONL) for files 17% larger
            self._fh = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=True)
        else:
            self._fh = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115
        return self

    def write(self, doc: Document | dict[str, Any]) -> None:
        record = doc.to_dict() if isinstance(doc, Document) else doc
        self.count += 1
        if self._fh is None:
            self._rows.append(record)
            if len(self._rows) >= self._rows_per_group:
                self._flush_parquet()
            return
        line = json.dumps(record, ensure_ascii=False) + "\n"
        self._fh.write(line.encode("utf-8") if self.path.name.endswith(".zst") else line)

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [{**r, "meta": json.dumps(r.get("meta", {}), ensure_ascii=False)} for r in self._rows]
        table = pa.Table.from_pylist(rows, schema=_parquet_schema(rows))
        if self._pq_writer is None:
            self._pq_writer = pq.ParquetWriter(self._tmp, table.schema, compression="zstd")
        self._pq_writer.write_table(table)
        self._rows = []

    def __exit__(self, exc_type, exc, tb) -> None:
        with self._stack:  # renames the temporary file into place only if no exception
            if self._fh is not None:
                self._fh.close()
            elif exc_type is None:
                if self._rows or self._pq_writer is None:
                    self._flush_parquet()
                self._pq_writer.close()
            if exc_type is not None:
                raise exc


def _parquet_schema(rows: list[dict[str, Any]]):
    import pyarrow as pa

    fields = [pa.field("id", pa.string()), pa.field("text", pa.string()), pa.field("meta", pa.string())]
    extra = {k for r in rows for k in r} - {"id", "text", "meta"}
    if extra:
        return None  # let pyarrow infer extra columns
    return pa.schema(fields)


def write_documents(path: str | Path, docs) -> int:
    """Write an iterable of documents to ``path``; returns the count."""
    with DocumentWriter(path) as w:
        for doc in docs:
            w.write(doc)
    return w.count


class ShardedWriter:
    """``DocumentWriter`` over numbered parts: ``DIR/part-00000.jsonl.zst``, a new part every
    ``per_shard`` records, each part complete (renamed into place) when the next one starts.

    For outputs too large for one file: readers take the folder (its parts in name order)."""

    def __init__(self, directory: str | Path, per_shard: int, suffix: str = ".jsonl.zst"):
        if per_shard < 1:
            raise ValueError(f"per_shard must be >= 1, got {per_shard}")
        self.path, self.per_shard, self.suffix = Path(directory), per_shard, suffix
        self.count = 0
        self.parts: list[Path] = []
        self._writer: DocumentWriter | None = None

    def __enter__(self) -> ShardedWriter:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, doc: Document | dict[str, Any]) -> None:
        if self._writer is None or self._writer.count >= self.per_shard:
            self._close_part()
            self.parts.append(self.path / f"part-{len(self.parts):05d}{self.suffix}")
            self._writer = DocumentWriter(self.parts[-1]).__enter__()
        self._writer.write(doc)
        self.count += 1

    def _close_part(self, exc_type=None, exc=None, tb=None) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.__exit__(exc_type, exc, tb)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close_part(exc_type, exc, tb)


def document_writer(path: str | Path, per_shard: int | None = None) -> DocumentWriter | ShardedWriter:
    """One file at ``path`` (format from its suffix), or with ``per_shard`` a folder of parts named
    after it: ``kept.jsonl.zst`` becomes ``kept/part-00000.jsonl.zst``, ..."""
    path = Path(path)
    if per_shard is None:
        return DocumentWriter(path)
    suffix = "".join(path.suffixes)
    return ShardedWriter(path.with_name(path.name[: -len(suffix)] if suffix else path.name), per_shard,
                         suffix or ".jsonl.zst")
