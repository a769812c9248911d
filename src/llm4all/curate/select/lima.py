"""LIMA-style selection: N examples that are good *and* different (quality-diversity greedy).

Zhou et al. 2023, "LIMA: Less Is More for Alignment" showed that 1,000 carefully chosen,
high-quality and diverse instruction examples align a 65B model; their selection was manual.
The automatic selection here is QDIT (Bukharin & Zhao 2023, "Data Diversity Matters for
Robust Instruction Tuning"): greedily maximise a mix of facility-location diversity and
quality,

    f(S) = (1 − α) · (N/n) · Σ_{i=1..n} max(0, max_{j∈S} cos(e_i, e_j)) + α · Σ_{j∈S} q_j

where q is the quality column min–max scaled to [0, 1]. The facility-location term (how
well S covers every document; Nemhauser, Wolsey & Fisher 1978 for the (1 − 1/e) guarantee of
greedy on monotone submodular functions) is rescaled by N/n — our choice, so that both terms
count per selected example and α = 0.5 weighs them about equally; QDIT states the trade-off
with the same α. α = 1 is plain top-N by quality, α = 0 pure coverage. f is submodular, so
the lazy greedy of Minoux 1978 (stale gains in a heap are upper bounds) gives the same
selection as plain greedy with far fewer gain evaluations, each O(n·d).
"""

from __future__ import annotations

import heapq

import numpy as np

from llm4all.catalog import SELECTORS
from llm4all.curate.select.base import (
    check_fraction,
    check_lengths,
    check_positive,
    column,
    embeddings_for,
    kept_count,
)
from llm4all.curate.step import Decision
from llm4all.errors import UserError

_BLOCK = 2048  # rows of the similarity matrix held at once for the initial gains


def quality_diversity_greedy(
    emb: np.ndarray, count: int, quality: np.ndarray | None = None, alpha: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy QDIT selection on unit embeddings (n, d).

    Returns (selected indices in pick order, (n,) cosine to the most similar selected
    document, (n,) index of that document).
    """
    n = len(emb)
    q = np.zeros(n) if quality is None else np.asarray(quality, np.float64)
    w_div = (1.0 - alpha) * count / max(n, 1)  # weight of each unit of coverage
    w_q = alpha if quality is not None else 0.0
    gain0 = np.empty(n)
    for a in range(0, n, _BLOCK):  # coverage of each candidate alone: Σ_i max(0, cos(i, c))
        s = emb[a : a + _BLOCK] @ emb.T
        gain0[a : a + _BLOCK] = np.maximum(s, 0.0).sum(axis=1)
    heap = [(-(w_div * g + w_q * qc), c, 0) for c, (g, qc) in enumerate(zip(gain0, q, strict=True))]
    heapq.heapify(heap)
    best = np.full(n, -np.inf)  # cosine of each document to its most similar selected one
    nearest = np.full(n, -1, np.int64)
    chosen: list[int] = []
    while heap and len(chosen) < count:
        neg, c, stamp = heapq.heappop(heap)
        s = emb @ emb[c]  # (n,) cosine to the candidate
        if stamp != len(chosen):  # stale gain: recompute, push back unless still the best
            cover = np.maximum(best, 0.0)
            g = w_div * np.maximum(np.maximum(s, 0.0) - cover, 0.0).sum() + w_q * q[c]
            if heap and -g > heap[0][0] + 1e-12 * max(1.0, abs(g)):
                heapq.heappush(heap, (-g, c, len(chosen)))
                continue
        chosen.append(c)
        better = s > best
        best[better], nearest[better] = s[better], c
    return np.array(chosen, np.int64), best, nearest


@SELECTORS.register("lima")
class Lima:
    """LIMA-style N examples, quality and diversity by QDIT greedy (Bukharin & Zhao 2023).

    LIMA (Zhou et al. 2023) hand-picked 1,000 high-quality, diverse examples; this picks them
    automatically with QDIT (Bukharin & Zhao 2023): greedy on α · quality + (1 − α) ·
    facility-location coverage of the embeddings (see the module docstring).

    Args:
        n: examples kept (LIMA: 1,000); clipped to the number of documents.
        fraction: share kept instead of a count, in (0, 1] (give n or fraction, not both).
        quality: the quality column (e.g. "ask_llm"); None selects for diversity alone.
        alpha: weight of quality against diversity, in [0, 1].
        higher_is_better: whether larger quality values are better (False for perplexity).
        model: embedding model: "minilm" or an llm4all model spec (mean-pooled states).
        batch_size: texts per embedding forward pass.
        max_tokens: tokens embedded per document.
    """

    def __init__(
        self,
        n: int | None = 1000,
        fraction: float | None = None,
        quality: str | None = None,
        alpha: float = 0.5,
        higher_is_better: bool = True,
        model: str = "minilm",
        batch_size: int = 32,
        max_tokens: int = 256,
    ):
        if fraction is not None:
            check_fraction(fraction, "fraction", "lima")
            n = None
        check_positive(n, "n", "lima")
        if n is None and fraction is None:
            raise UserError("lima: give n (a count) or fraction")
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"lima: alpha must be in [0, 1], got {alpha}")
        self.n, self.fraction, self.quality, self.alpha = n, fraction, quality, alpha
        self.higher_is_better = higher_is_better
        self.model, self.batch_size, self.max_tokens = model, batch_size, max_tokens

    def __call__(
        self, ids: list[str], texts: list[str], table: dict, embeddings: np.ndarray | None = None
    ) -> list[Decision]:
        check_lengths(ids, texts, "lima")
        raw = None if self.quality is None else column(table, self.quality, len(ids), "lima")
        if not ids:
            return []
        q = None
        if raw is not None:
            q = raw if self.higher_is_better else -raw
            span = q.max() - q.min()
            q = (q - q.min()) / span if span > 0 else np.zeros(len(q))
        count = min(self.n, len(ids)) if self.n is not None else kept_count(self.fraction, len(ids))
        emb = embeddings_for(texts, embeddings, self.model, self.batch_size, self.max_tokens,
                             "lima")
        chosen, best, nearest = quality_diversity_greedy(emb, count, q, self.alpha)
        keep = np.zeros(len(ids), bool)
        keep[chosen] = True
        out = []
        for i, doc_id in enumerate(ids):
            if keep[i]:
                out.append(Decision(doc_id, True))
                continue
            reason = {"reason": "not_selected", "nearest": ids[nearest[i]],
                      "cosine": round(float(best[i]), 4)}
            if raw is not None:
                reason[self.quality] = float(raw[i])
            out.append(Decision(doc_id, False, reason))
        return out
