"""MinHash near-duplicates on Ray Data: no pair of documents is compared in the driver.

The distributed form of ``minhash.MinHashDedup`` (as datatrove and NeMo Curator split it):

1. **signatures** of each window of shards in Ray tasks (``signatures_and_shingles``; with
   exact verification their shingle hashes come back too and go to the on-disk ShingleStore);
2. **candidate pairs**: band keys as rows (band, key, position), grouped by (band, key) with
   Ray Data's shuffle (only rows whose (band, key) occurs more than once: a bucket of one has
   no pair); each bucket emits its pairs by the rule ``candidate_pairs`` applies (all pairs of a
   bucket of up to 32 members; a larger one its members up to 31 apart plus a star on its
   first), and a second shuffle on (a, b) makes them unique;
3. **verification** in tasks (``pairs.verify_pairs``: the estimate from the signatures, then
   the exact Jaccard of the shingle sets), the signatures and shingles broadcast through Ray's
   object store;
4. **clusters** by a distributed connected-components pass over the verified pairs
   (``components_on_ray``: min-label hooking plus pointer jumping, Shiloach & Vishkin 1982's
   scheme), on nodes numbered by survivor preference so a component's smallest node is its
   survivor; then each removed document's Jaccard to its survivor, in tasks.

The driver holds per-document arrays only (signatures, 4·num_perm bytes each; the band keys
that repeat; one label each), never a list of pairs, and the decisions equal the local engine's
(tests/curate/test_dedup_minhash.py).
"""

from __future__ import annotations

import numpy as np

from llm4all.curate.dedup.shingles import ShingleStore, signatures_and_shingles

WINDOW = 4  # shards in flight at once (texts, signatures, shingle hashes: bounded driver memory)


def _signatures(row: dict, num_perm: int, ngram: int, seed: int, shingles: bool) -> dict:
    sig, hashes, counts = signatures_and_shingles(list(row["texts"]), num_perm, ngram, seed)
    return {"shard": row["shard"], "sig": sig, "hashes": hashes if shingles else np.zeros(0, np.uint32),
            "counts": counts}


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
    buckets = ray.data.from_arrow(pa.table(table)).groupby(["band", "key"])
    pairs = buckets.map_groups(lambda g: bucket_pairs(g, all_pairs_max), batch_format="numpy")
    return pairs.groupby(["a", "b"]).count().select_columns(["a", "b"])


def _verify_batch(batch: dict, refs: dict, threshold: float, verify: str) -> dict:
    """Ray task: the batch's candidate pairs joined under ``verify`` (``pairs.verify_pairs``)."""
    import ray

    from llm4all.curate.dedup.pairs import verify_pairs

    pairs = np.stack([np.asarray(batch["a"], np.int64), np.asarray(batch["b"], np.int64)], axis=1)
    shingles = (ray.get(refs["hashes"]), ray.get(refs["counts"])) if verify == "exact" else None
    kept, _ = verify_pairs(pairs, ray.get(refs["signatures"]), threshold, verify, shingles)
    return {"a": kept[:, 0], "b": kept[:, 1]}


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
    while True:
        parent_ref = ray.put(parent)
        offers = edges.map_batches(lambda b, p=parent_ref: _hooks(b, p, position_ref),
                                   batch_format="numpy").groupby("node").min("cand")
        hooked = 0
        for batch in offers.iter_batches(batch_format="numpy"):
            node, cand = np.asarray(batch["node"], np.int64), np.asarray(batch["min(cand)"], np.int64)
            parent[node] = np.minimum(parent[node], cand)
            hooked += len(node)
        if not hooked:
            return parent
        while not np.array_equal(jumped := parent[parent], parent):  # pointer jumping
            parent = jumped


def _jaccard_batch(batch: dict, refs: dict, verify: str) -> dict:
    """Ray task: each (document, survivor) row's Jaccard (``minhash.jaccard_to_survivor``)."""
    import ray

    from llm4all.curate.dedup.shingles import set_jaccard

    a, b = np.asarray(batch["a"], np.int64), np.asarray(batch["b"], np.int64)
    if verify == "exact":
        value = set_jaccard(np.stack([a, b], axis=1), ray.get(refs["hashes"]), ray.get(refs["counts"]))
    else:
        sig = ray.get(refs["signatures"])
        value = np.mean(sig[a] == sig[b], axis=1)
    return {"a": a, "jaccard": value}


def near_duplicates_on_ray(ray, signatures: np.ndarray, keys: np.ndarray, threshold: float,
                           verify: str, all_pairs_max: int, lengths: np.ndarray | None = None,
                           shingles: tuple[np.ndarray, np.ndarray] | None = None):
    """``minhash.near_duplicates`` of the (n, bands) band ``keys``: (cluster, survivor, jaccard),
    equal to the local result, with candidate pairs, verification and connected components in Ray."""
    from llm4all.curate.dedup.pairs import number_clusters, survivor_order

    n = len(signatures)
    refs = {"signatures": ray.put(signatures)}
    if shingles is not None:
        refs.update(hashes=ray.put(np.asarray(shingles[0])), counts=ray.put(np.asarray(shingles[1])))
    rank, position = survivor_order(n, lengths)
    pairs = candidate_pairs_on_ray(ray, keys, all_pairs_max) if n else None
    survivor = np.arange(n, dtype=np.int64)
    if pairs is not None:
        edges = pairs.map_batches(lambda b: _verify_batch(b, refs, threshold, verify),
                                  batch_format="numpy").materialize()
        survivor = rank[components_on_ray(ray, edges, position)[position]]
    jaccard = np.ones(n)
    moved = np.flatnonzero(survivor != np.arange(n))
    if len(moved):
        rows = ray.data.from_numpy(np.stack([moved, survivor[moved]], axis=1)).map_batches(
            lambda b: {"a": b["data"][:, 0], "b": b["data"][:, 1]}, batch_format="numpy")
        for batch in rows.map_batches(lambda b: _jaccard_batch(b, refs, verify),
                                      batch_format="numpy").iter_batches(batch_format="numpy"):
            jaccard[np.asarray(batch["a"], np.int64)] = batch["jaccard"]
    return number_clusters(survivor), survivor, jaccard
