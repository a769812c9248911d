"""The MinHash deduper: near-duplicates by MinHash + LSH, verified exactly, one survivor each.

The whole method, in the order this file runs it (``MinHashDedup`` at the bottom):

1. *Signatures* (``shingles.signatures_and_shingles``): every document's word ``ngram``-gram
   shingles, hashed to 32 bits, and ``num_perm`` MinHash values over them (Broder 1997); the
   fraction of equal entries of two signatures estimates the Jaccard similarity of the two
   shingle sets. Batch by batch, so only ``num_perm × 4`` bytes per document stay in RAM.
2. *LSH banding* (Leskovec, Rajaraman & Ullman, "Mining of Massive Datasets" ch. 3.4): cut
   each signature into b bands of r rows; two documents become a candidate pair when all r
   rows of at least one band agree, which happens with probability P(s) = 1 − (1 − s^r)^b
   for Jaccard similarity s — an S-curve whose steepest point is near (1/b)^(1/r).
   ``lsh_params`` is datasketch's choice of (b, r); ``recall_params`` ours for exact
   verification (a pair at the threshold is missed with probability ≤ 1%).
3. *Verification* (``verify``): candidates are joined exactly on their shingle sets
   (``shingles.set_jaccard`` on hashes spilled to a temporary file by ``ShingleStore``), by
   their estimated Jaccard, or not at all. The exact check is the one that follows LSH in the
   CodeParrot near-deduplication script (Hugging Face ``transformers``
   examples/research_projects/codeparrot, ``find_extremes``: exact Jaccard of token sets
   inside each LSH cluster), its BigCode descendant (bigcode-project/bigcode-dataset,
   ``near_deduplication``) and text-dedup's false-positive check (C. Mou); it turns LSH into a
   pure recall device, so the banding can be loose.
4. *Clusters*: connected components (union-find) of the joined pairs; every cluster keeps
   one deterministic survivor (first in input order, or the longest) and every other member
   is dropped with the cluster number, the survivor's id and its Jaccard to the survivor.

On Ray (``on_ray``, ``ray_minhash.py``) the same steps run in tasks, the clusters by a distributed
connected-components pass; the decisions are equal.

Memory: the signatures go to a temporary file batch by batch (``pairs.SignatureSpill``, read
back by rows for the candidate pairs) and only their band keys stay in RAM — ``bands × 8`` bytes
per document plus its id and length; texts are never held beyond one batch. Exact verification
adds the shingle hashes on disk, 4 bytes per shingle.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from functools import lru_cache
from typing import Literal

import numpy as np
from scipy.integrate import quad
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from llm4all.catalog import DEDUPERS
from llm4all.curate.dedup.pairs import (
    SignatureSpill,
    band_keys,
    bucket_member_pairs,
    number_clusters,
    survivor_order,
    verify_pairs,
)
from llm4all.curate.dedup.shingles import BATCH_CHARS, set_jaccard, signatures_and_shingles
from llm4all.curate.dedup.spill import ShingleStore
from llm4all.curate.step import Decision
from llm4all.errors import UserError, did_you_mean

_ALL_PAIRS_MAX = 32  # buckets up to this size give all pairs; larger ones a star on the first
VERIFY = ("exact", "estimate", "none")  # not "off": YAML reads off/no as false
MISS = 0.01  # exact verification: P(a pair at Jaccard = threshold is never a candidate) ≤ 1%


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


def _fp_area(b: int, r: int, threshold: float) -> float:
    """∫₀ᵗ P(s) ds with P(s) = 1 − (1 − s^r)^b: candidates below the threshold (work)."""
    return quad(lambda s: 1 - (1 - s**r) ** b, 0.0, threshold)[0]


@lru_cache(maxsize=64)
def recall_params(threshold: float, num_perm: int, miss: float = MISS) -> tuple[int, int]:
    """(bands, rows) that miss a pair at Jaccard = threshold with probability ≤ ``miss``.

    1 − P(s) = (1 − s^r)^b falls with s, so the bound holds for every pair above the
    threshold too. Among the (b, r) with b·r ≤ num_perm meeting it — for each r the smallest
    b = ⌈ln miss / ln(1 − t^r)⌉ — the one with the least false-positive area ∫₀ᵗ P(s) ds,
    i.e. the fewest candidate pairs to verify; if none meets it, the smallest miss.
    t = 0.8, 128 permutations → 16 bands × 6 rows: miss 0.77% at s = 0.8 (datasketch's 9 × 13
    misses 60% there), at the price of a wider S-curve (P(0.5) = 0.22 against 0.001).
    """
    if not 0.0 < threshold < 1.0:
        raise UserError(f"minhash: threshold must be in (0, 1), got {threshold}")
    best, params = float("inf"), (0, 0)
    for r in range(1, num_perm + 1):
        b = int(np.ceil(np.log(miss) / np.log1p(-(threshold**r))))
        if 1 <= b <= num_perm // r and (area := _fp_area(b, r, threshold)) < best:
            best, params = area, (b, r)
    if params != (0, 0):
        return params
    misses = {(num_perm // r, r): (1 - threshold**r) ** (num_perm // r) for r in range(1, num_perm + 1)}
    return min(misses, key=misses.get)


def candidate_pairs(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(m, 2) int64 unique pairs i < j that share a bucket in at least one band.

    Buckets of up to ``_ALL_PAIRS_MAX`` documents give all their pairs; a larger bucket (a
    document copied many times) links each member to its first member only, which keeps the
    cost linear and loses nothing when the copies are alike.
    """
    if bands * rows > signatures.shape[1]:
        raise UserError(f"minhash: bands·rows = {bands}·{rows} exceeds num_perm = "
                        f"{signatures.shape[1]}")
    return pairs_from_keys(band_keys(signatures, bands, rows))


