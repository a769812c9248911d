"""MinHash near-duplicates on Ray: no pair of documents, no signature and no shingle in the driver.

The distributed form of ``minhash.MinHashDedup`` (as datatrove and NeMo Curator split it):

1. **signatures** of each shard of documents in a Ray task, which returns two objects: the
   shard's band keys (bands × 8 bytes per document, to the driver) and its payload (signatures
   and, for exact verification, shingle hashes), which stays in Ray's object store
   (``ShardPayloads``); the driver keeps a sliding window of shards' texts in flight
   (``engine.ray_stream``);
2. **candidate pairs**: band keys as rows (band, key, position), shuffled by (band, key) to
   Ray tasks (``ray_shuffle.py``; only rows whose (band, key) occurs more than once: a bucket of
   one has no pair); each bucket emits its pairs by the rule ``candidate_pairs`` applies (all
   pairs of a bucket of up to 32 members; a larger one its members up to 31 apart plus a star
   on its first), and a second shuffle on (a, b) brings the copies of a pair together;
3. **verification** in those second tasks, once per unique pair (``pairs.verify_pairs``: the
   estimate from the signatures, then the exact Jaccard of the shingle sets), each task
   fetching the payloads of the shards its pairs touch; the verified pairs stay in the object
   store;
4. **clusters** by a distributed connected-components pass over the verified pairs
   (``components_on_ray``: min-label hooking plus pointer jumping, Shiloach & Vishkin 1982's
   scheme), on nodes numbered by survivor preference so a component's smallest node is its
   survivor; then each removed document's Jaccard to its survivor, in tasks.

The driver holds per-document arrays only (the band keys, one label, one length each), and the
decisions equal the local engine's (tests/curate/test_dedup_minhash.py).
"""

from __future__ import annotations

import numpy as np

from llm4all.curate.dedup.ray_shuffle import reduce_on_ray, split
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


def bucket_pairs(rows: dict[str, np.ndarray], all_pairs_max: int, parts: int) -> list[dict]:
    """Reduce task (the (band, key, pos) rows of some buckets): each bucket's candidate pairs by
    ``pairs.bucket_member_pairs`` (the local engine's rule), as ``parts`` partitions of
    {"pair": (m, 2) pairs a < b} by a hash of the pair, for the shuffle that makes them unique."""
    from llm4all.curate.dedup.pairs import bucket_member_pairs

    order = np.lexsort((rows["pos"], rows["key"], rows["band"]))
    band, key, pos = rows["band"][order], rows["key"][order], rows["pos"][order]
    head = np.ones(len(pos), bool)  # the first member of each bucket
    head[1:] = (band[1:] != band[:-1]) | (key[1:] != key[:-1])
    pairs = bucket_member_pairs(pos, head, all_pairs_max)
    return split({"pair": pairs}, [pairs[:, 0], pairs[:, 1]], parts)


def verified_pairs(rows: dict[str, np.ndarray], payloads: ShardPayloads, threshold: float,
                   verify: str) -> np.ndarray:
    """Reduce task (the candidate pairs of one partition, each as often as buckets found it):
    the unique pairs that ``pairs.verify_pairs`` joins under ``verify``, as (m, 2) int64."""
    from llm4all.curate.dedup.pairs import verify_pairs

    pairs = np.unique(rows["pair"], axis=0)
    if not len(pairs) or verify == "none":
        return pairs
    local, sig, shingles = _local(pairs, payloads)
    kept, _ = verify_pairs(local, sig, threshold, verify, shingles if verify == "exact" else None)
    key = local[:, 0] * len(sig) + local[:, 1]  # the kept local pairs, matched back
    return pairs[np.isin(key, kept[:, 0] * len(sig) + kept[:, 1])]


def edges_on_ray(ray, keys: np.ndarray, payloads: ShardPayloads, threshold: float, verify: str,
                 all_pairs_max: int) -> list:
    """The verified candidate pairs of the (n, bands) band keys, as references to P arrays of
    (a, b) rows (each pair once, a < b; they stay in the object store): the repeated
    (band, key, position) rows shuffled by (band, key) to tasks that emit each bucket's pairs,
    those shuffled by pair to tasks that drop repeats and verify them. Empty when no bucket
    holds two documents."""
    table = shared_band_rows(keys)
    if not len(table["pos"]):
        return []
    parts = shuffle_partitions(ray, len(table["pos"]))  # at least 2: a task returns a list of them
    buckets = split(table, [table["band"], table["key"]], parts)
    candidates = reduce_on_ray(ray, [buckets], bucket_pairs, all_pairs_max, parts, returns=parts)
    return reduce_on_ray(ray, candidates, verified_pairs, payloads, threshold, verify)


