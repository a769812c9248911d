"""Supervised fine-tuning windows: whole conversations packed together, the loss on the assistant's tokens.

A conversation of L tokens (``tokenize --format chat``) gives L − 1 positions: input token t,
label token t + 1 when that token is the assistant's (its mask byte is 1), else −100, which the
loss and every distillation divergence ignore; so the prompt (system and user turns, the
template's markup) is read but never learned.

**Packing** (default): conversations, in an order fixed by the seed, fill windows of ``seq_len``
positions next-fit; each one's position ids restart at 0. With position ids and no attention mask,
transformers' causal mask becomes block-diagonal (``masking_utils.find_packed_sequence_indices``:
a new sequence starts wherever the position does not grow by one), so a conversation attends
only to itself and its RoPE positions are its own — the packed loss equals the loss of each
conversation alone (tests/test_conversations.py). What is left of a window is padding: label −100 and
positions of their own. ``pack=False`` gives every conversation its own padded window.

A conversation longer than ``seq_len + 1`` tokens is cut there (counted in ``truncated``); one
with no assistant token left is not used (``dropped``).

**Order**: epoch e visits every window once, in ``default_rng([seed, e]).permutation`` order; the
k-th window of optimizer step s is the global window s·count + k. So a batch is a pure function
of (seed, step), as for ``train.sampler.WindowSampler``: resuming needs no state, and 1 process ×
2 accumulation steps sees the windows 2 processes × 1 see.
"""

from __future__ import annotations

import numpy as np
import torch

from llm4all.data.shards import TokenShards
from llm4all.errors import UserError

IGNORE = -100  # the label of positions no loss counts (torch's cross_entropy default)


def doc_table(shards: TokenShards, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, global start offset, length) of every document in the split's stream."""
    import json

    from llm4all.data.readers import ZstdFrames

    path = shards.path / f"{split}-docs.jsonl.zst"
    with ZstdFrames(open(path, "rb")) as f:  # noqa: SIM115 - a truncated index is an error, not fewer documents
        rows = f.read()
    shard_offsets = np.cumsum([0] + [s["tokens"] for s in shards.index["splits"][split]["shards"]])
    ids, starts, lengths = [], [], []
    for line in rows.decode("utf-8").splitlines():
        r = json.loads(line)
        ids.append(r["id"])
        starts.append(shard_offsets[r["shard"]] + r["start"])
        lengths.append(r["tokens"])
    return ids, np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)


def model_inputs(inputs) -> dict:
    """Keyword arguments of a causal LM's forward for a batch: (B, T) token ids, or packed
    conversations' ids and position ids (and no KV cache: with one, transformers would not
    see the packing)."""
    if isinstance(inputs, dict):
        return {**inputs, "use_cache": False}
    return {"input_ids": inputs}


class ConversationSampler:
    """Batches of packed conversations: ({"input_ids", "position_ids"}, labels), each (B, seq_len)."""

    def __init__(self, shards: TokenShards, seq_len: int, seed: int = 0, split: str = "train",
                 pack: bool = True):
        if not shards.is_chat:
            raise UserError(f"{shards.path}: not conversations; tokenize them with --format chat")
        self.seq_len, self.seed, self.pack, self.pad = seq_len, seed, pack, shards.eos_id
        self.tokens = np.asarray(shards.tokens(split), dtype=np.int64)
        self.mask = np.asarray(shards.mask(split), dtype=bool)
        _, starts, lengths = doc_table(shards, split)
        self.truncated = int((lengths > seq_len + 1).sum())
        lengths = np.minimum(lengths, seq_len + 1)
        # assistant tokens among each conversation's labels (its tokens 1 .. L-1)
        seen = np.r_[0, np.cumsum(self.mask)]
        labelled = seen[starts + lengths] - seen[starts + 1]
        useful = np.flatnonzero((lengths >= 2) & (labelled > 0))
        self.dropped = len(lengths) - len(useful)
        if not len(useful):
            raise UserError(f"{shards.path}: split {split!r} has no conversation with an assistant "
                            f"token within --seq-len {seq_len}")
        self.starts, self.lengths = starts, lengths
        self.bins = self._plan(np.random.default_rng(seed).permutation(useful))
        self.label_tokens = int(labelled[useful].sum())
        self._epoch: tuple[int, np.ndarray] = (-1, np.zeros(0, np.int64))

    def _plan(self, order: np.ndarray) -> list[np.ndarray]:
        """Windows as lists of conversations: next-fit in ``order`` (one each without packing)."""
        bins, current, used = [], [], 0
        for u in order:
            need = int(self.lengths[u]) - 1
            if current and (not self.pack or used + need > self.seq_len):
                bins.append(np.asarray(current, np.int64))
                current, used = [], 0
            current.append(u)
            used += need
        bins.append(np.asarray(current, np.int64))
        return bins

    def __len__(self) -> int:
        return len(self.bins)

    def window(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input ids, position ids, labels) of window ``b``, each (seq_len,)."""
        t = self.seq_len
        ids, pos, labels = np.full(t, self.pad, np.int64), np.zeros(t, np.int64), np.full(t, IGNORE, np.int64)
        at = 0
        for u in self.bins[b]:
            s, n = int(self.starts[u]), int(self.lengths[u]) - 1
            ids[at : at + n] = self.tokens[s : s + n]
            nxt = slice(s + 1, s + n + 1)
            labels[at : at + n] = np.where(self.mask[nxt], self.tokens[nxt], IGNORE)
            pos[at : at + n] = np.arange(n)
            at += n
        pos[at:] = np.arange(t - at)  # padding: a sequence of its own, never a label
        return ids, pos, labels

    def windows(self, step: int, count: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The ``count`` windows of optimizer step ``step``."""
        rows = []
        for g in range(step * count, (step + 1) * count):
            epoch, k = divmod(g, len(self.bins))
            rows.append(self.window(int(self._order(epoch)[k])))
        return self._stack(rows)

    def _order(self, epoch: int) -> np.ndarray:
        if self._epoch[0] != epoch:
            self._epoch = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.bins)))
        return self._epoch[1]

    @staticmethod
    def _stack(rows: list[tuple[np.ndarray, ...]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        ids, pos, labels = (torch.from_numpy(np.stack(c)) for c in zip(*rows, strict=True))
        return {"input_ids": ids, "position_ids": pos}, labels

    def all_windows(self, batch_size: int, max_windows: int | None = None):
        """Every window once (or the first ``max_windows``), in plan order, ``batch_size`` at a
        time (for evaluation)."""
        n = len(self.bins) if max_windows is None else min(max_windows, len(self.bins))
        for a in range(0, n, batch_size):
            yield self._stack([self.window(b) for b in range(a, min(a + batch_size, n))])

    def batch(self, step: int, micro: int, micro_batch: int, accum: int, rank: int = 0,
              world: int = 1) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """This process's micro-batch of optimizer step ``step``'s global batch."""
        inputs, labels = self.windows(step, micro_batch * accum * world)
        first = (rank * accum + micro) * micro_batch
        part = slice(first, first + micro_batch)
        return {k: v[part] for k, v in inputs.items()}, labels[part]
