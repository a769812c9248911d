"""d4, density and lima selectors on synthetic embeddings (no model): invariants and anchors."""

from __future__ import annotations

import numpy as np
import pytest

from llm4all.catalog import SELECTORS
from llm4all.curate.embed import normalize_rows
from llm4all.curate.kmeans import spherical_kmeans
from llm4all.curate.select.d4 import d4_select, resolve_survivors
from llm4all.curate.select.density import (
    inclusion_probabilities,
    kernel_density,
    systematic_sample,
)
from llm4all.curate.select.lima import quality_diversity_greedy
from llm4all.errors import UserError


def cloud(n=60, d=12, seed=0):
    return normalize_rows(np.random.default_rng(seed).normal(size=(n, d)))


def select(spec, emb, table=None):
    ids = [f"d{i}" for i in range(len(emb))]
    out = SELECTORS.build(spec)(ids, [""] * len(ids), table or {}, embeddings=emb)
    assert [d.id for d in out] == ids and all((d.reason is None) == d.keep for d in out)
    return out


@pytest.mark.parametrize("name", ["d4", "density", "lima"])
@pytest.mark.parametrize("fraction", [0.3, 0.5, 1.0])
def test_kept_fraction_and_determinism(name, fraction):
    emb = cloud()
    spec = {"name": name, "fraction": fraction}
    out = select(spec, emb)
    assert sum(d.keep for d in out) == round(fraction * 60)
    assert select(spec, emb) == out


def test_d4_prunes_the_points_nearest_their_centroid():
    emb = cloud(n=80, seed=1)
    r = d4_select(emb, fraction=0.5, dedup_fraction=1.0, clusters=4, seed=0, recluster=False)
    _, _, cos = spherical_kmeans(emb, 4, seed=0)
    dropped, kept = r["stage"] == 2, r["stage"] == 0
    assert dropped.sum() == 40 and kept.sum() == 40 and not (r["stage"] == 1).any()
    assert cos[dropped].min() >= cos[kept].max()  # the 40 most prototypical go
    np.testing.assert_allclose(r["cosine"][dropped], cos[dropped])


def test_d4_semdedup_stage_removes_planted_copies_first():
    base = cloud(n=40, seed=2)
    rng = np.random.default_rng(3)
    emb = np.vstack([base, normalize_rows(base[:10] + 0.01 * rng.normal(size=(10, 12)))])
    out = select({"name": "d4", "fraction": 0.6, "dedup_fraction": 0.8, "clusters": 3}, emb)
    dup = [d for d in out if not d.keep and d.reason["reason"] == "semantic_duplicate"]
    proto = [d for d in out if not d.keep and d.reason["reason"] == "prototypical"]
    assert len(dup) == 10 and len(proto) == 10  # 50 -> 40 (R_dedup 0.8) -> 30 (R 0.6)
    for d in dup:  # each planted copy or its original goes, the other survives
        i = int(d.id[1:])
        assert d.reason["survivor"] == f"d{i + 40 if i < 10 else i - 40}"
        assert d.reason["cosine"] > 0.99


def test_resolve_survivors_follows_chains():
    keep = np.array([True, False, False, True])
    parent = np.array([-1, 0, 1, -1])
    assert resolve_survivors(keep, parent).tolist() == [0, 0, 0, 3]


def test_density_probabilities_and_systematic_sampling():
    pi = inclusion_probabilities(np.array([10.0, 1.0, 1.0, 1.0, 1.0]), 3)
    np.testing.assert_allclose(pi, [1.0, 0.5, 0.5, 0.5, 0.5])  # capped, rest share 2
    rng = np.random.default_rng(0)
    counts = np.zeros(5)
    for _ in range(4000):
        chosen = systematic_sample(pi, rng)
        assert chosen.sum() == 3
        counts += chosen
    np.testing.assert_allclose(counts / 4000, pi, atol=0.03)


