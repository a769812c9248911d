"""Read token shards written by ``llm4all tokenize``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llm4all.errors import UserError


def is_shard_dir(path: str | Path) -> bool:
    return (Path(path) / "index.json").is_file()


class TokenShards:
    """Memory-mapped view of a token-shard directory (see ``llm4all.data.tokenize``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index_file = self.path / "index.json"
        if not index_file.is_file():
            raise UserError(f"{self.path}: not a token-shard directory (no index.json); "
                            "make one with `llm4all tokenize`")
        try:
            self.index = json.loads(index_file.read_text())
            self.dtype = np.dtype(self.index["dtype"])
            self.eos_id = int(self.index["eos_id"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{index_file}: malformed shard index ({e})") from None

    @property
    def splits(self) -> list[str]:
        return [s for s, v in self.index["splits"].items() if v["tokens"] > 0]

    def shard_arrays(self, split: str) -> list[np.ndarray]:
        if split not in self.index["splits"]:
            raise UserError(f"{self.path}: no split {split!r}; splits: {', '.join(self.index['splits'])}")
        arrays = []
        for shard in self.index["splits"][split]["shards"]:
            file = self.path / shard["file"]
            expected = shard["tokens"] * self.dtype.itemsize
            if not file.is_file() or file.stat().st_size != expected:
                raise UserError(f"{file}: missing or truncated (expected {expected} bytes)")
            if shard["tokens"]:
                arrays.append(np.memmap(file, dtype=self.dtype, mode="r"))
        return arrays

    def tokens(self, split: str, max_tokens: int | None = None) -> np.ndarray:
        """The split's tokens as one array (copied only if it spans several shards)."""
        arrays = self.shard_arrays(split)
        if not arrays:
            raise UserError(f"{self.path}: split {split!r} has no tokens")
        if max_tokens is not None:
            out, left = [], max_tokens
            for a in arrays:
                out.append(a[:left])
                left -= out[-1].size
                if left <= 0:
                    break
            arrays = out
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    def num_tokens(self, split: str) -> int:
        return int(self.index["splits"][split]["tokens"])

    @property
    def is_chat(self) -> bool:
        """Conversations (``tokenize --format chat``): every token has an assistant-mask byte."""
        return "chat" in self.index

    def mask(self, split: str) -> np.ndarray:
        """The split's assistant mask (uint8, 1 on the tokens training learns from), aligned with
        ``tokens(split)``."""
        if not self.is_chat:
            raise UserError(f"{self.path}: no assistant mask (not tokenized with --format chat)")
        arrays = []
        for shard in self.index["splits"][split]["shards"]:
            file = self.path / shard.get("mask", "")
            if "mask" not in shard or not file.is_file() or file.stat().st_size != shard["tokens"]:
                raise UserError(f"{file}: assistant mask missing or truncated (expected "
                                f"{shard['tokens']} bytes); tokenize again")
            if shard["tokens"]:
                arrays.append(np.memmap(file, dtype=np.uint8, mode="r"))
        if not arrays:
            raise UserError(f"{self.path}: split {split!r} has no tokens")
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def calibration_windows(data: Path, tokens: int, seq_len: int = 256, seed: int = 0,
                        split: str = "train"):
    """(n, seq_len) int64 torch tensor: token windows at random offsets of a token-shard split."""
    import torch

    stream = TokenShards(data).tokens(split)
    n = max(1, tokens // seq_len)
    if len(stream) < seq_len + 1:
        raise UserError(f"{data}: split {split!r} has {len(stream)} tokens, fewer than one "
                        f"calibration window of {seq_len}")
    starts = np.random.default_rng(seed).integers(0, len(stream) - seq_len, size=n)
    return torch.from_numpy(np.stack([np.asarray(stream[s : s + seq_len], dtype=np.int64) for s in starts]))
