"""SemDeDup: drop semantic duplicates — embeddings closer than 1 − ε within a k-means cluster.

Abbas et al. 2023, "SemDeDup: Data-efficient learning at web-scale through semantic
deduplication" (arXiv:2303.09540), Algorithm 1 and their released code
(facebookresearch/SemDeDup, ``sort_clusters.py`` and ``semdedup.py``):

1. embed every document (here ``llm4all.curate.embed``: all-MiniLM-L6-v2 or mean-pooled
   teacher states; the paper used CLIP for images and OPT-125M for text) and L2-normalise;
2. spherical k-means into k clusters (``llm4all.curate.kmeans``);
3. sort each cluster by cosine similarity to its centroid, ascending (the paper's default
   ``which_to_keep: hard``: the member *least* similar to the centroid comes first and so is
   the one kept from a group of duplicates); ``easy`` reverses the order, ``first`` keeps
   input order;
4. in that order, a document is removed when its cosine similarity to an earlier one exceeds
   the threshold 1 − ε.

Two readings of step 4 are offered. ``compare: all`` is the released code exactly: M_j = max
over *every* earlier member i of cos(i, j) (the column max of the upper triangle of the
similarity matrix) and j is removed iff M_j > 1 − ε — so a chain A ≈ B ≈ C removes B and C
even when C is far from A. ``compare: kept`` (default) compares only with earlier members that
were *kept*, so every removed document has a kept survivor within the threshold and the kept
set is still pairwise ≤ 1 − ε. Both keep the same documents when duplicates form tight groups.

A dropped document's reason: ``{"reason": "semantic_duplicate", "cluster": k, "survivor": id,
"cosine": x}`` with x the cosine similarity to that survivor.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal, NamedTuple

import numpy as np

from llm4all.catalog import DEDUPERS
from llm4all.curate.kmeans import default_clusters, spherical_kmeans
from llm4all.curate.step import Decision
from llm4all.errors import UserError

_BLOCK = 1024  # rows of a cluster's similarity matrix held at once: (_BLOCK, cluster size)


class SemDedupResult(NamedTuple):
    """Per document, shape (n,): cluster label; index of the survivor (itself when kept);
    cosine to the survivor; M = max cosine to an earlier member of its cluster (−inf for the
    first); ``parent`` = index of that most similar earlier member (−1 for the first)."""

    cluster: np.ndarray
    survivor: np.ndarray
    cosine: np.ndarray
    nearest: np.ndarray
    parent: np.ndarray


def cluster_order(labels: np.ndarray, centroid_cos: np.ndarray, keep: str) -> list[np.ndarray]:
    """Each cluster's member indices in processing order (the first of a group survives)."""
    n = len(labels)
    if keep == "hard":  # least similar to the centroid first (SemDeDup default)
        key = centroid_cos
    elif keep == "easy":
        key = -centroid_cos
    else:  # "first": input order
        key = np.zeros(n)
    order = np.lexsort((np.arange(n), key, labels))  # by cluster, then key, then index
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return np.split(order, bounds) if n else []


