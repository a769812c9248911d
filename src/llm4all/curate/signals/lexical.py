"""Lexical diversity of the word list: TTR, MTLD, HD-D and vocd-D.

All four work on ``Doc.words`` (lower-cased words, see text.py). Degenerate input: a document
without words scores 0 everywhere. Definitions and their agreement with the lexicalrichness
package are in docs/curate.md ("Signals").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import gammaln

from llm4all.curate.signals.compute import signal
from llm4all.curate.signals.text import Doc

MTLD_THRESHOLD = 0.72  # McCarthy & Jarvis 2010, "MTLD, vocd-D, and HD-D", p. 384 (factor size)
HDD_DRAWS = 42  # McCarthy & Jarvis 2007, "vocd: A theoretical and empirical evaluation", p. 465
VOCD_SIZES = (35, 50)  # McKee, Malvern & Richards 2000: samples of 35..50 tokens
VOCD_SAMPLES = 100  # ... 100 random samples per size
VOCD_REPEATS = 3  # ... and the whole procedure averaged over 3 runs
VOCD_D_BOUNDS = (1e-2, 1e4)  # search range of D; an all-distinct text reaches the top


def ttr(words: Sequence[str]) -> float:
    """Type-token ratio V/N (Templin 1957); 0 for no words."""
    return len(set(words)) / len(words) if words else 0.0


def _mtld_factors(words: Sequence[str], threshold: float) -> float:
    """One MTLD pass: full factors (TTR fell to <= threshold) plus the partial last factor."""
    seen: set[str] = set()
    count, factors, current = 0, 0.0, 1.0
    for w in words:
        count += 1
        seen.add(w)
        current = len(seen) / count
        if current <= threshold:
            factors += 1.0
            seen = set()
            count = 0
    if count:  # partial factor: how far the remainder's TTR got from 1 towards the threshold
        factors += (1.0 - current) / (1.0 - threshold)
    return factors


def mtld(words: Sequence[str], threshold: float = MTLD_THRESHOLD) -> float:
    """MTLD: mean of N / factors over a forward and a backward pass (McCarthy & Jarvis 2010).

    A text whose TTR never leaves 1 (all words distinct) has no factor at all; as in the
    lexicalrichness package its factor count is taken as 1, so MTLD = N. No words: 0.
    """
    n = len(words)
    if n == 0:
        return 0.0
    forward = _mtld_factors(words, threshold) or 1.0
    backward = _mtld_factors(words[::-1], threshold) or 1.0
    return (n / forward + n / backward) / 2.0


def hdd(counts: Sequence[int] | np.ndarray, draws: int = HDD_DRAWS) -> float:
    """HD-D from type frequencies: sum over types of P(type in a random draw) / draws.

    P(type with frequency f appears in ``draws`` tokens drawn without replacement from N) =
    1 - C(N-f, draws) / C(N, draws), the hypergeometric P(X >= 1) (McCarthy & Jarvis 2007);
    computed for all types at once with log-gamma. HD-D is then the expected TTR of a
    ``draws``-token sample, in [0, 1]. With N < draws the whole text is drawn and HD-D = TTR.
    """
    f = np.asarray(counts, dtype=np.float64)
    total = f.sum()
    if total <= 0:
        return 0.0
    n = min(float(draws), total)
    rest = total - f  # tokens that are not this type
    ok = rest >= n  # else the draw must contain the type: P(X = 0) = 0
    r = np.where(ok, rest, n)
    # log C(N-f, n) - log C(N, n) = lgamma(N-f+1) - lgamma(N-f-n+1) - lgamma(N+1) + lgamma(N-n+1)
    log_p0 = gammaln(r + 1) - gammaln(r - n + 1) - gammaln(total + 1) + gammaln(total - n + 1)
    p0 = np.where(ok, np.exp(log_p0), 0.0)
    return float((1.0 - p0).sum() / n)


def ttr_curve(n: np.ndarray, d: float) -> np.ndarray:
    """Expected TTR of an n-token sample for diversity D: (D/n)(sqrt(1 + 2n/D) - 1) (McKee 2000)."""
    return (d / n) * (np.sqrt(1.0 + 2.0 * n / d) - 1.0)


def fit_d(sizes: np.ndarray, mean_ttr: np.ndarray) -> float:
    """Least-squares D of ``ttr_curve`` through (sizes, mean_ttr), searched in log D."""

    def sse(log_d: float) -> float:
        return float(((ttr_curve(sizes, np.exp(log_d)) - mean_ttr) ** 2).sum())

    lo, hi = np.log(VOCD_D_BOUNDS)
    res = minimize_scalar(sse, bounds=(lo, hi), method="bounded", options={"xatol": 1e-8})
    return float(np.exp(res.x))


def vocd_d(
    counts: Sequence[int] | np.ndarray, seed: int = 42, repeats: int = VOCD_REPEATS
) -> float:
    """vocd-D (Malvern, Richards, Chipere & Duran 2004; McKee, Malvern & Richards 2000).

    For each size n in 35..50, draw 100 samples of n tokens without replacement (a
    multivariate hypergeometric draw over the type frequencies), average their TTRs, fit
    D by least squares to TTR(n) = (D/n)(sqrt(1 + 2n/D) - 1); average D over ``repeats`` runs.
    Random draws come from a local ``np.random.default_rng(seed)``, so the value is
    deterministic. Texts shorter than 50 tokens score 0 (undefined).
    """
    colors = np.asarray(counts, dtype=np.int64)
    lo, hi = VOCD_SIZES
    if colors.sum() < hi:
        return 0.0
    rng = np.random.default_rng(seed)
    sizes = np.arange(lo, hi + 1, dtype=np.float64)
    estimates = []
    for _ in range(repeats):
        mean_ttr = np.empty(len(sizes))
        for i, n in enumerate(range(lo, hi + 1)):
            drawn = rng.multivariate_hypergeometric(colors, n, size=VOCD_SAMPLES, method="count")
            mean_ttr[i] = np.count_nonzero(drawn, axis=1).mean() / n  # (VOCD_SAMPLES,) -> mean
        estimates.append(fit_d(sizes, mean_ttr))
    return float(np.mean(estimates))


def _freqs(doc: Doc) -> np.ndarray:
    return np.fromiter(doc.word_counts.values(), dtype=np.int64, count=len(doc.word_counts))


@signal("ttr", ("ttr",))
def ttr_signal(doc: Doc) -> dict[str, float]:
    """Type-token ratio: distinct words / words (Templin 1957, "Certain Language Skills")."""
    return {"ttr": len(doc.word_counts) / len(doc.words) if doc.words else 0.0}


@signal("mtld", ("mtld",))
def mtld_signal(doc: Doc, threshold: float = MTLD_THRESHOLD) -> dict[str, float]:
    """MTLD, bidirectional, factor threshold 0.72 (McCarthy & Jarvis 2010, Behav. Res. Methods)."""
    return {"mtld": mtld(doc.words, threshold)}


@signal("hdd", ("hdd",))
def hdd_signal(doc: Doc, draws: int = HDD_DRAWS) -> dict[str, float]:
    """HD-D, hypergeometric expected TTR of 42-token draws (McCarthy & Jarvis 2007, Lang. Test.)."""
    return {"hdd": hdd(_freqs(doc), draws)}


@signal("vocd_d", ("vocd_d",))
def vocd_signal(doc: Doc, seed: int = 42, repeats: int = VOCD_REPEATS) -> dict[str, float]:
    """vocd-D fitted to sampled TTR curves (Malvern et al. 2004; McKee et al. 2000)."""
    return {"vocd_d": vocd_d(_freqs(doc), seed, repeats)}