def test_density_is_the_mean_kernel_and_thins_dense_regions():
    x = normalize_rows(np.array([[1.0, 0.0], [0.0, 1.0]]))
    rho = kernel_density(x, 0.5)
    np.testing.assert_allclose(rho, (1 + np.exp(-2.0)) / 2)  # cos = 0: exp((0 - 1)/0.5)
    rng = np.random.default_rng(4)
    dense = normalize_rows(np.array([1.0] + [0.0] * 7) + 0.05 * rng.normal(size=(50, 8)))
    sparse = cloud(n=10, d=8, seed=5)
    emb = np.vstack([dense, sparse])
    kept = np.zeros(60)
    for seed in range(20):
        out = select({"name": "density", "fraction": 0.3, "seed": seed}, emb)
        kept += [d.keep for d in out]
    assert kept[50:].mean() / 20 > 0.9 and kept[:50].mean() / 20 < 0.25
    reason = next(d.reason for d in out if not d.keep)
    assert reason["reason"] == "dense_region" and 0 < reason["keep_probability"] < 1


def test_lima_greedy_matches_brute_force_greedy_and_trades_quality_for_coverage():
    emb = cloud(n=25, d=6, seed=6)
    q = np.random.default_rng(7).random(25)
    chosen, best, nearest = quality_diversity_greedy(emb, 6, q, alpha=0.4)
    s = np.maximum(emb @ emb.T, 0)

    def f(sel):  # the QDIT objective of the module docstring
        cover = s[:, sel].max(axis=1).sum() if sel else 0.0
        return 0.6 * 6 / 25 * cover + 0.4 * q[sel].sum()

    plain = []
    for _ in range(6):  # plain (non-lazy) greedy
        plain.append(max((c for c in range(25) if c not in plain), key=lambda c: f(plain + [c])))
    assert chosen.tolist() == plain
    np.testing.assert_allclose(best, (emb @ emb.T)[:, chosen].max(axis=1), atol=1e-6)
    top = quality_diversity_greedy(emb, 6, q, alpha=1.0)[0]
    assert sorted(top.tolist()) == sorted(np.argsort(-q)[:6].tolist())  # α = 1: top-N quality


def test_lima_picks_one_per_cluster_before_repeating():
    rng = np.random.default_rng(8)
    centres = normalize_rows(rng.normal(size=(4, 16)))
    emb = normalize_rows(np.repeat(centres, 10, axis=0) + 0.05 * rng.normal(size=(40, 16)))
    out = select({"name": "lima", "n": 4}, emb)
    assert sorted(int(d.id[1:]) // 10 for d in out if d.keep) == [0, 1, 2, 3]
    quality = {"q": np.arange(40.0)}
    out = select({"name": "lima", "n": 4, "quality": "q", "alpha": 0.3}, emb, quality)
    assert sorted(int(d.id[1:]) // 10 for d in out if d.keep) == [0, 1, 2, 3]
    gone = next(d for d in out if not d.keep)
    assert set(gone.reason) == {"reason", "nearest", "cosine", "q"}


@pytest.mark.parametrize("spec, match", [
    ({"name": "d4", "fraction": 0}, "fraction"), ({"name": "d4", "dedup_fraction": 2}, "dedup"),
    ({"name": "d4", "clusters": 0}, "clusters"), ({"name": "density", "bandwidth": 0}, "bandwidth"),
    ({"name": "density", "fraction": -0.1}, "fraction"), ({"name": "lima", "n": 0}, "n must be"),
    ({"name": "lima", "alpha": 2}, "alpha"), ({"name": "lima", "n": None}, "give n"),
])
def test_bad_options(spec, match):
    with pytest.raises(UserError, match=match):
        SELECTORS.build(spec)


def test_lima_unknown_quality_column_and_bad_embeddings():
    with pytest.raises(UserError, match="unknown column 'qualty'"):
        select({"name": "lima", "n": 2, "quality": "qualty"}, cloud(n=5), {"quality": np.ones(5)})
    with pytest.raises(UserError, match="embeddings of shape"):
        SELECTORS.build("density")(["a", "b"], ["", ""], {}, embeddings=np.zeros((3, 4)))