def earlier_max(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows in processing order: (max cosine to an earlier row, its index); (−inf, −1) first.

    M_j = max_{i<j} e_i·e_j, the column max of ``triu(E Eᵀ, 1)`` in the SemDeDup code,
    computed ``_BLOCK`` rows at a time.
    """
    m = len(emb)
    nearest = np.full(m, -np.inf)
    parent = np.full(m, -1, np.int64)
    for a in range(0, m, _BLOCK):
        b = min(a + _BLOCK, m)
        s = emb[a:b] @ emb[:b].T  # (b − a, b) cosine similarities to rows 0..b−1
        s[np.arange(a, b)[:, None] <= np.arange(b)[None, :]] = -np.inf  # only earlier rows
        parent[a:b] = s.argmax(axis=1)
        nearest[a:b] = s[np.arange(b - a), parent[a:b]]
    parent[nearest == -np.inf] = -1
    return nearest, parent


def semdedup(
    emb: np.ndarray,
    threshold: float = 0.95,
    clusters: int | None = None,
    seed: int = 0,
    keep: Literal["hard", "easy", "first"] = "hard",
    compare: Literal["kept", "all"] = "kept",
    labels: np.ndarray | None = None,
    centroid_cos: np.ndarray | None = None,
) -> SemDedupResult:
    """SemDeDup on unit-norm embeddings ``emb`` (n, d) — see the module docstring.

    ``labels``/``centroid_cos`` (n,) skip the k-means when a caller has clustered already.
    """
    emb = np.asarray(emb, dtype=np.float32)
    n = len(emb)
    if labels is None or centroid_cos is None:
        labels, _, centroid_cos = spherical_kmeans(emb, clusters or default_clusters(n), seed)
    nearest = np.full(n, -np.inf)
    parent = np.full(n, -1, np.int64)
    keep_mask = np.ones(n, bool)
    survivor = np.arange(n)
    for members in cluster_order(labels, centroid_cos, keep):
        e = emb[members]
        m_near, m_parent = earlier_max(e)
        nearest[members] = m_near
        parent[members] = np.where(m_parent >= 0, members[np.maximum(m_parent, 0)], -1)
        kept = m_near <= threshold  # final under both rules: no earlier member is that close
        local_survivor = np.arange(len(members))
        for j in np.flatnonzero(~kept):
            if compare == "all":
                kept[j] = False
                local_survivor[j] = local_survivor[m_parent[j]]  # chain to a kept member
                continue
            earlier = np.flatnonzero(kept[:j])
            s = e[earlier] @ e[j]
            best = int(s.argmax())
            if s[best] > threshold:
                local_survivor[j] = earlier[best]
            else:
                kept[j] = True
        keep_mask[members] = kept
        survivor[members] = members[local_survivor]
    cosine = np.einsum("ij,ij->i", emb, emb[survivor]).astype(np.float64) if n else np.zeros(0)
    return SemDedupResult(labels, survivor, cosine, nearest, parent)


def check_threshold(threshold: float, where: str) -> None:
    if not 0.0 < threshold < 1.0:
        raise UserError(f"{where}: threshold (cosine similarity 1 − ε) must be in (0, 1), "
                        f"got {threshold}")


@DEDUPERS.register("semdedup")
class SemDeDup:
    """Semantic duplicates: k-means on embeddings, cosine > 1 − ε in a cluster (Abbas et al. 2023).

    Abbas et al. 2023, "SemDeDup: Data-efficient learning at web-scale through semantic
    deduplication". Embeds every document (``llm4all.curate.embed``), clusters with spherical
    k-means, and within each cluster drops documents more similar than ``threshold`` to an
    earlier one in the paper's order (least similar to the centroid first). Holds every
    embedding (n × d float32) and, per cluster, a block of its similarity matrix.

    Args:
        threshold: cosine similarity 1 − ε above which two documents are duplicates.
        clusters: k-means clusters; None uses ⌈√n⌉.
        model: embedding model: "minilm" or an llm4all model spec (mean-pooled states).
        batch_size: texts per embedding forward pass.
        max_tokens: tokens embedded per document (longer ones are truncated).
        seed: seed of the k-means++ initialisation.
        keep: which member of a duplicate group survives: "hard" (least similar to the
            centroid, the paper's default), "easy" (most similar) or "first" (input order).
        compare: "kept" (drop if too close to a kept document) or "all" (the paper's code:
            drop if too close to any earlier document, removed or not).
    """

    def __init__(
        self,
        threshold: float = 0.95,
        clusters: int | None = None,
        model: str = "minilm",
        batch_size: int = 32,
        max_tokens: int = 256,
        seed: int = 0,
        keep: Literal["hard", "easy", "first"] = "hard",
        compare: Literal["kept", "all"] = "kept",
    ):
        check_threshold(threshold, "semdedup")
        if clusters is not None and clusters < 1:
            raise UserError(f"semdedup: clusters must be >= 1, got {clusters}")
        if keep not in ("hard", "easy", "first"):
            raise UserError(f"semdedup: keep must be 'hard', 'easy' or 'first', got {keep!r}")
        if compare not in ("kept", "all"):
            raise UserError(f"semdedup: compare must be 'kept' or 'all', got {compare!r}")
        self.threshold, self.clusters, self.model = threshold, clusters, model
        self.batch_size, self.max_tokens, self.seed = batch_size, max_tokens, seed
        self.keep, self.compare = keep, compare

    def on_ray(self, ray, ids: list[str], texts, table) -> list[Decision]:
        """The same decisions with the embeddings computed by Ray actors (``embed.embed_on_ray``)."""
        from llm4all.curate.embed import embed_on_ray

        embeddings = embed_on_ray(ray, texts, self.model, self.batch_size, self.max_tokens)
        return list(self(zip(ids, texts, strict=True), embeddings=embeddings))

    def __call__(
        self, docs: Iterable[tuple[str, str]], embeddings: np.ndarray | None = None
    ) -> Iterator[Decision]:
        """One Decision per document in input order; ``embeddings`` (n, d) skips embedding."""
        ids, texts = [], []
        for doc_id, text in docs:
            ids.append(doc_id)
            if embeddings is None:  # (given embeddings: the texts are not needed, nor held)
                texts.append(text)
        if embeddings is None:
            from llm4all.curate.embed import embed_texts

            embeddings = embed_texts(texts, self.model, self.batch_size, self.max_tokens)
        if len(embeddings) != len(ids):
            raise UserError(f"semdedup: {len(embeddings)} embeddings for {len(ids)} documents")
        if not ids:
            return
        r = semdedup(embeddings, self.threshold, self.clusters, self.seed, self.keep,
                     self.compare)
        for i, doc_id in enumerate(ids):
            if r.survivor[i] == i:
                yield Decision(doc_id, True)
            else:
                yield Decision(doc_id, False, {
                    "reason": "semantic_duplicate", "cluster": int(r.cluster[i]),
                    "survivor": ids[r.survivor[i]], "cosine": round(float(r.cosine[i]), 4),
                })
