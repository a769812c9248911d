"""MinHash near-duplicates on Ray: no pair of documents, no signature and no shingle in the driver.

The distributed form of ``minhash.MinHashDedup`` (as datatrove and NeMo Curator split it):

1. **signatures** of each shard of documents in a Ray task, which returns two objects: the
   shard's band keys (bands × 8 bytes per document, to the driver) and its payload (signatures
   and, for exact verification, shingle hashes), which stays in Ray's object store
   (``ShardPayloads``); the driver keeps a sliding window of shards' texts in flight
   (``engine.ray_stream``);
2. **candidate pairs**: band keys as rows (band, key, position), grouped by (band, key) with
   Ray Data's shuffle (only rows whose (band, key) occurs more than once: a bucket of one has
   no pair); each bucket emits its pairs by the rule ``candidate_pairs`` applies (all pairs of a
   bucket of up to 32 members; a larger one its members up to 31 apart plus a star on its
   first), and a second shuffle on (a, b) makes them unique;
3. **verification** in tasks (``pairs.verify_pairs``: the estimate from the signatures, then
   the exact Jaccard of the shingle sets), each task fetching the payloads of the shards its
   pairs touch;
4. **clusters** by a distributed connected-components pass over the verified pairs
   (``components_on_ray``: min-label hooking plus pointer jumping, Shiloach & Vishkin 1982's
   scheme), on nodes numbered by survivor preference so a component's smallest node is its
   survivor; then each removed document's Jaccard to its survivor, in tasks.

The driver holds per-document arrays only (the band keys, one label, one length each), and the
decisions equal the local engine's (tests/curate/test_dedup_minhash.py).
"""

from __future__ import annotations

import numpy as np

from llm4all.curate.dedup.shingles import signatures_and_shingles
from llm4all.curate.engine import ray_stream, shuffle_partitions


def _shard(texts: list[str], num_perm: int, ngram: int, seed: int, bands: int, rows: int,
           shingles: bool) -> tuple[np.ndarray, dict]:
    """Ray task: (band keys, payload) of one shard: the keys go to the driver, the payload (its
    signatures, and shingle hashes with their counts) stays in the object store."""
    from llm4all.curate.dedup.pairs import band_keys

    sig, hashes, counts = signatures_and_shingles(texts, num_perm, ngram, seed)
    payload = {"sig": sig, "hashes": hashes if shingles else np.zeros(0, np.uint32), "counts": counts}
    return band_keys(sig, bands, rows), payload


