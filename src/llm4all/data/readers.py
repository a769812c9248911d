"""Stream documents from jsonl(.gz/.zst), parquet, folders of .txt, web archives (.warc(.gz),
.html: ``web.py``) and HF datasets on disk.

Every reader yields :class:`Document` lazily. A malformed record is a :class:`UserError`
naming the file and line (or row). With ``skip_bad=True`` the reader instead records each
rejected record, with its reason, through a :class:`Rejects` sink (written to a JSONL file
and counted) -- a record is never dropped silently.

Record schema: ``{"id": str, "text": str, "meta": {...}}``. ``id`` may be missing (then
``<file stem>/<line>`` is used) and ``meta`` may be missing; ``text`` must be a string.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from llm4all.data.document import Document
from llm4all.data.web import HTML_SUFFIXES, WARC_SUFFIXES, read_html, read_warc
from llm4all.errors import UserError

Parse = Callable[[Any, str, str, str], Document]

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".ndjson")
SUFFIXES = (*JSONL_SUFFIXES, ".parquet", ".txt", *WARC_SUFFIXES, *HTML_SUFFIXES)


class Rejects:
    """Where skipped records go: counted, and written with their reason to a JSONL file (or with
    ``per_shard``, to the folder ``path`` in parts of that many records: part-00000.jsonl, ...)."""

    def __init__(self, path: str | Path | None = None, per_shard: int | None = None):
        self.path = Path(path) if path else None
        self.per_shard = per_shard
        self.count = 0
        self.files: list[Path] = []
        self._fh: IO[str] | None = None

    def add(self, source: str, line: int, reason: str, raw: str) -> None:
        self.count += 1
        if self.path is None:
            return
        if self._fh is None or (self.per_shard and (self.count - 1) % self.per_shard == 0):
            self.close()
            name = f"part-{len(self.files):05d}.jsonl" if self.per_shard else None
            self.files.append(self.path / name if name else self.path)
            self.files[-1].parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.files[-1], "w", encoding="utf-8")  # noqa: SIM115
        record = {"source": source, "line": line, "reason": reason, "raw": raw[:10_000]}
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class ZstdFrames(io.RawIOBase):
    """The decompressed bytes of every frame of a .zst file; a file that ends inside a frame raises.

    zstandard's ``stream_reader`` returns end-of-file where a truncated frame stops, so a
    half-copied ``.jsonl.zst`` would read as a shorter, valid file. Here each frame must reach its
    end (``decompressobj().eof``); the bytes after one frame start the next (RFC 8878 sec. 3.1:
    a file is a sequence of frames).
    """

    def __init__(self, raw: IO[bytes]):
        import zstandard

        self._raw, self._dctx = raw, zstandard.ZstdDecompressor()
        self._frame, self._inside = self._dctx.decompressobj(), False
        self._out = bytearray()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._out:
            chunk = self._raw.read(1 << 16)
            if not chunk:
                if self._inside:
                    raise EOFError("the file ends inside a zstd frame (truncated)")
                return 0
            self._feed(chunk)
        n = min(len(b), len(self._out))
        b[:n] = self._out[:n]
        del self._out[:n]
        return n

    def _feed(self, data: bytes) -> None:
        while data:
            self._inside = True
            self._out += self._frame.decompress(data)
            data = b""
            if self._frame.eof:  # frame complete: what follows is the next frame
                data, self._inside = self._frame.unused_data, False
                self._frame = self._dctx.decompressobj()

    def close(self) -> None:
        self._raw.close()
        super().close()


def _open_text(path: Path) -> IO[bytes]:
    name = path.name
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        return ZstdFrames(open(path, "rb"))  # noqa: SIM115
    return open(path, "rb")  # noqa: SIM115


def _record_to_doc(obj: Any, default_id: str, text_key: str, where: str = "") -> Document:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    text = obj.get(text_key)
    if not isinstance(text, str):
        found = "missing" if text is None else type(text).__name__
        raise ValueError(f"field {text_key!r} must be a string ({found})")
    doc_id, meta = record_id_and_meta(obj, default_id, (text_key,))
    return Document(doc_id, text, meta, where=where)


def record_id_and_meta(obj: dict, default_id: str, used: tuple[str, ...]) -> tuple[str, dict]:
    """A record's checked id (``default_id`` when absent) and its meta: ``meta`` plus every field
    other than id, meta and the ``used`` ones (raises ValueError naming the bad field)."""
    doc_id = obj.get("id", default_id)
    if isinstance(doc_id, bool) or not isinstance(doc_id, str | int) or doc_id == "":
        got = json.dumps(doc_id, default=str)
        raise ValueError(f"field 'id' must be a non-empty string or an integer, got {got}")
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise ValueError("field 'meta' must be an object")
    extra = {k: v for k, v in obj.items() if k not in ("id", "meta", *used)}
    return str(doc_id), {**extra, **meta} if extra else meta


def read_jsonl(path: Path, *, text_key: str = "text", rejects: Rejects | None = None,
               parse: Parse | None = None) -> Iterator[Document]:
    """Documents from a JSONL file (optionally .gz or .zst compressed), one object per line."""
    parse = parse or _record_to_doc
    try:
        raw = _open_text(path)
    except OSError as e:
        raise UserError(f"{path}: cannot open ({e.strerror or e})") from None
    with raw, io.BufferedReader(raw) as buffered:
        lineno = 0
        while True:
            try:
                line = buffered.readline()
            except (OSError, EOFError, gzip.BadGzipFile) as e:
                raise UserError(f"{path}: line {lineno + 1}: corrupt compressed data ({e})") from None
            except Exception as e:  # zstandard.ZstdError
                raise UserError(f"{path}: line {lineno + 1}: corrupt compressed data ({e})") from None
            if not line:
                break
            lineno += 1
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
                yield parse(json.loads(text), f"{_stem(path)}/{lineno}", text_key, f"{path}: line {lineno}")
            except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
                reason = _reason(e)
                damage = _compression_damage(path)  # garbage lines out of a damaged stream
                if damage:
                    raise UserError(f"{path}: line {lineno}: corrupt compressed data ({damage})") from None
                if rejects is None:
                    raise UserError(f"{path}: line {lineno}: {reason}") from None
                rejects.add(str(path), lineno, reason, line.decode("utf-8", "replace"))


def _compression_damage(path: Path) -> str | None:
    """Why the compressed file ``path`` is damaged, or None if it reads whole (or is not compressed).

    Called when a record fails to parse: a corrupted deflate or zstd block can decompress to
    garbage before the stream's checksum is reached, which would otherwise be reported as
    invalid JSON (gzip checks its CRC-32 only at the end, RFC 1952 sec. 2.3.1)."""
    if not path.name.endswith((".gz", ".zst")):
        return None
    try:
        with _open_text(path) as f:
            while f.read(1 << 20):
                pass
    except Exception as e:  # noqa: BLE001 - zlib.error, gzip.BadGzipFile, zstandard.ZstdError, EOFError
        return f"{type(e).__name__}: {e}"
    return None


def read_parquet(path: Path, *, text_key: str = "text", rejects: Rejects | None = None,
                 parse: Parse | None = None) -> Iterator[Document]:
    """Documents from a parquet file with a string column ``text`` (and optional id/meta)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise UserError(f"{path}: not a readable parquet file ({e})") from None
    if parse is None and text_key not in pf.schema_arrow.names:
        raise UserError(f"{path}: no column {text_key!r}; columns: {', '.join(pf.schema_arrow.names)}")
    parse = parse or _record_to_doc
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for obj in batch.to_pylist():
            row += 1
            if isinstance(obj.get("meta"), str):  # our writer stores meta as JSON text
                with contextlib.suppress(json.JSONDecodeError):
                    obj["meta"] = json.loads(obj["meta"])
            try:
                yield parse(obj, f"{_stem(path)}/{row}", text_key, f"{path}: row {row}")
            except ValueError as e:
                if rejects is None:
                    raise UserError(f"{path}: row {row}: {e}") from None
                rejects.add(str(path), row, str(e), json.dumps(obj, default=str)[:10_000])


