"""Exact deduplication on Ray: hashes in tasks, duplicates found by a hash shuffle.

The distributed form of ``exact.ExactDedup`` (the way datatrove and NeMo Curator run it):
each shard is hashed in a Ray task (``shingles.text_digest``: BLAKE2b-128 of the normalised
text, kept as two uint64; a sliding window of shards in flight, ``engine.ray_stream``), then
the (digest, position) rows are grouped by digest with a hash shuffle in Ray tasks
(``ray_shuffle.py``) and each group keeps its first position in input order, so the decisions
equal the local engine's: the first occurrence survives, every later copy names it. Only
digests seen more than once go through the shuffle (a digest seen once is its own survivor).
The driver holds 16 bytes and a position per document, never the texts of more than one
window of shards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llm4all.curate.step import Decision


def hash_shard(texts: list[str], normalise: bool = True) -> np.ndarray:
    """Ray task: the 128-bit digests of one shard's texts as (n, 2) uint64."""
    from llm4all.curate.dedup.shingles import text_digest

    raw = b"".join(text_digest(t, normalise) for t in texts)
    return np.frombuffer(raw, np.uint64).reshape(-1, 2)


def later_copies(rows: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Reduce task (the rows of some digests): (position, first position of its digest) of
    every row that is not the first of its digest."""
    order = np.lexsort((rows["pos"], rows["lo"], rows["hi"]))
    hi, lo, pos = rows["hi"][order], rows["lo"][order], rows["pos"][order]
    head = np.ones(len(pos), bool)  # the first row of each digest
    head[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    first = pos[np.flatnonzero(head)][np.cumsum(head) - 1]
    return pos[~head], first[~head]


def exact_on_ray(ray, ids: list[str], texts: Sequence[str], normalise: bool = True,
                 shard_docs: int = 500) -> list[Decision]:
    """One decision per document, equal to ``ExactDedup(normalise)`` run locally."""
    from llm4all.curate.dedup.ray_shuffle import reduce_on_ray, split
    from llm4all.curate.engine import ray_stream, shuffle_partitions

    n = len(ids)
    if n == 0:
        return []
    digest = np.zeros((n, 2), np.uint64)  # 16 bytes per document, the driver's only state here
    starts = range(0, n, shard_docs)
    task = ray.remote(hash_shard)
    shards = ray_stream(ray, lambda a: task.remote(texts[a:a + shard_docs], normalise), starts)
    for a, part in zip(starts, shards, strict=True):
        digest[a:a + len(part)] = part
    survivor = np.arange(n, dtype=np.int64)
    order = np.lexsort((digest[:, 1], digest[:, 0]))
    same = (digest[order[1:]] == digest[order[:-1]]).all(axis=1)
    repeated = order[np.r_[same, False] | np.r_[False, same]]  # a digest seen once: not shuffled
    if len(repeated):
        rows = {"hi": digest[repeated, 0], "lo": digest[repeated, 1], "pos": repeated.astype(np.int64)}
        parts = split(rows, [rows["hi"]], shuffle_partitions(ray, len(repeated)))
        for pos, first in map(ray.get, reduce_on_ray(ray, [parts], later_copies)):
            survivor[pos] = first
    return [Decision(ids[i], True) if survivor[i] == i else
            Decision(ids[i], False, {"reason": "exact_duplicate", "survivor": ids[survivor[i]]})
            for i in range(n)]
