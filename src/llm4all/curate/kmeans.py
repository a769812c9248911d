"""Spherical k-means on L2-normalised embeddings, seeded and vectorised (numpy only).

Dhillon & Modha 2001, "Concept Decompositions for Large Sparse Text Data using Clustering":
assign each unit vector to the centroid of highest cosine similarity, then set each centroid
to the normalised mean of its members; repeat until no assignment changes. Initialised with
k-means++ (Arthur & Vassilvitskii 2007): on the unit sphere ‖x − c‖² = 2(1 − x·c), so drawing
the next centre with probability ∝ 1 − max cosine to the chosen centres is exactly k-means++.
SemDeDup (Abbas et al. 2023) and D4 (Tirumala et al. 2023) cluster this way (faiss spherical
k-means); SemDeDup's released code also sorts clusters by cosine distance to the centroid.

Costs: O(n·k·d) per iteration, similarities computed ``_BLOCK`` rows at a time, so memory is
O(_BLOCK·k + n·d) whatever n is. ``k > n`` is clipped to n (every point its own cluster).
"""

from __future__ import annotations

import math

import numpy as np

from llm4all.errors import UserError

_BLOCK = 8192  # rows whose (rows, k) similarity block is held at once


def default_clusters(n: int) -> int:
    """⌈√n⌉ clusters: balances k-means cost n·k·d against within-cluster pairs n²/k.

    Our rule of thumb for corpora far smaller than the papers' (SemDeDup used 50,000
    clusters for 440M LAION pairs, about 8,800 points per cluster).
    """
    return max(1, math.ceil(math.sqrt(n)))


def _best(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label, cosine) of each row's most similar centroid, computed block by block."""
    label = np.empty(len(x), np.int64)
    sim = np.empty(len(x), np.float32)
    for a in range(0, len(x), _BLOCK):
        s = x[a : a + _BLOCK] @ centroids.T  # (block, k) cosine similarities
        label[a : a + _BLOCK] = s.argmax(axis=1)
        sim[a : a + _BLOCK] = s[np.arange(len(s)), label[a : a + _BLOCK]]
    return label, sim


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ initial centres (row copies of ``x``), ``(k, d)``."""
    n = len(x)
    centres = [int(rng.integers(n))]
    closest = 1.0 - x @ x[centres[0]]  # (n,) cosine distance to the nearest chosen centre
    for _ in range(1, k):
        weight = np.maximum(closest, 0.0).astype(np.float64)
        total = weight.sum()
        if total <= 0:  # every point sits on a centre already: take unused points in order
            unused = np.setdiff1d(np.arange(n), centres)
            centres.extend(unused[: k - len(centres)].tolist())
            break
        nxt = int(rng.choice(n, p=weight / total))
        centres.append(nxt)
        closest = np.minimum(closest, 1.0 - x @ x[nxt])
    return x[np.array(centres)].copy()


def spherical_kmeans(
    x: np.ndarray, k: int, seed: int = 0, max_iter: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster unit rows of ``x`` (n, d): (labels (n,), centroids (k', d), cosine (n,)).

    ``k' = min(k, n)``; ``cosine[i]`` is the similarity of row i to its own centroid. An
    emptied cluster is re-seeded with the point farthest from its centroid. Deterministic
    given ``seed`` (a local ``numpy.random.default_rng``).
    """
    if k < 1:
        raise UserError(f"k-means: clusters must be >= 1, got {k}")
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, x.shape[1]), np.float32), np.zeros(0)
    k = min(k, n)
    rng = np.random.default_rng(seed)
    centroids = kmeans_pp(x, k, rng)
    label = np.full(n, -1, np.int64)
    for _ in range(max_iter):
        new, sim = _best(x, centroids)
        if np.array_equal(new, label):
            break
        label = new
        count = np.bincount(label, minlength=k)
        full = count > 0
        sums = np.zeros_like(centroids)  # (k, d) sum of each cluster's members
        start = np.cumsum(count) - count
        sums[full] = np.add.reduceat(x[np.argsort(label, kind="stable")], start[full], axis=0)
        for c in np.flatnonzero(count == 0):  # re-seed empty clusters with the worst-fit point
            far = int(np.argmin(sim))
            sums[c], sim[far] = x[far], np.inf
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = np.where(norms > 1e-12, sums / np.maximum(norms, 1e-12), centroids)
    label, sim = _best(x, centroids)
    return label, centroids.astype(np.float32), sim.astype(np.float64)
