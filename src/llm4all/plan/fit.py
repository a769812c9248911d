"""Fit your own Chinchilla law L(N, D) = E + A/N^α + B/D^β to your runs (Approach 3).

Hoffmann et al. 2022 (Section 3.3, Appendix D.2): minimise the Huber loss (δ = 1e-3) between
the predicted and observed log-loss, with the prediction written as a log-sum-exp

    log L̂(N, D) = LSE(a − α·log N,  b − β·log D,  e),   A = eᵃ, B = eᵇ, E = eᵉ,

by L-BFGS from a grid of starting points α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1},
a, b ∈ {0, 5, …, 25}. We evaluate the objective on that whole grid (vectorised) and run L-BFGS
from the best starts, with a tight tolerance: Besiroglu et al. 2024 found the original fit
stopped before convergence. Confidence intervals come from a bootstrap over runs.

Runs file: CSV with a header, or JSONL, with columns ``params`` (N), ``tokens`` (D) and
``loss`` (nats/token); ``llm4all train`` appends its finished runs in this format.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

from llm4all.errors import UserError
from llm4all.plan.scaling import ChinchillaLaw

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, Appendix D.2
GRID = np.stack(np.meshgrid(
    np.arange(0, 26, 5.0), np.arange(0, 26, 5.0), np.arange(-1, 1.01, 0.5),
    np.arange(0, 2.01, 0.5), np.arange(0, 2.01, 0.5), indexing="ij"), -1).reshape(-1, 5)  # (4500, 5)


def read_runs(path: Path) -> np.ndarray:
    """(n_runs, 3) array of params, tokens, loss from a CSV or JSONL file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such runs file")
    rows: list[tuple[int, dict]] = []
    if path.suffix in (".jsonl", ".json"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append((i, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{i}: not valid JSON ({e.msg})") from None
    else:
        with path.open(newline="") as f:
            rows = [(i, r) for i, r in enumerate(csv.DictReader(f), 2)]
    out = []
    for i, row in rows:
        try:
            vals = [float(row[k]) for k in ("params", "tokens", "loss")]
        except KeyError as e:
            raise UserError(f"{path}:{i}: missing column {e.args[0]!r} (need params, tokens, loss)") from None
        except (TypeError, ValueError):
            raise UserError(f"{path}:{i}: params, tokens and loss must be numbers, got {row}") from None
        if min(vals) <= 0 or not np.all(np.isfinite(vals)):
            raise UserError(f"{path}:{i}: params, tokens and loss must be positive and finite")
        out.append(vals)
    if len(out) < 5:
        raise UserError(f"{path}: {len(out)} runs; fitting 5 constants needs at least 5 (better 20+)")
    return np.asarray(out)


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray):
    """Mean Huber(δ) of log-loss residuals and its gradient w.r.t. (a, b, e, α, β)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # (3, n)
    top = terms.max(0)
    ex = np.exp(terms - top)
    total = ex.sum(0)
    r = top + np.log(total) - log_l  # log-sum-exp minus observed log-loss
    small = np.abs(r) <= HUBER_DELTA
    h = np.where(small, 0.5 * r**2, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA))
    dr = np.where(small, r, HUBER_DELTA * np.sign(r)) / len(r)
    w = ex / total  # softmax weights: d LSE / d term
    grad = np.array([dr @ w[0], dr @ w[1], dr @ w[2], -(dr * w[0]) @ log_n, -(dr * w[1]) @ log_d])
    return h.mean(), grad


def _grid_values(runs: np.ndarray) -> np.ndarray:
    log_n, log_d, log_l = np.log(runs.T)
    a, b, e, alpha, beta = (GRID[:, i:i + 1] for i in range(5))
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(GRID), len(log_n)))])
    r = logsumexp(terms, axis=0) - log_l
    return np.where(np.abs(r) <= HUBER_DELTA, 0.5 * r**2,
                    HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA)).mean(1)


def _lbfgs(runs: np.ndarray, starts: np.ndarray) -> np.ndarray:
    log_n, log_d, log_l = np.log(runs.T)
    best, best_val = None, np.inf
    for x0 in starts:
        res = minimize(_objective, x0, args=(log_n, log_d, log_l), jac=True, method="L-BFGS-B",
                       options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10})
        if res.fun < best_val:
            best, best_val = res.x, res.fun
    return best


def theta_to_law(theta: np.ndarray) -> ChinchillaLaw:
    a, b, e, alpha, beta = theta
    return ChinchillaLaw(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)),
                         alpha=float(alpha), beta=float(beta))


@dataclass
class Fit:
    law: ChinchillaLaw
    theta: np.ndarray  # (a, b, e, α, β)
    boot: np.ndarray  # (n_boot, 5) bootstrap thetas
    runs: np.ndarray

    def laws(self) -> list[ChinchillaLaw]:
        return [theta_to_law(t) for t in self.boot]

    def interval(self, fn, level: float = 0.95) -> tuple[float, float, float]:
        """Point value and bootstrap percentile interval of ``fn(law)``."""
        vals = np.array([fn(law) for law in self.laws()], dtype=float)
        q = 100 * (1 - level) / 2
        lo, hi = np.nanpercentile(vals, [q, 100 - q]) if len(vals) else (np.nan, np.nan)
        return float(fn(self.law)), float(lo), float(hi)


def fit_law(runs: np.ndarray, n_starts: int = 10, n_boot: int = 100, seed: int = 0) -> Fit:
    """Fit (a, b, e, α, β) to ``runs`` and bootstrap it ``n_boot`` times."""
    order = np.argsort(_grid_values(runs))
    theta = _lbfgs(runs, GRID[order[:n_starts]])
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):  # each resample starts from the full fit (cheap, near its optimum)
        sample = runs[rng.integers(0, len(runs), len(runs))]
        boot.append(_lbfgs(sample, theta[None]))
    return Fit(theta_to_law(theta), theta, np.asarray(boot).reshape(-1, 5), runs)


def plot_fit(fit: Fit, path: Path) -> Path:
    """Observed against predicted loss, and loss against tokens per model size with the fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llm4all.runs import atomic_path

    n, d, loss = fit.runs.T
    pred = fit.law.loss(n, d)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.scatter(pred, loss, s=12)
    lim = [min(pred.min(), loss.min()), max(pred.max(), loss.max())]
    ax1.plot(lim, lim, "k--", lw=1)
    ax1.set(xlabel="predicted loss", ylabel="observed loss", title="fit against runs")
    cmap = plt.get_cmap("viridis")
    sizes = np.unique(n)
    for i, size in enumerate(sizes):
        m = n == size
        c = cmap(i / max(len(sizes) - 1, 1))
        ax2.scatter(d[m], loss[m], color=c, s=12, label=f"N={size:.3g}")
        grid = np.geomspace(d[m].min() / 2, d[m].max() * 2, 50)
        ax2.plot(grid, fit.law.loss(size, grid), color=c, lw=1)
    ax2.set(xscale="log", xlabel="tokens D", ylabel="loss", title="L(N, D) fit")
    if len(sizes) <= 10:
        ax2.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)
    return Path(path)
