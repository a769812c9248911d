"""MinHash near-duplicates on Ray Data: signatures in tasks, candidate pairs by a band-key shuffle.

The distributed form of ``minhash.MinHashDedup`` (as datatrove and NeMo Curator split it):

1. **signatures** of each window of shards in Ray tasks (``signatures_and_shingles``; with
   exact verification their shingle hashes come back too and go to the on-disk ShingleStore);
2. **band keys** as rows (band, key, position), grouped by (band, key) with Ray Data's shuffle
   (only rows whose (band, key) occurs more than once: a bucket of one has no pair);
   each bucket emits its pairs in tasks by the rule ``candidate_pairs`` applies (all pairs of a
   bucket of up to 32 members; a larger one its members up to 31 apart plus a star on its first),
   so the driver never compares documents that share no bucket;
3. the candidate pairs are verified (estimated Jaccard from the signatures, then the exact
   Jaccard of the shingles) and joined into clusters by ``near_duplicates``, as locally.

The decisions equal the local engine's (tested). The driver holds the signatures (4·num_perm
bytes per document) and the candidate pairs; the connected components of the verified pairs
still run in the driver (scipy's, linear in the pairs).
"""

from __future__ import annotations

import numpy as np

from llm4all.curate.dedup.shingles import ShingleStore, signatures_and_shingles

WINDOW = 4  # shards in flight at once (texts, signatures, shingle hashes: bounded driver memory)


def _signatures(row: dict, num_perm: int, ngram: int, seed: int, shingles: bool) -> dict:
    sig, hashes, counts = signatures_and_shingles(list(row["texts"]), num_perm, ngram, seed)
    return {"shard": row["shard"], "sig": sig, "hashes": hashes if shingles else np.zeros(0, np.uint32),
            "counts": counts}


def bucket_pairs(group: dict, all_pairs_max: int) -> dict:
    """Ray task (one bucket's rows): its candidate pairs, by ``minhash.candidate_pairs``'s rule."""
    members = np.sort(np.asarray(group["pos"], np.int64))
    found = [np.empty((0, 2), np.int64)]
    for d in range(1, min(len(members), all_pairs_max)):  # members d apart
        found.append(np.stack([members[:-d], members[d:]], axis=1))
    if len(members) > all_pairs_max:  # a star on the first member
        found.append(np.stack([np.full(len(members) - 1, members[0]), members[1:]], axis=1))
    pairs = np.concatenate(found)
    return {"a": pairs[:, 0], "b": pairs[:, 1]}


def candidate_pairs_on_ray(ray, keys: np.ndarray, all_pairs_max: int) -> np.ndarray:
    """``minhash.candidate_pairs`` from its (n, bands) band keys, through a Ray Data shuffle of
    (band, key, position) rows."""
    n, bands = keys.shape
    keys = keys.view(np.int64)  # Arrow-friendly, the same equality
    table = {"band": np.repeat(np.arange(bands), n), "key": keys.T.reshape(-1),
             "pos": np.tile(np.arange(n), bands)}
    # a bucket of one document has no pair: only rows whose (band, key) repeats are shuffled
    _, inverse, counts = np.unique(np.stack([table["band"], table["key"]], axis=1), axis=0,
                                   return_inverse=True, return_counts=True)
    shared = counts[inverse.reshape(-1)] > 1
    if not shared.any():
        return np.empty((0, 2), np.int64)
    table = {k: v[shared] for k, v in table.items()}
    import pyarrow as pa

    ds = ray.data.from_arrow(pa.table(table))
    out = ds.groupby(["band", "key"]).map_groups(lambda g: bucket_pairs(g, all_pairs_max),
                                                 batch_format="numpy").take_all()
    if not out:
        return np.empty((0, 2), np.int64)
    pairs = np.asarray([[r["a"], r["b"]] for r in out], np.int64)
    return np.unique(pairs, axis=0)


def signatures_on_ray(ray, texts, num_perm: int, ngram: int, seed: int, shard: int,
                      store: ShingleStore | None = None) -> np.ndarray:
    """(n, num_perm) signatures computed in Ray tasks, a window of shards at a time; with a
    ``store`` the shingle hashes are appended to it in input order."""
    n = len(texts)
    bounds = [(a, min(a + shard, n)) for a in range(0, n, shard)]
    parts = [np.empty((0, num_perm), np.uint32)]
    want_shingles = store is not None  # (the task captures this flag, not the store's open file)
    for w in range(0, len(bounds), WINDOW):
        rows = [{"shard": i, "texts": texts[a:b]} for i, (a, b) in enumerate(bounds[w:w + WINDOW])]
        done = ray.data.from_items(rows, override_num_blocks=len(rows)).map(
            lambda r: _signatures(r, num_perm, ngram, seed, want_shingles)).take_all()
        for r in sorted(done, key=lambda r: r["shard"]):  # input order: the store is positional
            parts.append(np.asarray(r["sig"], np.uint32))
            if store is not None:
                store.add(np.asarray(r["hashes"], np.uint32), np.asarray(r["counts"], np.int64))
    return np.concatenate(parts)
