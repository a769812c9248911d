"""Density sampling: estimate density in embedding space, keep documents inversely to it.

Sachdeva et al. 2024, "How to Train Data-Efficient LLMs" (the Density sampler): score each
example by a kernel density estimate in embedding space and sample with inverse propensity,
so dense, prototypical regions are thinned and rare regions kept. They estimate the density
with a sketch for scale; we compute it exactly against a seeded random sample of at most
``reference`` points:

    ρ_i = (1/|R|) Σ_{j∈R} exp((e_i·e_j − 1) / h)

a von Mises–Fisher kernel on unit embeddings (the Gaussian kernel of bandwidth √h on the
sphere, since ‖e_i − e_j‖² = 2(1 − e_i·e_j)). Inclusion probabilities π_i = min(1, c/ρ_i) with
c set so that Σ π_i = m = round(fraction·n) (capped entries are re-balanced), and exactly m
documents are drawn by systematic probability-proportional-to-size sampling (Madow 1949) over
a seeded random order, so document i is kept with probability exactly π_i and the count is
exactly m.

Cost: n·|R|·d multiply-adds (|R| ≤ ``reference``), in blocks of ``_BLOCK`` rows.
"""

from __future__ import annotations

import numpy as np

from llm4all.catalog import SELECTORS
from llm4all.curate.select.base import (
    check_fraction,
    check_lengths,
    check_positive,
    embeddings_for,
    kept_count,
)
from llm4all.curate.step import Decision
from llm4all.errors import UserError

_BLOCK = 2048  # rows of the (rows, |R|) kernel matrix held at once


def kernel_density(emb: np.ndarray, bandwidth: float, ref: np.ndarray | None = None) -> np.ndarray:
    """(n,) mean von Mises–Fisher kernel exp((e_i·e_j − 1)/h) over the reference rows."""
    ref = emb if ref is None else ref
    out = np.empty(len(emb))
    for a in range(0, len(emb), _BLOCK):
        s = emb[a : a + _BLOCK] @ ref.T  # (block, |R|) cosine similarities
        out[a : a + _BLOCK] = np.exp((s.astype(np.float64) - 1.0) / bandwidth).mean(axis=1)
    return out


def inclusion_probabilities(weight: np.ndarray, m: int) -> np.ndarray:
    """π ∝ weight, capped at 1, summing to m (0 ≤ m ≤ n, weights > 0)."""
    pi = np.zeros(len(weight))
    active = np.ones(len(weight), bool)
    left = float(m)
    while left > 0 and active.any():
        p = left * weight / weight[active].sum()
        capped = active & (p >= 1.0)
        if not capped.any():
            pi[active] = p[active]
            break
        pi[capped] = 1.0
        left -= capped.sum()
        active &= ~capped
    return pi


def systematic_sample(pi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean (n,) mask with exactly round(Σπ) True; P(i chosen) = π_i (Madow 1949)."""
    order = rng.permutation(len(pi))
    total = round(float(pi.sum()))
    cum = np.cumsum(pi[order])
    if total == 0:
        return np.zeros(len(pi), bool)
    cum *= total / cum[-1]  # remove float drift so the last edge is exactly the count
    u = rng.random()
    hits = np.ceil(cum - u) - np.ceil(np.r_[0.0, cum[:-1]] - u)  # integers + u in each cell
    chosen = np.zeros(len(pi), bool)
    chosen[order] = hits > 0.5
    return chosen


def density_sample(
    emb: np.ndarray, fraction: float, bandwidth: float = 0.1, seed: int = 0,
    reference: int | None = 20000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keep mask, density ρ, inclusion probability π), each (n,), for unit embeddings."""
    n = len(emb)
    rng = np.random.default_rng(seed)
    ref = emb
    if reference is not None and n > reference:
        ref = emb[np.sort(rng.choice(n, reference, replace=False))]
    rho = kernel_density(emb, bandwidth, ref)
    pi = inclusion_probabilities(1.0 / np.maximum(rho, 1e-300), kept_count(fraction, n))
    return systematic_sample(pi, rng), rho, pi


@SELECTORS.register("density")
class Density:
    """Density sampling: keep documents with probability ∝ 1 / density (Sachdeva et al. 2024).

    Sachdeva et al. 2024, "How to Train Data-Efficient LLMs": a kernel density estimate in
    embedding space, inverse-propensity sampling. Exactly round(fraction·n) documents kept,
    each with probability min(1, c/ρ); seeded, so the same seed keeps the same documents.

    Args:
        fraction: share of documents kept, in (0, 1].
        bandwidth: kernel bandwidth h in cosine-distance units (1 − cos); smaller values
            make the density more local.
        reference: estimate the density against at most this many random documents (None:
            all; cost n × reference × d).
        model: embedding model: "minilm" or an llm4all model spec (mean-pooled states).
        batch_size: texts per embedding forward pass.
        max_tokens: tokens embedded per document.
        seed: seed of the reference sample and of the sampling.
    """

    def __init__(
        self,
        fraction: float = 0.5,
        bandwidth: float = 0.1,
        reference: int | None = 20000,
        model: str = "minilm",
        batch_size: int = 32,
        max_tokens: int = 256,
        seed: int = 0,
    ):
        check_fraction(fraction, "fraction", "density")
        if not bandwidth > 0:
            raise UserError(f"density: bandwidth must be > 0, got {bandwidth}")
        check_positive(reference, "reference", "density")
        self.fraction, self.bandwidth, self.reference = fraction, bandwidth, reference
        self.model, self.batch_size, self.max_tokens, self.seed = model, batch_size, max_tokens, seed

    def on_ray(self, ray, ids: list[str], texts, table: dict) -> list[Decision]:
        """The same decisions with the embeddings computed by Ray actors (``embed.embed_on_ray``)."""
        from llm4all.curate.embed import embed_on_ray

        return self(ids, texts, table, embed_on_ray(ray, texts, self.model, self.batch_size, self.max_tokens))

    def __call__(
        self, ids: list[str], texts: list[str], table: dict, embeddings: np.ndarray | None = None
    ) -> list[Decision]:
        check_lengths(ids, texts, "density")
        if not ids:
            return []
        emb = embeddings_for(texts, embeddings, self.model, self.batch_size, self.max_tokens,
                             "density")
        keep, rho, pi = density_sample(emb, self.fraction, self.bandwidth, self.seed,
                                       self.reference)
        return [
            Decision(doc_id, True) if keep[i] else Decision(doc_id, False, {
                "reason": "dense_region", "density": round(float(rho[i]), 6),
                "keep_probability": round(float(pi[i]), 4)})
            for i, doc_id in enumerate(ids)
        ]
