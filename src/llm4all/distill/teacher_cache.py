"""Offline KD: the teacher's top-k log-probabilities per token, computed once and cached on disk.

For conversations (``tokenize --format chat``) the windows are instead the packed windows of
``data.packing.ConversationSampler`` (fixed by the seed; the teacher sees each conversation's own
position ids, and the reader's labels are −100 off the assistant's tokens, so KD covers answers
only). Otherwise the cache covers ALIGNED windows of a token-shard split: aligned window w is
``tokens[w·L : w·L + L + 1]`` (inputs its first L tokens, labels its last L), so a distillation
sampler draws cached rows and finds the teacher's outputs for exactly those inputs. Row i of
the cache holds aligned window ``windows[i]``, a seeded random permutation of all of the split's
aligned windows cut to ``max_windows``: a partial cache is a uniform sample of the whole split,
not its first documents (a split is stored in document order, so its head is one source, and a
student trained on the head of a sorted or curated split learns that source only). The
permutation is fixed by (number of aligned windows, seed), so a larger ``max_windows`` extends
the same sample and reuses the finished shards. Layout::

    index.json         teacher, shards, split, seq_len, top_k, n_windows, aligned_windows, seed,
                       shard list, dtypes, bytes_per_token, seconds, tokens_per_second
    windows.npy        (n,) int64 aligned-window number of each cached row
    ids-00000.npy      (n, L, k) uint16 (int32 if the vocabulary exceeds 65,536) teacher top-k ids
    logp-00000.npy     (n, L, k) float16 their log-probabilities at T = 1, sorted descending
    rest-00000.npy     (n, L) float16 log of the leftover mass 1 − Σ_k p (floored at LOG_REST_MIN)

So a token costs k·(2 + 2) + 2 bytes (258 for k = 64), against 2·V = 98,304 bytes for the
full fp16 distribution of SmolLM2's 49,152-token vocabulary. Keeping the top-k of the teacher's
distribution is the usual offline practice for LMs; ``rest`` lets a loss keep the leftover mass
as an extra class (see ``llm4all.distill.losses.sparse_kd``).

Each shard's three files are written atomically; a rerun skips shards whose files are complete
and recomputes the rest, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np

from llm4all.errors import UserError
from llm4all.runs import atomic_path, mark_done, write_json, write_manifest

# Floor of the cached log leftover mass: e^-60 ≈ 1e-26 is zero for every loss, and -60 is
# exact enough in float16 (whose range ends at -65,504) while -inf (k = V) would not be usable.
LOG_REST_MIN = -60.0
FORMAT = "llm4all-teacher-topk/1"


def n_windows_of(n_tokens: int, seq_len: int) -> int:
    """Number of aligned windows of L + 1 tokens (consecutive windows share one token)."""
    return max(0, (n_tokens - 1) // seq_len)


def window_order(n_aligned: int, seed: int) -> np.ndarray:
    """(n_aligned,) int64: the order in which a cache takes the split's aligned windows."""
    return np.random.default_rng(seed).permutation(n_aligned).astype(np.int64)


