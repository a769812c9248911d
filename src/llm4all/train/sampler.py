"""Training windows from token shards, following a curriculum or a mixture when given.

Every batch is a pure function of ``(seed, step)``: the global batch of optimizer step ``s``
is drawn from ``np.random.default_rng([seed, s])`` and split into micro-batches, and a
process of a multi-process run takes its slice. So resuming at step k needs no sampler
state, and 1 process × 2 accumulation steps sees exactly the windows that 2 processes × 1
see -- the property the DDP/FSDP equality tests rely on.

Sampling: a window of ``seq_len + 1`` tokens starts at a uniformly random token of the
allowed documents (it may run on into the following documents, across EOS). A curriculum
(``curriculum.json`` from ``llm4all curate``) allows, at step s of S, the first
``competence(s, S)`` fraction of its order; a mixture (``mixture.json``) first draws a group
by weight, then a start inside that group's documents. Both together: the mixture's weights
hold at every step and the curriculum paces each group, which offers only its documents within
the allowed prefix of the curriculum's order (at least its easiest one; a group none of whose
documents the curriculum ranks is not paced).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from llm4all.data.packing import doc_table
from llm4all.data.shards import TokenShards
from llm4all.errors import UserError


class WindowSampler:
    """Batches of (input_ids, labels) windows; deterministic in (seed, step)."""

    def __init__(self, shards: TokenShards, seq_len: int, seed: int = 0, split: str = "train",
                 curriculum: Path | None = None, mixture: Path | None = None, total_steps: int = 1):
        self.tokens = torch.from_numpy(np.asarray(shards.tokens(split), dtype=np.int64))
        self.seq_len, self.seed, self.total_steps = seq_len, seed, total_steps
        n = self.tokens.numel()
        if n < seq_len + 2:
            raise UserError(f"{shards.path}: split {split!r} has {n} tokens, fewer than one "
                            f"window of --seq-len {seq_len} + 1")
        self.max_start = n - seq_len - 1
        self.curriculum = self.mixture = None
        if curriculum or mixture:
            ids, starts, lengths = doc_table(shards, split)
            position = {doc_id: i for i, doc_id in enumerate(ids)}
            self._starts, self._lengths = starts, lengths
        if curriculum:
            manifest = _read_manifest(curriculum, "curriculum")
            order = np.asarray([position[i] for i in manifest["ids"] if i in position], dtype=np.int64)
            if order.size == 0:
                raise UserError(f"{curriculum}: none of its documents are in {shards.path}")
            self.curriculum = (order, manifest["pacing"])
        if mixture:
            manifest = _read_manifest(mixture, "mixture")
            groups = []
            for name, g in manifest["groups"].items():
                members = np.asarray([position[i] for i in g["ids"] if i in position], dtype=np.int64)
                if members.size:
                    groups.append((name, g["weight"], members))
            if not groups:
                raise UserError(f"{mixture}: none of its documents are in {shards.path}")
            weights = np.asarray([w for _, w, _ in groups], dtype=np.float64)
            self.mixture = ([m for _, _, m in groups], weights / weights.sum(), [n for n, _, _ in groups])
        if self.curriculum is not None:  # each document's place in the curriculum (unranked: -1)
            self._rank = np.full(len(ids), -1, dtype=np.int64)
            self._rank[self.curriculum[0]] = np.arange(self.curriculum[0].size)

    def _allowed(self, step: int) -> int:
        """How many documents of the curriculum's order step ``step`` may draw from."""
        from llm4all.curate.curriculum import competence

        order, pacing = self.curriculum
        c = competence(step, self.total_steps, pacing["name"], pacing["c0"], pacing.get("n_steps", 4))
        return max(1, int(np.ceil(c * order.size)))

    def _paced(self, docs: np.ndarray, allowed: int) -> np.ndarray:
        """The documents of a mixture group the curriculum allows (at least the group's easiest)."""
        rank = self._rank[docs]
        ranked = rank >= 0
        if not ranked.any():
            return docs
        keep = docs[ranked & (rank < allowed)]
        return keep if keep.size else docs[ranked][[np.argmin(rank[ranked])]]

    def _starts_from_docs(self, rng: np.random.Generator, docs: np.ndarray, k: int) -> np.ndarray:
        lengths = self._lengths[docs].astype(np.float64)
        chosen = docs[rng.choice(docs.size, size=k, p=lengths / lengths.sum())]
        offsets = (rng.random(k) * self._lengths[chosen]).astype(np.int64)
        return np.minimum(self._starts[chosen] + offsets, self.max_start)

    def starts(self, step: int, count: int) -> np.ndarray:
        """Start positions of the ``count`` windows of optimizer step ``step``."""
        rng = np.random.default_rng([self.seed, step])
        allowed = self._allowed(step) if self.curriculum is not None else None
        if self.mixture is not None:
            members, weights, _ = self.mixture
            group = rng.choice(len(members), size=count, p=weights)
            out = np.empty(count, dtype=np.int64)
            for g in np.unique(group):
                idx = np.flatnonzero(group == g)
                docs = members[g] if allowed is None else self._paced(members[g], allowed)
                out[idx] = self._starts_from_docs(rng, docs, idx.size)
            return out
        if allowed is not None:
            return self._starts_from_docs(rng, self.curriculum[0][:allowed], count)
        return rng.integers(0, self.max_start + 1, size=count)

    def windows(self, step: int, count: int) -> torch.Tensor:
        """The ``count`` windows of optimizer step ``step``: (count, seq_len + 1) token ids."""
        idx = torch.from_numpy(self.starts(step, count))[:, None] + torch.arange(self.seq_len + 1)
        return self.tokens[idx]

    def batch(self, step: int, micro: int, micro_batch: int, accum: int, rank: int = 0,
              world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        return take(self.windows(step, micro_batch * accum * world), micro, micro_batch, accum, rank)


class ReplaySampler:
    """Continual pre-training: a ``fraction`` of every global batch replays the old data
    (Ibrahim et al. 2024, "Simple and Scalable Strategies to Continually Pre-train LLMs":
    a few percent of replay limits forgetting)."""

    def __init__(self, new: WindowSampler, old: WindowSampler, fraction: float):
        if not 0 <= fraction < 1:
            raise UserError(f"--replay-fraction must be in [0, 1), got {fraction}")
        if new.seq_len != old.seq_len:
            raise UserError("replay and new data must use the same --seq-len")
        self.new, self.old, self.fraction, self.seq_len = new, old, fraction, new.seq_len

    def windows(self, step: int, count: int) -> torch.Tensor:
        k = round(self.fraction * count)
        parts = [self.old.windows(step + 1_000_003, k)] if k else []  # its own random stream
        return torch.cat([*parts, self.new.windows(step, count - k)])

    def batch(self, step: int, micro: int, micro_batch: int, accum: int, rank: int = 0,
              world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        return take(self.windows(step, micro_batch * accum * world), micro, micro_batch, accum, rank)


def take(windows: torch.Tensor, micro: int, micro_batch: int, accum: int, rank: int):
    """This process's micro-batch of a global batch: ((B, T) inputs, (B, T) labels)."""
    first = (rank * accum + micro) * micro_batch
    window = windows[first : first + micro_batch]  # (B, T+1)
    return window[:, :-1], window[:, 1:]


def _read_manifest(path: Path, kind: str) -> dict:
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read the {kind} manifest ({e})") from None
    if manifest.get("kind") != kind:
        raise UserError(f"{path}: not a {kind} manifest (kind={manifest.get('kind')!r}); "
                        f"write one with `llm4all curate --{kind} ...`")
    return manifest