def read_text_file(path: Path, root: Path, *, rejects: Rejects | None = None) -> Iterator[Document]:
    """One document per .txt file; its id is the path relative to the folder, without suffix."""
    data = path.read_bytes()
    doc_id = str(path.relative_to(root).with_suffix(""))
    try:
        yield Document(doc_id, data.decode("utf-8"), {"path": str(path)}, where=str(path))
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        reason = f"invalid UTF-8 at byte {e.start}"
        if rejects is None:
            raise UserError(f"{path}: line {line}: {reason}") from None
        rejects.add(str(path), line, reason, data.decode("utf-8", "replace"))


def read_hf_dataset(path: Path, *, text_key: str = "text", split: str = "train",
                    rejects: Rejects | None = None) -> Iterator[Document]:
    """Documents from a Hugging Face dataset saved with ``save_to_disk`` (needs ``datasets``)."""
    try:
        import datasets
    except ImportError:
        raise UserError(f"{path}: reading a saved HF dataset needs `pip install datasets`") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError, FileNotFoundError) as e:
        raise UserError(f"{path}: not a readable saved HF dataset ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"{path}: no split {split!r}; splits: {', '.join(ds)}")
        ds = ds[split]
    if text_key not in ds.column_names:
        raise UserError(f"{path}: no column {text_key!r}; columns: {', '.join(ds.column_names)}")
    for row, obj in enumerate(ds, start=1):
        try:
            yield _record_to_doc(dict(obj), f"{path.name}/{row}", text_key, f"{path}: row {row}")
        except ValueError as e:
            if rejects is None:
                raise UserError(f"{path}: row {row}: {e}") from None
            rejects.add(str(path), row, str(e), json.dumps(obj, default=str)[:10_000])


def is_hf_dataset(path: Path) -> bool:
    """A folder ``datasets.save_to_disk`` wrote: a DatasetDict's ``dataset_dict.json``, or a
    Dataset's ``state.json`` with ``dataset_info.json`` and its ``.arrow`` files (a stray
    ``state.json`` in a folder of JSONL files does not make it a dataset)."""
    if not path.is_dir():
        return False
    if (path / "dataset_dict.json").exists():
        return True
    return ((path / "state.json").exists() and (path / "dataset_info.json").exists()
            and any(path.glob("*.arrow")))


def list_files(path: Path) -> list[Path]:
    """The data files under ``path`` in a stable (sorted) order."""
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES)
                   and not p.name.startswith("."))
    return files