def topk_logprobs(logits, k: int):
    """Top-k of log_softmax over the last dim, in fp32: (ids, logp sorted descending, log leftover mass)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)  # (..., V)
    vals, ids = logp.topk(k, dim=-1)  # (..., k), sorted
    rest = torch.logsumexp(logp.scatter(-1, ids, float("-inf")), dim=-1)  # (...) log Σ_{not top-k} p
    return ids, vals, rest.clamp(min=LOG_REST_MIN)


def teacher_topk(model, input_ids, k: int, autocast_dtype=None, position_ids=None):
    """(ids, logp, rest) of a causal LM's next-token distributions for (B, L) inputs (with
    ``position_ids``: packed conversations, each attending to itself only).

    The output head runs one row at a time, so only one (L, V) fp32 block exists at once.
    """
    import torch

    from llm4all.models.device import model_device

    device = model_device(model)
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    head = model.get_output_embeddings()
    cast = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    with torch.inference_mode(), cast:
        extra = {} if position_ids is None else {"position_ids": position_ids.to(device), "use_cache": False}
        hidden = backbone(input_ids=input_ids.to(device), **extra).last_hidden_state  # (B, L, H)
        rows = [topk_logprobs(head(hidden[b]), k) for b in range(input_ids.shape[0])]
    return tuple(torch.stack(parts).cpu() for parts in zip(*rows, strict=True))


def _shard_names(j: int) -> dict[str, str]:
    return {key: f"{key}-{j:05d}.npy" for key in ("ids", "logp", "rest")}


def _shard_done(out: Path, j: int, n: int, seq_len: int, k: int) -> bool:
    """True if shard j's three files exist with the expected shapes (a crash leaves one missing)."""
    names = _shard_names(j)
    try:
        shapes = {key: np.load(out / name, mmap_mode="r").shape for key, name in names.items()}
    except (OSError, ValueError):
        return False
    return shapes == {"ids": (n, seq_len, k), "logp": (n, seq_len, k), "rest": (n, seq_len)}


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def build_cache(teacher_model, shards_dir: Path, out: Path, *, split: str = "train", seq_len: int = 256,
                top_k: int = 64, batch_size: int = 8, dtype: str = "bfloat16", max_windows: int | None = None,
                windows_per_shard: int = 512, teacher_name: str | None = None, seed: int = 0) -> dict:
    """Cache the teacher's top-k log-probabilities over aligned windows of a token-shard split.

    All aligned windows, or ``max_windows`` of them drawn uniformly without replacement
    (``window_order(n_aligned, seed)``; module docstring).

    ``dtype`` is the compute dtype: a float32 model runs under CPU autocast to it (a model
    loaded in that dtype already runs natively). Returns the written index.
    """
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from llm4all.data.shards import TokenShards

    if min(seq_len, top_k, batch_size, windows_per_shard) < 1:
        raise UserError("--seq-len, --top-k, --batch-size and windows_per_shard must be at least 1")
    shards = TokenShards(shards_dir)
    vocab = int(teacher_model.get_output_embeddings().weight.shape[0])
    if top_k > vocab:
        raise UserError(f"--top-k {top_k} exceeds the teacher's vocabulary of {vocab}")
    windows = _Windows(shards, split, seq_len, seed)
    n_aligned = windows.count
    n = n_aligned if max_windows is None else min(n_aligned, max_windows)
    if n < 1:
        raise UserError(f"{shards_dir}: split {split!r} has {shards.num_tokens(split)} tokens, fewer than "
                        f"one window of --seq-len {seq_len} + 1")
    compute = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in compute:
        raise UserError(f"unknown dtype {dtype!r}; valid: bfloat16, float16, float32")
    model_dtype = next(teacher_model.parameters()).dtype
    autocast = compute[dtype] if model_dtype == torch.float32 else None
    ids_dtype = np.uint16 if vocab <= 2**16 else np.int32
    settings = {
        "format": FORMAT, "teacher": teacher_name or str(getattr(teacher_model, "name_or_path", "")),
        "shards": str(Path(shards_dir).resolve()), "split": split, "seq_len": seq_len, "top_k": top_k,
        "vocab_size": vocab, "windows_per_shard": windows_per_shard, "dtype": dtype,
        "ids_dtype": np.dtype(ids_dtype).name, "logp_dtype": "float16", "log_rest_min": LOG_REST_MIN,
        "aligned_windows": n_aligned, "seed": seed, "split_tokens": shards.num_tokens(split),
        **({"chat": True} if shards.is_chat else {}),
    }
    out = Path(out)
    _check_resumable(out, settings)
    spans = [(j, s, min(s + windows_per_shard, n)) for j, s in enumerate(range(0, n, windows_per_shard))]
    write_json(out / "index.json", {**settings, "n_windows": n, "complete": False})
    order = window_order(n_aligned, seed)[:n]  # (n,) aligned window of each cached row
    if not (out / "windows.npy").is_file() or not np.array_equal(np.load(out / "windows.npy"), order):
        _save(out / "windows.npy", order)
    for stale in out.glob("*-*.npy"):  # shards beyond this run's count (an earlier, larger run)
        if int(stale.stem.split("-")[-1]) >= len(spans):
            stale.unlink()

    start, computed = time.perf_counter(), 0
    todo = [(j, a, b) for j, a, b in spans if not _shard_done(out, j, b - a, seq_len, top_k)]
    with Progress(TextColumn("teacher top-k"), BarColumn(), TextColumn("{task.fields[rate]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), transient=True) as progress:
        task = progress.add_task("cache", total=sum(b - a for _, a, b in todo) * seq_len, rate="")
        for j, a, b in todo:
            ids = np.empty((b - a, seq_len, top_k), dtype=ids_dtype)
            logp = np.empty((b - a, seq_len, top_k), dtype=np.float16)
            rest = np.empty((b - a, seq_len), dtype=np.float16)
            for i in range(a, b, batch_size):
                e = min(i + batch_size, b)
                x, positions = windows.inputs(order[i:e])  # (B, L)
                t_ids, t_logp, t_rest = teacher_topk(teacher_model, x, top_k, autocast, positions)
                ids[i - a:e - a], logp[i - a:e - a] = t_ids.numpy(), t_logp.numpy()
                rest[i - a:e - a] = t_rest.numpy()
                computed += (e - i) * seq_len
                rate = computed / max(time.perf_counter() - start, 1e-9)
                progress.update(task, advance=(e - i) * seq_len,
                                rate=f"{computed:,} tokens  {rate:,.0f} tok/s")
            for key, array in (("ids", ids), ("logp", logp), ("rest", rest)):
                _save(out / _shard_names(j)[key], array)

    seconds = time.perf_counter() - start
    files = [out / name for j, _, _ in spans for name in _shard_names(j).values()] + [out / "windows.npy"]
    index = {
        **settings, "n_windows": n, "tokens": n * seq_len,
        "shard_files": [{**_shard_names(j), "windows": b - a, "first_window": a} for j, a, b in spans],
        "bytes_per_token": round(sum(f.stat().st_size for f in files) / (n * seq_len), 3),
        "computed_tokens": computed, "reused_shards": len(spans) - len(todo),
        "seconds": round(seconds, 2), "tokens_per_second": round(computed / seconds, 1) if computed else None,
        "complete": True,
    }
    write_json(out / "index.json", index)
    return index


class _Windows:
    """The windows a cache covers: aligned windows of a token split, or, for conversations
    (tokenize --format chat), the packed windows of ``data.packing.ConversationSampler`` (seeded:
    the same plan the cache reader rebuilds), whose labels mask the prompt."""

    def __init__(self, shards, split: str, seq_len: int, seed: int):
        from llm4all.data.packing import ConversationSampler

        self.seq_len = seq_len
        self.chat = ConversationSampler(shards, seq_len, seed, split=split) if shards.is_chat else None
        self.tokens = None if self.chat else shards.tokens(split)
        self.count = len(self.chat) if self.chat else n_windows_of(self.tokens.size, seq_len)

    def rows(self, windows) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(input ids, position ids or None, labels), each (B, L) int64."""
        if self.chat:
            ids, pos, labels = (np.stack(c) for c in zip(*(self.chat.window(int(w)) for w in windows),
                                                           strict=True))
            return ids, pos, labels
        L = self.seq_len
        w = np.stack([np.asarray(self.tokens[int(s) * L:(int(s) + 1) * L + 1], dtype=np.int64)
                      for s in windows])
        return w[:, :-1].copy(), None, w[:, 1:].copy()

    def inputs(self, windows):
        import torch

        ids, pos, _ = self.rows(windows)
        return torch.from_numpy(ids), None if pos is None else torch.from_numpy(pos)


def _check_resumable(out: Path, settings: dict) -> None:
    """A rerun may resume only a cache built with the same settings (window count may change)."""
    import json

    path = out / "index.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    differ = [k for k, v in settings.items() if k in old and old[k] != v]  # (keys added since: absent)
    if differ:
        was = ", ".join(f"{k}={old.get(k)!r}" for k in differ)
        raise UserError(f"{out}: holds a teacher cache built with other settings ({was}); "
                        "use another --out or delete it")


class TeacherCache:
    """Read a top-k teacher cache; shard arrays are memory-mapped (np.load mmap_mode='r')."""

    def __init__(self, path: str | Path):
        import json

        self.path = Path(path)
        index_file = self.path / "index.json"
        if not index_file.is_file():
            raise UserError(f"{self.path}: not a teacher cache (no index.json); build one with "
                            "`llm4all teacher-cache`")
        self.index = json.loads(index_file.read_text())
        if self.index.get("format") != FORMAT or not self.index.get("complete"):
            raise UserError(f"{self.path}: incomplete or unknown teacher cache; rerun "
                            "`llm4all teacher-cache` with the same arguments to finish it")
        self.n_windows, self.seq_len = self.index["n_windows"], self.index["seq_len"]
        self.top_k = self.index["top_k"]
        order = self.path / "windows.npy"  # absent in caches of the first windows only (identity)
        self.windows = np.load(order) if order.is_file() else np.arange(self.n_windows, dtype=np.int64)
        self._firsts = np.asarray([s["first_window"] for s in self.index["shard_files"]])
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._tokens = None

    def _shard(self, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if j not in self._arrays:
            names = self.index["shard_files"][j]
            self._arrays[j] = tuple(np.load(self.path / names[k], mmap_mode="r")
                                    for k in ("ids", "logp", "rest"))
        return self._arrays[j]

    def window(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids (L, k), logp (L, k), rest (L,)) of window i, as memory-mapped views."""
        if not 0 <= i < self.n_windows:
            raise IndexError(f"window {i} out of range [0, {self.n_windows})")
        j = int(np.searchsorted(self._firsts, i, side="right") - 1)
        ids, logp, rest = self._shard(j)
        r = i - int(self._firsts[j])
        return ids[r], logp[r], rest[r]

    def batch(self, indices):
        """Tensors for windows ``indices``: ids (B, L, k) int64, logp (B, L, k) and rest (B, L) float32."""
        import torch

        rows = [self.window(int(i)) for i in indices]
        return (torch.from_numpy(np.stack([r[0] for r in rows]).astype(np.int64)),
                torch.from_numpy(np.stack([r[1] for r in rows]).astype(np.float32)),
                torch.from_numpy(np.stack([r[2] for r in rows]).astype(np.float32)))

    def tokens(self, indices):
        """(inputs, labels) of cached rows ``indices`` from the token shards: (B, L) int64 input ids,
        or for conversations {"input_ids", "position_ids"} with labels −100 off the answers."""
        import torch

        from llm4all.data.shards import TokenShards

        if self._tokens is None:
            shards = TokenShards(self.index["shards"])
            expected = self.index.get("split_tokens")  # absent in caches built before it was recorded
            if expected is not None and shards.num_tokens(self.index["split"]) != expected:
                raise UserError(f"{self.path}: built on {expected:,} tokens of {shards.path}, which now "
                                f"holds {shards.num_tokens(self.index['split']):,}: the cached rows no "
                                "longer match its windows; rebuild the cache")
            self._tokens = _Windows(shards, self.index["split"], self.seq_len, self.index.get("seed", 0))
        ids, pos, labels = self._tokens.rows([self.windows[int(i)] for i in indices])
        inputs = torch.from_numpy(ids) if pos is None else {"input_ids": torch.from_numpy(ids),
                                                             "position_ids": torch.from_numpy(pos)}
        return inputs, torch.from_numpy(labels)


def main(teacher: str, data: Path, *, out: Path, split: str = "train", seq_len: int = 256, top_k: int = 64,
         batch_size: int = 8, dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16",
         max_windows: int | None = None, seed: int = 0, device: str = "auto") -> dict:
    """Cache a teacher's top-k next-token log-probabilities over token shards, for offline KD.

    Args:
        teacher: a registered model name, an HF directory or a .gguf file.
        data: a token-shard directory from `llm4all tokenize` (same tokenizer as the teacher).
        out: cache directory (a rerun with the same arguments resumes; finished shards are kept).
        split: which split of the shards to cache.
        seq_len: window length L; aligned window w is tokens[w·L : w·L + L + 1].
        top_k: log-probabilities kept per token (e.g. 32-128).
        batch_size: windows per teacher forward pass.
        dtype: teacher compute dtype: bfloat16, float16 or float32.
        max_windows: cache at most this many windows, drawn uniformly from the whole split.
        seed: seed of the permutation that draws the windows.
        device: where the teacher runs: auto (CUDA when present, else CPU), cpu, cuda or cuda:N.
    """
    from llm4all.data.shards import TokenShards
    from llm4all.models.device import resolve_device
    from llm4all.models.load import load

    start = time.perf_counter()
    shards = TokenShards(data)
    model, tok = load(teacher, dtype=dtype, device=str(resolve_device(device)))
    _check_vocab(shards, tok, teacher, model.config.vocab_size)
    index = build_cache(model, data, out, split=split, seq_len=seq_len, top_k=top_k, batch_size=batch_size,
                        dtype=dtype, max_windows=max_windows, teacher_name=teacher, seed=seed)
    config = {"teacher": teacher, "data": str(data), "out": str(out), "split": split, "seq_len": seq_len,
              "top_k": top_k, "batch_size": batch_size, "dtype": dtype, "max_windows": max_windows,
              "seed": seed}
    mark_done(out, config, time.perf_counter() - start)
    write_manifest(out, "teacher-cache", inputs={"teacher": teacher, "data": str(data)},
                   metrics={k: index.get(k) for k in ("n_windows", "tokens", "bytes_per_token", "seconds",
                                                      "tokens_per_second")})
    _print_summary(out, index)
    return index


def _check_vocab(shards, tok, teacher: str, model_vocab: int) -> None:
    """The shards must be tokenized with the teacher's own vocabulary."""
    from llm4all.models.load import load_tokenizer

    shard_vocab = shards.index.get("vocab_size")
    tok_path = shards.index.get("tokenizer_path")
    same = shard_vocab == len(tok) and shard_vocab <= model_vocab
    if same and tok_path and Path(tok_path).is_dir():
        same = load_tokenizer(tok_path).get_vocab() == tok.get_vocab()
    if not same:
        raise UserError(f"{shards.path}: tokenized with {shards.index.get('tokenizer')!r} "
                        f"(vocab {shard_vocab}), but teacher {teacher!r} has vocab {len(tok)} "
                        f"(model {model_vocab}) or other token ids; "
                        f"re-tokenize with `llm4all tokenize --tokenizer {teacher}`")


def _print_summary(out: Path, index: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"teacher cache {out}", show_header=False)
    for key in ("teacher", "split", "seq_len", "top_k", "n_windows", "aligned_windows", "tokens",
                "bytes_per_token", "reused_shards", "seconds", "tokens_per_second"):
        table.add_row(key, str(index[key]))
    Console().print(table)
