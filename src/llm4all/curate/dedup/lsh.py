"""LSH banding over MinHash signatures, union-find clusters, one survivor per cluster.

Leskovec, Rajaraman & Ullman, "Mining of Massive Datasets" ch. 3.4: cut each signature into
b bands of r rows; two documents become a candidate pair when all r rows of at least one
band agree, which happens with probability 1 − (1 − s^r)^b for Jaccard similarity s — an
S-curve whose steepest point is near (1/b)^(1/r). Candidates are (optionally) verified by
their estimated Jaccard ≥ threshold, joined into clusters (connected components, i.e.
union-find, of the verified pairs), and every cluster keeps one deterministic survivor.

Memory: the clustering needs every signature at once — ``num_perm × 4`` bytes per document
(uint32) plus its id and length; texts are never held beyond one batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Literal

import numpy as np
from scipy.integrate import quad
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from llm4all.catalog import DEDUPERS
from llm4all.curate.dedup.exact import Decision
from llm4all.curate.dedup.minhash import minhash_signatures
from llm4all.errors import UserError

_ALL_PAIRS_MAX = 32  # buckets up to this size give all pairs; larger ones a star on the first


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands·rows ≤ num_perm minimising the weighted error area.

    The false-positive area ∫₀ᵗ P(s) ds and false-negative area ∫ₜ¹ 1 − P(s) ds of
    P(s) = 1 − (1 − s^r)^b, weighted (fp_weight, 1 − fp_weight): datasketch's
    ``MinHashLSH`` choice (its ``_optimal_param``), so both give the same bands at a threshold.
    """
    if not 0.0 < threshold < 1.0:
        raise UserError(f"minhash: threshold must be in (0, 1), got {threshold}")
    best, params = float("inf"), (1, 1)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = quad(lambda s, b=b, r=r: 1 - (1 - s**r) ** b, 0.0, threshold)[0]
            fn = quad(lambda s, b=b, r=r: (1 - s**r) ** b, threshold, 1.0)[0]
            error = fp * fp_weight + fn * (1 - fp_weight)
            if error < best:
                best, params = error, (b, r)
    return params


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n_docs, bands) uint64: a 64-bit hash of each band's ``rows`` signature entries."""
    sig = signatures.astype(np.uint64)
    keys = np.zeros((len(sig), bands), np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):  # FNV-style: key = (key ^ value) · prime, column by column
            keys ^= sig[:, j : bands * rows : rows]
            keys *= np.uint64(0x100000001B3)
            keys ^= keys >> np.uint64(29)
    return keys


