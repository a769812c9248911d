"""D4: SemDeDup to a ratio, re-cluster, then drop the most prototypical points (SSL prototypes).

Tirumala et al. 2023, "D4: Improving LLM Pretraining via Document De-Duplication and
Diversification" (arXiv:2308.12284): after MinHash dedup (done earlier by the curate
pipeline, ``dedupers: minhash``), embed the documents, cluster them with k-means and

1. SemDeDup (Abbas et al. 2023) with selection ratio R_dedup: the ε of SemDeDup is chosen so
   that a fraction R_dedup of the documents survives. With the SemDeDup code's rule (drop j
   iff M_j = max cosine to an earlier member of its cluster > 1 − ε) that is exactly "keep the
   R_dedup·n documents of smallest M_j" (``llm4all.curate.dedup.semdedup.earlier_max``);
2. re-cluster the survivors;
3. SSL prototypes (Sorscher et al. 2022, "Beyond neural scaling laws: beating power law
   scaling via data pruning"): the points closest to their cluster centroid are the most
   prototypical ("easy"); drop them until the overall selection ratio R is reached.

Defaults: R_dedup = 0.75, the value D4 settles on; R (``fraction``) = 0.5 is our choice from
the range of selection ratios the paper sweeps (pick R for your budget). When R ≥ R_dedup
only step 1 runs, to ratio R.
"""

from __future__ import annotations

import numpy as np

from llm4all.catalog import SELECTORS
from llm4all.curate.dedup.semdedup import semdedup
from llm4all.curate.kmeans import default_clusters, spherical_kmeans
from llm4all.curate.select.base import (
    check_fraction,
    check_lengths,
    check_positive,
    embeddings_for,
    kept_count,
)
from llm4all.curate.step import Decision


def resolve_survivors(keep: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Follow ``parent`` links from each dropped point to a kept one (−1 if the chain ends)."""
    n = len(keep)
    survivor = np.where(keep, np.arange(n), parent)
    while True:
        open_ = (survivor >= 0) & ~keep[np.maximum(survivor, 0)]
        if not open_.any():
            return survivor
        survivor[open_] = parent[survivor[open_]]  # strictly earlier in cluster order


def d4_select(
    emb: np.ndarray,
    fraction: float = 0.5,
    dedup_fraction: float = 0.75,
    clusters: int | None = None,
    seed: int = 0,
    recluster: bool = True,
) -> dict[str, np.ndarray]:
    """D4 on unit embeddings (n, d). Returns arrays (n,): ``stage`` (0 kept, 1 SemDeDup,
    2 prototype), ``cluster`` (label of the stage that decided), ``survivor`` (index or −1),
    ``cosine`` (to the survivor for stage 1, to the centroid for stage 2)."""
    n = len(emb)
    m_final = kept_count(fraction, n)
    m_dedup = max(kept_count(dedup_fraction, n), m_final)
    labels, _, cos = spherical_kmeans(emb, clusters or default_clusters(n), seed)
    r = semdedup(emb, np.inf, labels=labels, centroid_cos=cos, compare="all")  # M and parent
    order = np.lexsort((np.arange(n), r.nearest))  # least redundant first
    keep = np.zeros(n, bool)
    keep[order[:m_dedup]] = True
    stage = np.where(keep, 0, 1)
    cluster = labels.copy()
    survivor = resolve_survivors(keep, r.parent)
    cosine = np.where(survivor >= 0, np.einsum("ij,ij->i", emb, emb[np.maximum(survivor, 0)]),
                      r.nearest)
    prune = m_dedup - m_final
    if prune > 0:
        rest = np.flatnonzero(keep)
        if recluster:
            k = clusters or default_clusters(len(rest))
            labels2, _, cos2 = spherical_kmeans(emb[rest], k, seed + 1)
        else:
            labels2, cos2 = labels[rest], cos[rest]
        drop = rest[np.lexsort((rest, -cos2))[:prune]]  # most similar to their centroid
        keep[drop] = False
        stage[drop] = 2
        where = np.searchsorted(rest, drop)
        cluster[drop], cosine[drop], survivor[drop] = labels2[where], cos2[where], -1
    return {"stage": stage, "cluster": cluster, "survivor": survivor, "cosine": cosine}


@SELECTORS.register("d4")
class D4:
    """D4: SemDeDup to ratio R_dedup, re-cluster, prune prototypes (Tirumala et al. 2023).

    Tirumala et al. 2023, "D4: Improving LLM Pretraining via Document De-Duplication and
    Diversification": SemDeDup (Abbas et al. 2023) then SSL-prototype pruning (Sorscher et
    al. 2022) of the points nearest their k-means centroid. Run MinHash dedup before it.

    Args:
        fraction: overall selection ratio R kept, in (0, 1].
        dedup_fraction: ratio R_dedup kept by the SemDeDup step (paper: 0.75).
        clusters: k-means clusters for each clustering; None uses ⌈√n⌉.
        model: embedding model: "minilm" or an llm4all model spec (mean-pooled states).
        batch_size: texts per embedding forward pass.
        max_tokens: tokens embedded per document.
        seed: seed of the k-means++ initialisations.
        recluster: re-run k-means on the SemDeDup survivors before pruning (as D4 does).
    """

    def __init__(
        self,
        fraction: float = 0.5,
        dedup_fraction: float = 0.75,
        clusters: int | None = None,
        model: str = "minilm",
        batch_size: int = 32,
        max_tokens: int = 256,
        seed: int = 0,
        recluster: bool = True,
    ):
        check_fraction(fraction, "fraction", "d4")
        check_fraction(dedup_fraction, "dedup_fraction", "d4")
        check_positive(clusters, "clusters", "d4")
        self.fraction, self.dedup_fraction, self.clusters = fraction, dedup_fraction, clusters
        self.model, self.batch_size, self.max_tokens = model, batch_size, max_tokens
        self.seed, self.recluster = seed, recluster

    def on_ray(self, ray, ids: list[str], texts, table: dict) -> list[Decision]:
        """The same decisions with the embeddings computed by Ray actors (``embed.embed_on_ray``)."""
        from llm4all.curate.embed import embed_on_ray

        return self(ids, texts, table, embed_on_ray(ray, texts, self.model, self.batch_size, self.max_tokens))

    def __call__(
        self, ids: list[str], texts: list[str], table: dict, embeddings: np.ndarray | None = None
    ) -> list[Decision]:
        check_lengths(ids, texts, "d4")
        if not ids:
            return []
        emb = embeddings_for(texts, embeddings, self.model, self.batch_size, self.max_tokens,
                             "d4")
        r = d4_select(emb, self.fraction, self.dedup_fraction, self.clusters, self.seed,
                      self.recluster)
        out = []
        for i, doc_id in enumerate(ids):
            stage, c, x = int(r["stage"][i]), int(r["cluster"][i]), float(r["cosine"][i])
            x = round(x, 4) if np.isfinite(x) else None  # None: first of a cluster, no peer
            if stage == 0:
                out.append(Decision(doc_id, True))
            elif stage == 1:
                reason = {"reason": "semantic_duplicate", "cluster": c, "cosine": x}
                if r["survivor"][i] >= 0:
                    reason["survivor"] = ids[r["survivor"][i]]
                out.append(Decision(doc_id, False, reason))
            else:
                out.append(Decision(doc_id, False, {"reason": "prototypical", "cluster": c,
                                                    "cosine_to_centroid": x}))
        return out