def pairs_from_keys(keys: np.ndarray) -> np.ndarray:
    """``candidate_pairs`` from the (n_docs, bands) band keys."""
    found = [np.empty((0, 2), np.int64)]
    for band in range(keys.shape[1]):
        order = np.argsort(keys[:, band], kind="stable")  # documents by bucket, input order
        k = keys[order, band]
        same = k[1:] == k[:-1]
        in_bucket = np.zeros(len(k), bool)
        in_bucket[1:] |= same
        in_bucket[:-1] |= same
        docs, k = order[in_bucket], k[in_bucket]  # members of buckets with ≥ 2 documents
        if len(docs):
            found.append(bucket_member_pairs(docs, np.r_[True, k[1:] != k[:-1]], _ALL_PAIRS_MAX))
    pairs = np.concatenate(found)
    pairs = np.sort(pairs[pairs[:, 0] != pairs[:, 1]], axis=1)
    return np.unique(pairs, axis=0)


def band_params(threshold: float, num_perm: int, bands: int | None, rows: int | None,
                verify: str) -> tuple[int, int]:
    """(bands, rows): as given, else ``recall_params`` under exact verification and
    ``lsh_params`` (datasketch's rule) otherwise; ``rows`` None is num_perm // bands."""
    if bands is None:
        bands, rows = (recall_params if verify == "exact" else lsh_params)(threshold, num_perm)
    return bands, rows or num_perm // bands


