"""``llm4all tokenize``: documents -> uint16/uint32 memmap token shards + index.json.

Layout of the output directory::

    index.json                 tokenizer, EOS id, dtype, per split: shards, token and doc counts
    train-00000.bin ...        flat token arrays (np.uint16 if the vocabulary fits, else uint32)
    validation-00000.bin ...
    train-docs.jsonl.zst       one line per document: id, shard, start, tokens (for samplers)
    train-00000.mask ...       with --format chat: one uint8 per token, 1 on the assistant's

Every document is followed by the EOS token, so windows that cross a document boundary see
it. With ``--format chat`` each record is a conversation (``chat.py``: OpenAI messages, Alpaca
or ShareGPT), rendered with the tokenizer's chat template (or ``--chat-template``); the mask
marks the tokens of the assistant's turns, the only ones training learns from, and the trainer
packs whole conversations into windows (``train/sampler.py``); no EOS is added (the template
ends every turn). The train/validation split is a deterministic function of the document id
(``blake2b(id) / 2**64 < val_fraction``): the same document always lands in the same split,
whatever the order, the number of workers or the other documents.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import numpy as np

from llm4all.data.readers import Rejects, read_documents
from llm4all.errors import UserError
from llm4all.runs import atomic_dir, mark_done, write_json, write_manifest

SPLITS = ("train", "validation")
_TOKENIZER = None  # per worker process
_CHAT = None  # per worker process, with --format chat: a chat.ChatEncoder


def split_of(doc_id: str, val_fraction: float) -> str:
    """'validation' for a stable ``val_fraction`` of document ids, else 'train'."""
    h = int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "big")
    return "validation" if h / 2**64 < val_fraction else "train"


def _init_worker(tokenizer_path: str, chat: bool = False, template: str | None = None) -> None:
    global _TOKENIZER, _CHAT
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from llm4all.data.chat import ChatEncoder
    from llm4all.models.load import load_tokenizer

    _TOKENIZER = load_tokenizer(tokenizer_path)
    _CHAT = ChatEncoder(_TOKENIZER, template) if chat else None


def _encode(items: list) -> list:
    """Token ids of a batch of texts, or (ids, assistant mask) of a batch of conversations."""
    if _CHAT is not None:
        return [_CHAT.encode(messages) for messages in items]
    return _TOKENIZER(items, add_special_tokens=False)["input_ids"]


def _batches(docs, size: int) -> Iterator[list]:
    batch = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _ShardWriter:
    """Appends token arrays to ``{split}-NNNNN.bin`` files, rolling over at ``shard_tokens``."""

    def __init__(self, out: Path, split: str, dtype, shard_tokens: int):
        self.out, self.split, self.dtype, self.shard_tokens = out, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.docs = 0
        self._fh = None
        self._mask = None
        self._index = None

    def add(self, doc_id: str, ids: np.ndarray, nbytes: int, mask: np.ndarray | None = None) -> None:
        if self._fh is None or self.shards[-1]["tokens"] >= self.shard_tokens:
            self._roll(mask is not None)
        shard = self.shards[-1]
        self._index.write(json.dumps({"id": doc_id, "shard": len(self.shards) - 1,
                                      "start": shard["tokens"], "tokens": int(ids.size)}) + "\n")
        ids.astype(self.dtype, copy=False).tofile(self._fh)
        if mask is not None:
            mask.astype(np.uint8, copy=False).tofile(self._mask)
            shard["assistant_tokens"] += int(mask.sum())
        shard["tokens"] += int(ids.size)
        shard["docs"] += 1
        shard["bytes"] += nbytes
        self.docs += 1

    def _roll(self, masked: bool = False) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._mask is not None:
            self._mask.close()
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._fh = open(self.out / name, "wb")  # noqa: SIM115
        if masked:  # the assistant mask beside the tokens: one byte per token
            self._mask = open(self.out / name.replace(".bin", ".mask"), "wb")  # noqa: SIM115
        if self._index is None:
            import zstandard

            raw = open(self.out / f"{self.split}-docs.jsonl.zst", "wb")  # noqa: SIM115
            self._index = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=True)
            self._index = _TextAdapter(self._index)
        self.shards.append({"file": name, "tokens": 0, "docs": 0, "bytes": 0,
                            **({"mask": name.replace(".bin", ".mask"), "assistant_tokens": 0}
                               if masked else {})})

    def close(self) -> dict:
        if self._fh is not None:
            self._fh.close()
            self._index.close()
        if self._mask is not None:
            self._mask.close()
        out = {"shards": self.shards, "tokens": sum(s["tokens"] for s in self.shards),
               "docs": self.docs, "bytes": sum(s["bytes"] for s in self.shards)}
        if any("mask" in s for s in self.shards):
            out["assistant_tokens"] = sum(s["assistant_tokens"] for s in self.shards)
        return out


class _TextAdapter:
    def __init__(self, raw):
        self.raw = raw

    def write(self, text: str) -> None:
        self.raw.write(text.encode("utf-8"))

    def close(self) -> None:
        self.raw.close()


def main(
    data: list[Path],
    *,
    out: Path,
    tokenizer: str = "smollm2-135m",
    val_fraction: float = 0.02,
    workers: int = 2,
    batch_docs: int = 64,
    shard_tokens: int = 100_000_000,
    text_key: str = "text",
    skip_bad: bool = False,
    max_docs: int | None = None,
    format: Literal["text", "chat"] = "text",  # noqa: A002 - the option's name
    chat_template: str | None = None,
) -> dict:
    """Tokenize documents into memmap token shards with a deterministic train/validation split.

    Args:
        data: document files or folders (.jsonl/.jsonl.gz/.jsonl.zst, .parquet, .txt, saved HF datasets).
        out: output directory (replaced atomically when the run succeeds).
        tokenizer: a registered model name, an HF directory or a .gguf file whose tokenizer to use.
        val_fraction: fraction of documents (chosen by a hash of their id) for validation.
        workers: tokenizer processes (1 = in this process).
        batch_docs: documents per tokenizer call.
        shard_tokens: start a new shard file after this many tokens.
        text_key: the field holding the text in JSONL/parquet records.
        skip_bad: write malformed records to out/rejects.jsonl instead of stopping.
        max_docs: stop after this many documents (for quick experiments).
        format: text (documents, each followed by EOS) or chat (conversations: OpenAI messages,
            Alpaca or ShareGPT records, rendered with a chat template, the assistant's tokens
            marked for the loss).
        chat_template: with --format chat: chatml, alpaca or a .jinja file instead of the
            tokenizer's own template (base models have none).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if workers < 1 or batch_docs < 1 or shard_tokens < 1:
        raise UserError("--workers, --batch-docs and --shard-tokens must be at least 1")
    if format not in ("text", "chat"):
        raise UserError(f"--format must be text or chat, got {format!r}")
    if chat_template is not None and format != "chat":
        raise UserError("--chat-template renders conversations; add --format chat")
    chat = format == "chat"

    from llm4all.models.load import load_tokenizer, resolve

    start = time.perf_counter()
    tok_path = str(resolve(tokenizer))
    tok = load_tokenizer(tok_path)
    eos_id = tok.eos_token_id
    if eos_id is None:
        raise UserError(f"tokenizer of {tokenizer!r} has no EOS token; cannot separate documents")
    vocab = len(tok)
    dtype = np.uint16 if vocab <= 2**16 else np.uint32
    if chat:  # the template resolves (or fails) before any work
        from llm4all.data.chat import ChatEncoder

        ChatEncoder(tok, chat_template)

    with atomic_dir(out) as tmp:
        rejects = Rejects(tmp / "rejects.jsonl") if skip_bad else None
        docs = _documents(data, chat, text_key, skip_bad, rejects, max_docs)
        writers = {s: _ShardWriter(tmp, s, dtype, shard_tokens) for s in SPLITS}
        init = (tok_path, chat, chat_template)
        pool = get_context("spawn").Pool(workers, _init_worker, init) if workers > 1 else None
        if pool is None:
            _init_worker(*init)
        encode = (lambda b: pool.imap(_encode, b, chunksize=1)) if pool else (lambda b: map(_encode, b))
        total = _write_all(docs, encode, writers, chat, eos_id, val_fraction, batch_docs, start)
        if pool is not None:
            pool.close()
            pool.join()
        splits = {s: w.close() for s, w in writers.items()}
        if total == 0:
            raise UserError(f"{', '.join(map(str, data))}: no documents to tokenize")
        seconds = time.perf_counter() - start
        index = {
            "format": "llm4all-token-shards/1",
            "tokenizer": str(tokenizer), "tokenizer_path": tok_path, "vocab_size": vocab,
            "eos_id": int(eos_id), "dtype": np.dtype(dtype).name, "val_fraction": val_fraction,
            "splits": splits, "rejected": rejects.count if rejects else 0,
            **({"chat": {"template": chat_template or "tokenizer"}} if chat else {}),
            "seconds": round(seconds, 2), "tokens_per_second": round(total / seconds),
        }
        if rejects:
            rejects.close()
        write_json(tmp / "index.json", index)
        counts = {s: {k: v for k, v in split.items() if k != "shards"} for s, split in splits.items()}
        write_manifest(tmp, "tokenize", inputs={"data": [str(p) for p in data], "tokenizer": str(tokenizer)},
                       metrics=counts)
        config = {"data": [str(p) for p in data], "out": str(out), "tokenizer": tokenizer,
                  "val_fraction": val_fraction, "workers": workers, "batch_docs": batch_docs,
                  "shard_tokens": shard_tokens, "text_key": text_key, "skip_bad": skip_bad,
                  "max_docs": max_docs, "format": format, "chat_template": chat_template}
        mark_done(tmp, config, seconds)
    _print_summary(out, index)
    return index