class ShardPayloads:
    """The per-shard payloads of ``_shard`` by reference, and how to gather documents from them."""

    def __init__(self, starts: np.ndarray, refs: list):
        self.starts, self.refs = starts, refs  # starts: first document of each shard, then n

    def gather(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(signatures, shingle hashes, shingle counts) of ``docs`` (sorted, unique), in that order;
        called in Ray tasks (it fetches the shards the documents lie in)."""
        import ray

        shard = np.searchsorted(self.starts, docs, side="right") - 1
        sig, hashes, counts = [], [], []
        for k in np.unique(shard):
            payload = ray.get(self.refs[int(k)])
            local = docs[shard == k] - self.starts[k]
            offsets = np.r_[0, np.cumsum(payload["counts"])]
            sig.append(payload["sig"][local])
            counts.append(payload["counts"][local])
            if len(payload["hashes"]):
                hashes += [payload["hashes"][offsets[i]:offsets[i + 1]] for i in local]
        return (np.concatenate(sig), np.concatenate(hashes) if hashes else np.zeros(0, np.uint32),
                np.concatenate(counts))


def signatures_on_ray(ray, texts, num_perm: int, ngram: int, seed: int, shard: int, bands: int,
                      rows: int, shingles: bool) -> tuple[np.ndarray, ShardPayloads]:
    """The (n, bands) band keys of every document, and its shards' payloads left in Ray's object
    store; a sliding window of shards' texts in flight."""
    task = ray.remote(num_returns=2)(_shard)
    n = len(texts)
    starts = np.arange(0, n, shard, dtype=np.int64)
    keys, refs = [np.zeros((0, bands), np.uint64)], []
    for k, payload in ray_stream(
            ray, lambda a: task.remote(texts[a:a + shard], num_perm, ngram, seed, bands, rows, shingles),
            starts, done=lambda r: (ray.get(r[0]), r[1])):
        keys.append(k)
        refs.append(payload)
    return np.concatenate(keys), ShardPayloads(np.r_[starts, n], refs)


def shared_band_rows(keys: np.ndarray) -> dict[str, np.ndarray]:
    """The (band, key, pos) rows of the (n, bands) band keys whose (band, key) repeats, a band
    at a time (one sort of n keys each: memory linear in n)."""
    keys = keys.view(np.int64)  # Arrow-friendly, the same equality
    parts: dict[str, list[np.ndarray]] = {"band": [], "key": [], "pos": []}
    for band in range(keys.shape[1]):
        order = np.argsort(keys[:, band], kind="stable")
        k = keys[order, band]
        same = k[1:] == k[:-1]
        shared = np.r_[same, False] | np.r_[False, same]
        parts["band"].append(np.full(int(shared.sum()), band, np.int64))
        parts["key"].append(k[shared])
        parts["pos"].append(order[shared].astype(np.int64))
    return {c: np.concatenate(v) if v else np.zeros(0, np.int64) for c, v in parts.items()}


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


def candidate_pairs_on_ray(ray, keys: np.ndarray, all_pairs_max: int):
    """``minhash.candidate_pairs`` of the (n, bands) band keys as a Ray Dataset of unique (a, b)
    rows (a < b), from a shuffle of the repeated (band, key, position) rows; None when no bucket
    holds two documents."""
    import pyarrow as pa

    table = shared_band_rows(keys)
    if not len(table["pos"]):
        return None
    partitions = shuffle_partitions(ray, len(table["pos"]))
    buckets = ray.data.from_arrow(pa.table(table)).groupby(["band", "key"], num_partitions=partitions)
    pairs = buckets.map_groups(lambda g: bucket_pairs(g, all_pairs_max), batch_format="numpy")
    return pairs.groupby(["a", "b"], num_partitions=partitions).count().select_columns(["a", "b"])


def _local(pairs: np.ndarray, payloads: ShardPayloads):
    """The documents of ``pairs`` gathered from their shards, and the pairs renumbered to them."""
    docs = np.unique(pairs)
    sig, hashes, counts = payloads.gather(docs)
    return np.searchsorted(docs, pairs), sig, (hashes, counts)


def _verify_batch(batch: dict, payloads: ShardPayloads, threshold: float, verify: str) -> dict:
    """Ray task: the batch's candidate pairs joined under ``verify`` (``pairs.verify_pairs``)."""
    from llm4all.curate.dedup.pairs import verify_pairs

    pairs = np.stack([np.asarray(batch["a"], np.int64), np.asarray(batch["b"], np.int64)], axis=1)
    if not len(pairs):
        return {"a": pairs[:, 0], "b": pairs[:, 1]}
    local, sig, shingles = _local(pairs, payloads)
    kept, _ = verify_pairs(local, sig, threshold, verify, shingles if verify == "exact" else None)
    keep = np.zeros(len(pairs), bool)  # which rows survived: match the kept local pairs back
    key = local[:, 0] * len(sig) + local[:, 1]
    keep[np.isin(key, kept[:, 0] * len(sig) + kept[:, 1])] = True
    return {"a": pairs[keep, 0], "b": pairs[keep, 1]}


def _hooks(batch: dict, parent_ref, position_ref) -> dict:
    """Ray task: for each edge whose ends have different roots, (larger root, smaller root)."""
    import ray

    parent, position = ray.get(parent_ref), ray.get(position_ref)
    ra = parent[position[np.asarray(batch["a"], np.int64)]]
    rb = parent[position[np.asarray(batch["b"], np.int64)]]
    cross = ra != rb
    return {"node": np.maximum(ra, rb)[cross], "cand": np.minimum(ra, rb)[cross]}


def components_on_ray(ray, edges, position: np.ndarray) -> np.ndarray:
    """root[k]: the smallest node of node k's connected component; the edges (a, b) (a Ray
    Dataset) join documents, and document i is node ``position[i]``.

    Each round, every edge whose ends lie in different trees offers its larger root a hook to
    the smaller one; each root takes the smallest offer (a ``groupby(...).min`` shuffle), then
    pointer jumping makes every node point at its root. Roots only ever point to smaller nodes,
    so the forest has no cycle; a round with an offer removes at least one root, and the pass
    ends when no edge crosses two trees (so each component is one tree, rooted at its smallest
    node: it never joins what no edge joins). The driver holds the (n,) parent array only.
    """
    parent = np.arange(len(position), dtype=np.int64)
    position_ref = ray.put(np.asarray(position, np.int64))
    partitions = shuffle_partitions(ray, edges.count())
    while True:
        parent_ref = ray.put(parent)
        hooks = edges.map_batches(lambda b, p=parent_ref: _hooks(b, p, position_ref), batch_format="numpy")
        offers = hooks.groupby("node", num_partitions=partitions).min("cand")
        hooked = 0
        for batch in offers.iter_batches(batch_format="numpy"):
            node, cand = np.asarray(batch["node"], np.int64), np.asarray(batch["min(cand)"], np.int64)
            parent[node] = np.minimum(parent[node], cand)
            hooked += len(node)
        if not hooked:
            return parent
        while not np.array_equal(jumped := parent[parent], parent):  # pointer jumping
            parent = jumped


def _jaccard_batch(batch: dict, payloads: ShardPayloads, verify: str) -> dict:
    """Ray task: each (document, survivor) row's Jaccard (``minhash.jaccard_to_survivor``)."""
    from llm4all.curate.dedup.shingles import set_jaccard

    pairs = np.stack([np.asarray(batch["a"], np.int64), np.asarray(batch["b"], np.int64)], axis=1)
    local, sig, shingles = _local(pairs, payloads)
    value = (set_jaccard(local, *shingles) if verify == "exact"
             else np.mean(sig[local[:, 0]] == sig[local[:, 1]], axis=1))
    return {"a": pairs[:, 0], "jaccard": value}


def near_duplicates_on_ray(ray, keys: np.ndarray, payloads: ShardPayloads, threshold: float,
                           verify: str, all_pairs_max: int, lengths: np.ndarray | None = None):
    """``minhash.near_duplicates`` from the (n, bands) band ``keys`` and the shards' payloads:
    (cluster, survivor, jaccard), equal to the local result, with candidate pairs, verification
    and connected components in Ray."""
    from llm4all.curate.dedup.pairs import number_clusters, survivor_order

    n = len(keys)
    rank, position = survivor_order(n, lengths)
    pairs = candidate_pairs_on_ray(ray, keys, all_pairs_max) if n else None
    survivor = np.arange(n, dtype=np.int64)
    if pairs is not None:
        edges = pairs.map_batches(lambda b: _verify_batch(b, payloads, threshold, verify),
                                  batch_format="numpy").materialize()
        survivor = rank[components_on_ray(ray, edges, position)[position]]
    jaccard = np.ones(n)
    moved = np.flatnonzero(survivor != np.arange(n))
    if len(moved):
        rows = ray.data.from_numpy(np.stack([moved, survivor[moved]], axis=1)).map_batches(
            lambda b: {"a": b["data"][:, 0], "b": b["data"][:, 1]}, batch_format="numpy")
        for batch in rows.map_batches(lambda b: _jaccard_batch(b, payloads, verify),
                                      batch_format="numpy").iter_batches(batch_format="numpy"):
            jaccard[np.asarray(batch["a"], np.int64)] = batch["jaccard"]
    return number_clusters(survivor), survivor, jaccard