def _local(pairs: np.ndarray, payloads: ShardPayloads):
    """The documents of ``pairs`` gathered from their shards, and the pairs renumbered to them."""
    docs = np.unique(pairs)
    sig, hashes, counts = payloads.gather(docs)
    return np.searchsorted(docs, pairs), sig, (hashes, counts)


def _offers(edges: np.ndarray, parent: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray task: for each root that an edge of ``edges`` joins to a smaller root, the smallest
    such root, as (roots, offers)."""
    ra, rb = parent[position[edges[:, 0]]], parent[position[edges[:, 1]]]
    cross = ra != rb
    node, cand = np.maximum(ra, rb)[cross], np.minimum(ra, rb)[cross]
    order = np.lexsort((cand, node))
    node, cand = node[order], cand[order]
    first = np.ones(len(node), bool)
    first[1:] = node[1:] != node[:-1]
    return node[first], cand[first]


def components_on_ray(ray, edges: list, position: np.ndarray) -> np.ndarray:
    """root[k]: the smallest node of node k's connected component; ``edges`` are references
    to (m, 2) arrays of (a, b) rows joining documents, and document i is node ``position[i]``.

    Each round, every edge whose ends lie in different trees offers its larger root a hook to
    the smaller one; each root takes the smallest offer (each edge partition's task reduces its
    offers to one per root, the driver the tasks' ones), then pointer jumping makes every node
    point at its root. Roots only ever point to smaller nodes, so the forest has no cycle; a
    round with an offer removes at least one root, and the pass ends when no edge crosses two
    trees (so each component is one tree, rooted at its smallest node: it never joins what no
    edge joins). The driver holds the (n,) parent array and one task's offers at a time.
    """
    parent = np.arange(len(position), dtype=np.int64)
    position_ref = ray.put(np.asarray(position, np.int64))
    task = ray.remote(num_returns=2)(_offers)
    while True:
        parent_ref = ray.put(parent)
        hooked = 0
        for node_ref, cand_ref in [task.remote(e, parent_ref, position_ref) for e in edges]:
            node, cand = ray.get(node_ref), ray.get(cand_ref)
            parent[node] = np.minimum(parent[node], cand)
            hooked += len(node)
        if not hooked:
            return parent
        while not np.array_equal(jumped := parent[parent], parent):  # pointer jumping
            parent = jumped


def _jaccard(pairs: np.ndarray, payloads: ShardPayloads, verify: str) -> np.ndarray:
    """Ray task: each (document, survivor) row's Jaccard (``minhash.jaccard_to_survivor``)."""
    from llm4all.curate.dedup.shingles import set_jaccard

    local, sig, shingles = _local(pairs, payloads)
    return (set_jaccard(local, *shingles) if verify == "exact"
            else np.mean(sig[local[:, 0]] == sig[local[:, 1]], axis=1))


JACCARD_ROWS = 8192  # (document, survivor) rows per task


def near_duplicates_on_ray(ray, keys: np.ndarray, payloads: ShardPayloads, threshold: float,
                           verify: str, all_pairs_max: int, lengths: np.ndarray | None = None):
    """``minhash.near_duplicates`` from the (n, bands) band ``keys`` and the shards' payloads:
    (cluster, survivor, jaccard), equal to the local result, with candidate pairs, verification
    and connected components in Ray."""
    from llm4all.curate.dedup.pairs import number_clusters, survivor_order

    n = len(keys)
    rank, position = survivor_order(n, lengths)
    edges = edges_on_ray(ray, keys, payloads, threshold, verify, all_pairs_max) if n else []
    survivor = np.arange(n, dtype=np.int64)
    if edges:
        survivor = rank[components_on_ray(ray, edges, position)[position]]
    jaccard = np.ones(n)
    moved = np.flatnonzero(survivor != np.arange(n))
    task = ray.remote(_jaccard)
    starts = range(0, len(moved), JACCARD_ROWS)
    rows = ray_stream(ray, lambda a: task.remote(np.stack([moved[a:a + JACCARD_ROWS],
                                                           survivor[moved[a:a + JACCARD_ROWS]]], axis=1),
                                                 payloads, verify), starts)
    for a, value in zip(starts, rows, strict=True):
        jaccard[moved[a:a + JACCARD_ROWS]] = value
    return number_clusters(survivor), survivor, jaccard