def near_duplicates(
    signatures: np.ndarray,
    threshold: float = 0.8,
    bands: int | None = None,
    rows: int | None = None,
    verify: Literal["exact", "estimate", "none"] = "none",
    lengths: np.ndarray | None = None,
    shingles: tuple[np.ndarray, np.ndarray] | None = None,
    pairs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster near-duplicates: (cluster, survivor, jaccard), each (n_docs,).

    ``cluster[i]`` numbers the clusters of ≥ 2 documents 0, 1, ... by their first member
    in input order (−1 for a document with no near-duplicate); ``survivor[i]`` is the index
    of the document kept for i's cluster (i itself when kept) — the first in input order,
    or with ``lengths`` the longest (ties: the first); ``jaccard[i]`` is the Jaccard
    similarity of i and its survivor (exact with ``verify="exact"``, else estimated).

    ``verify`` decides which candidate pairs are joined: ``"none"`` every one (the S-curve
    decides, as datasketch does); ``"estimate"`` those whose estimated Jaccard is ≥
    threshold; ``"exact"`` those whose estimate is ≥ threshold − 3σ (σ = √(t(1−t)/num_perm))
    and whose exact Jaccard on ``shingles`` = ((T,) hashes, (n_docs,) counts) is ≥ threshold.
    ``bands`` None picks (bands, rows) with ``recall_params`` under exact verification and
    with ``lsh_params`` (datasketch's rule) otherwise; ``rows`` None is num_perm // bands.
    ``pairs``: the candidate pairs already found (``candidate_pairs``'s result, e.g. by the Ray
    shuffle of ``ray_minhash.py``) instead of finding them here.
    """
    n, num_perm = signatures.shape
    if verify not in VERIFY:
        raise UserError(f"minhash: verify must be one of {', '.join(VERIFY)}, got {verify!r}")
    if verify == "exact" and shingles is None:
        raise UserError("minhash: verify='exact' needs the documents' shingles")
    bands, rows = band_params(threshold, num_perm, bands, rows, verify)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    if pairs is None:
        pairs = candidate_pairs(signatures, bands, rows)  # (m, 2), sorted, i < j
    pairs, _ = verify_pairs(pairs, signatures, threshold, verify, shingles)
    rank, position = survivor_order(n, lengths)
    # union-find over the joined pairs, on nodes numbered by survivor preference: a component's
    # smallest node is its survivor
    graph = coo_matrix((np.ones(len(pairs)), (position[pairs[:, 0]], position[pairs[:, 1]])),
                       shape=(n, n))
    _, label = connected_components(graph, directed=False)
    best = np.full(label.max() + 1, n, np.int64)
    np.minimum.at(best, label, np.arange(n))
    survivor = rank[best[label[position]]]
    moved = np.flatnonzero(survivor != np.arange(n))
    return number_clusters(survivor), survivor, jaccard_to_survivor(
        np.stack([moved, survivor[moved]], axis=1), signatures, verify, shingles, n)


def jaccard_to_survivor(moved: np.ndarray, signatures: np.ndarray, verify: str,
                        shingles: tuple[np.ndarray, np.ndarray] | None, n: int) -> np.ndarray:
    """(n,) Jaccard of each document and its survivor, 1 for survivors; ``moved`` holds the
    (document, survivor) rows of the others: exact on the shingles under ``verify="exact"``,
    else estimated from the signatures."""
    jaccard = np.ones(n)
    if len(moved):
        a, b = moved[:, 0], moved[:, 1]
        jaccard[a] = (set_jaccard(moved, *shingles) if verify == "exact"
                      else np.mean(signatures[a] == signatures[b], axis=1))
    return jaccard


@DEDUPERS.register("minhash")
class MinHashDedup:
    """Near-duplicates by MinHash + LSH, verified exactly (Broder 1997; MMDS ch. 3; Lee et al. 2022).

    Broder 1997 MinHash of word n-gram shingles, LSH banding from "Mining of Massive
    Datasets" ch. 3, with the practice and defaults of Lee et al. 2022, "Deduplicating
    Training Data Makes Language Models Better" (5-gram shingles, Jaccard ≥ 0.8; they use
    9,000 permutations in 450 bands of 20, we default to datasketch's 128). ``dedup(docs)``
    consumes ``(id, text)`` pairs batch by batch, keeps only signatures (``num_perm × 4``
    bytes per document) and, to verify, the shingle hashes in a temporary file, and after
    the last document yields one ``Decision`` per document in input order.

    Default (``verify: exact``): LSH is tuned for recall, verification for precision.
    Bands and rows are chosen so that a pair at exactly the threshold fails to become a
    candidate with probability ≤ 1% (``recall_params``: 16 × 6 at t = 0.8, 128
    permutations, against datasketch's 9 × 13, which misses 60% of such pairs and 7% of
    those at s = 0.9); each candidate is screened by its estimate (≥ t − 3σ, σ = √(t(1−t)/num_perm),
    one-sided loss ≤ 0.13%) and joined only if its exact shingle-set Jaccard is ≥ t, so no
    pair below the threshold is joined (the exact check of CodeParrot's and BigCode's
    near-dedup scripts; see ``shingles.set_jaccard``).

    Args:
        threshold: Jaccard similarity at or above which two documents are near-duplicates.
        num_perm: permutations (signature length).
        bands: LSH bands; None picks bands and rows from the threshold and ``verify``.
        rows: rows per band; None is num_perm // bands.
        ngram: words per shingle.
        seed: seed of the permutations.
        survivor: which document of a cluster is kept: the first in input order, or the
            longest (in characters; ties go to the first).
        verify: join a candidate pair if its exact shingle-set Jaccard is ≥ threshold
            (``exact``), if its estimated Jaccard is (``estimate``), or always (``none``: the
            LSH S-curve of datasketch's banding decides, as in datasketch).
        batch_size: documents hashed together at most (texts held at once; a batch also goes
            out at ``shingles.BATCH_CHARS`` characters).
    """

    def __init__(
        self,
        threshold: float = 0.8,
        num_perm: int = 128,
        bands: int | None = None,
        rows: int | None = None,
        ngram: int = 5,
        seed: int = 1,
        survivor: Literal["first", "longest"] = "first",
        verify: Literal["exact", "estimate", "none"] = "exact",
        batch_size: int = 1024,
    ):
        for name, value in (("num_perm", num_perm), ("ngram", ngram), ("batch_size", batch_size)):
            if value < 1:
                raise UserError(f"minhash: {name} must be >= 1, got {value}")
        if survivor not in ("first", "longest"):
            raise UserError(f"minhash: survivor must be 'first' or 'longest', got {survivor!r}")
        if isinstance(verify, bool):  # YAML's yes/no/on/off/true/false
            raise UserError(f"minhash: verify must be one of exact, estimate, none, got the boolean "
                            f"{verify} (YAML reads yes/no/on/off as booleans; write none for no check)")
        if verify not in VERIFY:
            raise UserError(f"minhash: verify must be one of exact, estimate, none, got {verify!r}; "
                            f"{did_you_mean(str(verify), VERIFY)}")
        if bands is not None and not 1 <= bands <= num_perm:
            raise UserError(f"minhash: bands must be in 1..num_perm={num_perm}, got {bands}")
        if rows is not None and (bands is None or not 1 <= bands * rows <= num_perm):
            raise UserError(f"minhash: rows needs bands, with bands·rows <= num_perm={num_perm}; "
                            f"got bands={bands}, rows={rows}")
        lsh_params(threshold, num_perm)  # validates the threshold before any work
        self.threshold, self.num_perm, self.bands, self.rows = threshold, num_perm, bands, rows
        self.ngram, self.seed, self.survivor, self.verify = ngram, seed, survivor, verify
        self.batch_size = batch_size

    def signatures(
        self, docs: Iterable[tuple[str, str]], store: ShingleStore | None = None,
        spill: SignatureSpill | None = None,
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(ids, (n_docs, num_perm) uint32 signatures, (n_docs,) lengths in characters).

        With a ``store``, every batch's shingle hashes are appended to it; with a ``spill``, its
        signatures (and band keys) go there and the signatures returned read its rows back
        (``pairs.SignatureRows``).
        """
        ids: list[str] = []
        lengths = array("q")  # 8 bytes per document (a list of ints: 36)
        parts = [np.empty((0, self.num_perm), np.uint32)]
        batch: list[str] = []

        def flush() -> None:
            sig, hashes, counts = signatures_and_shingles(batch, self.num_perm, self.ngram, self.seed)
            (spill.add if spill is not None else parts.append)(sig)
            if store is not None:
                store.add(hashes, counts)
            batch.clear()

        chars = 0  # in the batch: it goes out at batch_size documents or BATCH_CHARS characters,
        # so the texts held do not depend on how long the longest run of documents is
        for doc_id, text in docs:
            ids.append(doc_id)
            lengths.append(len(text))
            batch.append(text)
            chars += len(text)
            if len(batch) == self.batch_size or chars >= BATCH_CHARS:
                flush()
                chars = 0
        flush()
        sig = spill.array() if spill is not None else np.concatenate(parts)
        return ids, sig, np.frombuffer(lengths, np.int64).copy()

    def __call__(self, docs: Iterable[tuple[str, str]]) -> Iterator[Decision]:
        bands, rows = band_params(self.threshold, self.num_perm, self.bands, self.rows, self.verify)
        with (ShingleStore() if self.verify == "exact" else nullcontext() as store,
              SignatureSpill(self.num_perm, bands, rows) as spill):  # in RAM: the band keys only
            ids, sig, lengths = self.signatures(docs, store, spill)
            cluster, survivor, jaccard = near_duplicates(
                sig, self.threshold, bands, rows, self.verify,
                lengths if self.survivor == "longest" else None,
                store.arrays() if store is not None else None, pairs_from_keys(spill.keys()),
            )
        yield from self.decisions(ids, cluster, survivor, jaccard)

    def on_ray(self, ray, ids: list[str], texts, table) -> list[Decision]:
        """The same decisions with signatures, candidate pairs, verification and the connected
        components computed on Ray (``ray_minhash.py``): the driver holds band keys, no pair."""
        from llm4all.curate.dedup.ray_minhash import near_duplicates_on_ray, signatures_on_ray

        bands, rows = band_params(self.threshold, self.num_perm, self.bands, self.rows, self.verify)
        keys, payloads = signatures_on_ray(ray, texts, self.num_perm, self.ngram, self.seed, self.batch_size,
                                           bands, rows, self.verify == "exact")
        lengths = np.asarray([len(t) for t in texts], np.int64) if self.survivor == "longest" else None
        cluster, survivor, jaccard = near_duplicates_on_ray(ray, keys, payloads, self.threshold, self.verify,
                                                            _ALL_PAIRS_MAX, lengths)
        return list(self.decisions(ids, cluster, survivor, jaccard))

    def decisions(self, ids: list[str], cluster, survivor, jaccard) -> Iterator[Decision]:
        for i, doc_id in enumerate(ids):
            if survivor[i] == i:
                yield Decision(doc_id, True)
            else:
                yield Decision(doc_id, False, {
                    "reason": "near_duplicate", "cluster": int(cluster[i]),
                    "survivor": ids[survivor[i]], "jaccard": round(float(jaccard[i]), 4),
                })