def _documents(data: list[Path], chat: bool, text_key: str, skip_bad: bool, rejects, max_docs: int | None):
    """The documents (or conversations) to tokenize, at most ``max_docs``."""
    if chat:
        from llm4all.data.chat import read_conversations

        docs = read_conversations(data, skip_bad=skip_bad, rejects=rejects)
    else:
        docs = read_documents(data, text_key=text_key, skip_bad=skip_bad, rejects=rejects)
    return docs if max_docs is None else (d for _, d in zip(range(max_docs), docs, strict=False))


def _write_all(docs, encode, writers: dict, chat: bool, eos_id: int, val_fraction: float,
               batch_docs: int, start: float) -> int:
    """Encode every document (or conversation) and append it to its split's shards; the token count."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    seen: set[str] = set()
    total = 0
    with Progress(TextColumn("tokenize"), BarColumn(), TextColumn("{task.fields[rate]}"),
                  TimeElapsedColumn(), transient=True) as progress:
        task = progress.add_task("tokenize", total=None, rate="")
        for batch, encoded in _zip_batches(_batches(docs, batch_docs), encode, chat):
            for doc, ids in zip(batch, encoded, strict=True):
                if doc.id in seen:
                    raise UserError(f"{doc.where or 'input'}: duplicate document id {doc.id!r} "
                                    "(an earlier document has it); ids must be unique")
                seen.add(doc.id)
                arr, mask = ids if chat else (np.asarray(ids + [eos_id], dtype=np.int64), None)
                writers[split_of(doc.id, val_fraction)].add(doc.id, arr, len(doc.text.encode()), mask)
                total += arr.size
            rate = total / max(time.perf_counter() - start, 1e-9)
            progress.update(task, advance=len(batch), rate=f"{total:,} tokens  {rate:,.0f} tok/s")
    return total


def _zip_batches(batches, encode, chat: bool = False):
    """Yield (batch, encoded) pairs, encoding in the pool while reading ahead."""
    import itertools

    while True:
        chunk = list(itertools.islice(batches, 16))
        if not chunk:
            return
        texts = [[d.meta["messages"] if chat else d.text for d in b] for b in chunk]
        yield from zip(chunk, encode(texts), strict=True)


def _print_summary(out: Path, index: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"token shards -> {out}")
    for col in ("split", "docs", "tokens", "shards", "MB of text"):
        table.add_column(col, justify="right")
    for name, s in index["splits"].items():
        table.add_row(name, f"{s['docs']:,}", f"{s['tokens']:,}", str(len(s["shards"])),
                      f"{s['bytes'] / 1e6:.2f}")
    Console().print(table)
    rejected = f", {index['rejected']} rejected records" if index["rejected"] else ""
    print(f"{index['tokens_per_second']:,} tokens/s over {index['seconds']} s "
          f"({index['dtype']}, eos={index['eos_id']}{rejected})")
