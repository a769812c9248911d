"""Exact deduplication on Ray Data: hashes in tasks, duplicates found by a hash shuffle.

The distributed form of ``exact.ExactDedup`` (the way datatrove and NeMo Curator run it):
each window of shards is hashed in Ray tasks (``shingles.text_digest``: BLAKE2b-128 of the
normalised text), then the (digest, position) rows are grouped by digest with Ray Data's shuffle and each
group keeps its first position in input order, so the decisions equal the local engine's: the
first occurrence survives, every later copy names it. Only digests seen more than once go
through the shuffle (a digest seen once is its own survivor). The driver holds 16 bytes and a
position per document, never the texts of more than one window.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llm4all.curate.step import Decision

WINDOW = 8  # shards of texts in flight at once (their texts and digests: bounded driver memory)


def hash_shard(batch: dict, normalise: bool = True) -> dict:
    """Ray task: digests (hex) of one shard's texts, with their positions."""
    from llm4all.curate.dedup.shingles import text_digest

    return {"pos": np.asarray(batch["pos"]),
            "digest": [text_digest(t, normalise).hex() for t in batch["text"]]}


def first_of_group(group: dict) -> dict:
    """Ray task (one digest's rows): every position with the group's first position."""
    pos = np.asarray(group["pos"])
    return {"pos": pos, "first": np.full(len(pos), pos.min())}


def exact_on_ray(ray, ids: list[str], texts: Sequence[str], normalise: bool = True,
                 shard_docs: int = 500) -> list[Decision]:
    """One decision per document, equal to ``ExactDedup(normalise)`` run locally."""
    n = len(ids)
    if n == 0:
        return []
    rows = []
    bounds = [(a, min(a + shard_docs, n)) for a in range(0, n, shard_docs)]
    for w in range(0, len(bounds), WINDOW):
        part = [{"pos": list(range(a, b)), "text": texts[a:b]} for a, b in bounds[w:w + WINDOW]]
        ds = ray.data.from_items(part, override_num_blocks=len(part))
        rows += ds.map(lambda r: hash_shard(r, normalise)).take_all()
    pos = np.asarray([int(p) for r in rows for p in r["pos"]], np.int64)
    digest = np.asarray([d for r in rows for d in r["digest"]])
    survivor = np.arange(n, dtype=np.int64)
    _, inverse, counts = np.unique(digest, return_inverse=True, return_counts=True)
    repeated = counts[inverse.reshape(-1)] > 1  # a digest seen once is its own survivor: not shuffled
    if repeated.any():
        digests = ray.data.from_items([{"pos": int(p), "digest": str(d)}
                                       for p, d in zip(pos[repeated], digest[repeated], strict=True)])
        for r in digests.groupby("digest").map_groups(first_of_group, batch_format="numpy").take_all():
            survivor[int(r["pos"])] = int(r["first"])
    return [Decision(ids[i], True) if survivor[i] == i else
            Decision(ids[i], False, {"reason": "exact_duplicate", "survivor": ids[survivor[i]]})
            for i in range(n)]