def candidate_pairs(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(m, 2) int64 unique pairs i < j that share a bucket in at least one band.

    Buckets of up to ``_ALL_PAIRS_MAX`` documents give all their pairs; a larger bucket (a
    document copied many times) links each member to its first member only, which keeps the
    cost linear and loses nothing when the copies are alike.
    """
    if bands * rows > signatures.shape[1]:
        raise UserError(f"minhash: bands·rows = {bands}·{rows} exceeds num_perm = "
                        f"{signatures.shape[1]}")
    keys = band_keys(signatures, bands, rows)
    found = [np.empty((0, 2), np.int64)]
    for band in range(bands):
        order = np.argsort(keys[:, band], kind="stable")  # documents by bucket, input order
        k = keys[order, band]
        same = k[1:] == k[:-1]
        in_bucket = np.zeros(len(k), bool)
        in_bucket[1:] |= same
        in_bucket[:-1] |= same
        docs, k = order[in_bucket], k[in_bucket]  # members of buckets with ≥ 2 documents
        if not len(docs):
            continue
        head = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])  # first member of each bucket
        size = np.diff(np.r_[head, len(k)])
        for d in range(1, min(int(size.max()), _ALL_PAIRS_MAX)):  # members d apart
            hit = np.flatnonzero(k[:-d] == k[d:])
            found.append(np.stack([docs[hit], docs[hit + d]], axis=1))
        big = np.repeat(size > _ALL_PAIRS_MAX, size)
        anchor = np.repeat(docs[head], size)
        found.append(np.stack([anchor[big], docs[big]], axis=1))
    pairs = np.concatenate(found)
    pairs = np.sort(pairs[pairs[:, 0] != pairs[:, 1]], axis=1)
    return np.unique(pairs, axis=0)


def near_duplicates(
    signatures: np.ndarray,
    threshold: float = 0.8,
    bands: int | None = None,
    rows: int | None = None,
    verify: bool = False,
    lengths: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster near-duplicates: (cluster, survivor, jaccard), each (n_docs,).

    ``cluster[i]`` numbers the clusters of ≥ 2 documents 0, 1, ... by their first member
    in input order (−1 for a document with no near-duplicate); ``survivor[i]`` is the index
    of the document kept for i's cluster (i itself when kept) — the first in input order,
    or with ``lengths`` the longest (ties: the first); ``jaccard[i]`` is the estimated
    Jaccard similarity of i and its survivor. With ``verify``, only candidate pairs whose
    estimated Jaccard is ≥ threshold are joined; without, every candidate pair is.
    """
    n, num_perm = signatures.shape
    if bands is None:
        bands, rows = lsh_params(threshold, num_perm)
    rows = rows or num_perm // bands
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    pairs = candidate_pairs(signatures, bands, rows)
    if verify and len(pairs):
        sim = np.concatenate([  # estimated Jaccard of each pair, 64k pairs at a time
            np.mean(signatures[p[:, 0]] == signatures[p[:, 1]], axis=1)
            for p in np.array_split(pairs, -(-len(pairs) // 65536))
        ])
        pairs = pairs[sim >= threshold]
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)  # union-find over the pairs
    # survivor of each component: smallest index, or longest document (ties: smallest index)
    rank = np.arange(n) if lengths is None else np.lexsort((np.arange(n), -np.asarray(lengths)))
    position = np.empty(n, np.int64)
    position[rank] = np.arange(n)
    best = np.full(label.max() + 1, n, np.int64)
    np.minimum.at(best, label, position)
    survivor = rank[best[label]]
    size = np.bincount(label)[label]
    # number clusters of ≥ 2 documents by their first member in input order
    first = np.full(len(best), n, np.int64)
    np.minimum.at(first, label, np.arange(n))
    multi = np.unique(first[label][size > 1])
    cluster = np.where(size > 1, np.searchsorted(multi, first[label]), -1)
    jaccard = np.mean(signatures == signatures[survivor], axis=1)
    return cluster, survivor, jaccard


@DEDUPERS.register("minhash")
class MinHashDedup:
    """Near-duplicates by MinHash + LSH (Broder 1997; MMDS ch. 3; Lee et al. 2022).

    Broder 1997 MinHash of word n-gram shingles, LSH banding from "Mining of Massive
    Datasets" ch. 3, with the practice and defaults of Lee et al. 2022, "Deduplicating
    Training Data Makes Language Models Better" (5-gram shingles, Jaccard ≥ 0.8; they use
    9,000 permutations in 450 bands of 20, we default to datasketch's 128). ``dedup(docs)``
    consumes ``(id, text)`` pairs batch by batch, keeps only signatures (``num_perm × 4``
    bytes per document), and after the last document yields one ``Decision`` per document
    in input order.

    Args:
        threshold: Jaccard similarity at or above which two documents are near-duplicates.
        num_perm: permutations (signature length).
        bands: LSH bands; None picks bands and rows from the threshold (datasketch's rule).
        ngram: words per shingle.
        seed: seed of the permutations.
        survivor: which document of a cluster is kept: the first in input order, or the
            longest (in characters; ties go to the first).
        verify: join a candidate pair only if its estimated Jaccard is ≥ threshold (off:
            every candidate pair of the LSH S-curve is joined, as datasketch does).
        batch_size: documents hashed together (texts held at once).
    """

    def __init__(
        self,
        threshold: float = 0.8,
        num_perm: int = 128,
        bands: int | None = None,
        ngram: int = 5,
        seed: int = 1,
        survivor: Literal["first", "longest"] = "first",
        verify: bool = False,
        batch_size: int = 1024,
    ):
        for name, value in (("num_perm", num_perm), ("ngram", ngram), ("batch_size", batch_size)):
            if value < 1:
                raise UserError(f"minhash: {name} must be >= 1, got {value}")
        if survivor not in ("first", "longest"):
            raise UserError(f"minhash: survivor must be 'first' or 'longest', got {survivor!r}")
        if bands is not None and not 1 <= bands <= num_perm:
            raise UserError(f"minhash: bands must be in 1..num_perm={num_perm}, got {bands}")
        lsh_params(threshold, num_perm)  # validates the threshold before any work
        self.threshold, self.num_perm, self.bands, self.ngram = threshold, num_perm, bands, ngram
        self.seed, self.survivor, self.verify, self.batch_size = seed, survivor, verify, batch_size

    def signatures(
        self, docs: Iterable[tuple[str, str]]
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(ids, (n_docs, num_perm) uint32 signatures, (n_docs,) lengths in characters)."""
        ids: list[str] = []
        lengths: list[int] = []
        parts = [np.empty((0, self.num_perm), np.uint32)]
        batch: list[str] = []
        for doc_id, text in docs:
            ids.append(doc_id)
            lengths.append(len(text))
            batch.append(text)
            if len(batch) == self.batch_size:
                parts.append(minhash_signatures(batch, self.num_perm, self.ngram, self.seed))
                batch = []
        parts.append(minhash_signatures(batch, self.num_perm, self.ngram, self.seed))
        return ids, np.concatenate(parts), np.array(lengths, np.int64)

    def __call__(self, docs: Iterable[tuple[str, str]]) -> Iterator[Decision]:
        ids, sig, lengths = self.signatures(docs)
        cluster, survivor, jaccard = near_duplicates(
            sig, self.threshold, self.bands, None, self.verify,
            lengths if self.survivor == "longest" else None,
        )
        for i, doc_id in enumerate(ids):
            if survivor[i] == i:
                yield Decision(doc_id, True)
            else:
                yield Decision(doc_id, False, {
                    "reason": "near_duplicate", "cluster": int(cluster[i]),
                    "survivor": ids[survivor[i]], "jaccard": round(float(jaccard[i]), 4),
                })