def read_documents(paths: str | Path | Iterable[str | Path], *, text_key: str = "text",
                   skip_bad: bool = False, rejects: Rejects | None = None,
                   parse: Parse | None = None) -> Iterator[Document]:
    """Stream documents from files, folders (recursively, sorted) or saved HF datasets.

    Args:
        paths: one path or several; folders are walked for .jsonl(.gz/.zst), .parquet, .txt,
            .warc(.gz) and .html/.htm (the last two through the boilerplate remover of ``web.py``).
        text_key: the field holding the text.
        skip_bad: write malformed records to ``rejects`` instead of stopping with an error.
        rejects: where skipped records go (a counting sink if not given and skip_bad is set).
        parse: a JSONL/parquet record's reader, (record, default id, text_key, where) -> Document,
            raising ValueError for a bad record (default: the {id, text, meta} schema above;
            ``chat.conversation_record`` for conversations).
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    if skip_bad and rejects is None:
        rejects = Rejects()
    sink = rejects if skip_bad else None
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p}: no such file or directory")
        if is_hf_dataset(p) and parse is None:
            yield from read_hf_dataset(p, text_key=text_key, rejects=sink)
            continue
        files = list_files(p)
        if not files:
            raise UserError(f"{p}: no documents found (expected {', '.join(SUFFIXES)} files)")
        root = p if p.is_dir() else p.parent
        for f in files:
            if parse is not None and not f.name.endswith((*JSONL_SUFFIXES, ".parquet")):
                raise UserError(f"{f}: records of this kind come in JSONL or parquet files, not {f.suffix}")
            if f.name.endswith(JSONL_SUFFIXES):
                yield from read_jsonl(f, text_key=text_key, rejects=sink, parse=parse)
            elif f.suffix == ".parquet":
                yield from read_parquet(f, text_key=text_key, rejects=sink, parse=parse)
            elif f.suffix == ".txt":
                yield from read_text_file(f, root, rejects=sink)
            elif f.name.endswith(WARC_SUFFIXES):
                yield from read_warc(f, rejects=sink)
            elif f.name.endswith(HTML_SUFFIXES):
                yield from read_html(f, root, rejects=sink)
            else:
                raise UserError(f"{f}: unsupported file type; valid: {', '.join(SUFFIXES)}")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*JSONL_SUFFIXES, ".parquet", ".txt"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _reason(e: Exception) -> str:
    if isinstance(e, UnicodeDecodeError):
        return f"invalid UTF-8 at byte {e.start} of the line"
    if isinstance(e, json.JSONDecodeError):
        msg = e.msg.removesuffix(" at")  # "Invalid control character at": json's own message ends in "at"
        return f"invalid JSON ({msg} at column {e.colno})"
    return str(e)
