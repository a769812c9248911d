"""MinHash + LSH: LSH parameters against datasketch and a brute-force search, candidate
pairs, union-find clusters, planted near-copies found (every one at or above the threshold,
none below it), survivor policy, streaming in batches, bad input."""

from __future__ import annotations

import random

import numpy as np
import pytest

from llm4all.catalog import DEDUPERS
from llm4all.curate.dedup import minhash as mh
from llm4all.curate.dedup.minhash import (
    MinHashDedup,
    candidate_pairs,
    lsh_params,
    near_duplicates,
    recall_params,
)
from llm4all.curate.dedup.shingles import normalize
from llm4all.errors import UserError


def test_lsh_params_hand_checked_and_equal_to_datasketch():
    assert lsh_params(0.8, 128) == (9, 13)
    optimal = pytest.importorskip("datasketch.lsh")._optimal_param
    for threshold, num_perm in [(0.5, 64), (0.7, 128), (0.8, 128), (0.9, 256)]:
        assert lsh_params(threshold, num_perm) == optimal(threshold, num_perm, 0.5, 0.5)


def test_recall_params_hand_checked_and_optimal_by_brute_force():
    # t = 0.8, 128 permutations: (1 − 0.8⁶)¹⁶ = 0.738¹⁶ = 0.0077 ≤ 1%, 15 bands give 0.0105
    assert recall_params(0.8, 128) == (16, 6)
    assert pytest.approx(0.00772, abs=1e-5) == (1 - 0.8**6) ** 16
    assert (1 - 0.8**6) ** 15 > 0.01
    for threshold, num_perm in [(0.5, 64), (0.7, 128), (0.8, 128), (0.9, 256)]:
        b, r = recall_params(threshold, num_perm)
        assert b * r <= num_perm and (1 - threshold**r) ** b <= 0.01
        area = mh._fp_area(b, r, threshold)
        rivals = [(b2, r2) for b2 in range(1, num_perm + 1) for r2 in range(1, num_perm // b2 + 1)
                  if (1 - threshold**r2) ** b2 <= 0.01]
        assert all(mh._fp_area(b2, r2, threshold) >= area - 1e-12 for b2, r2 in rivals)
    # no banding of 4 permutations reaches 1% at t = 0.3: the smallest miss, 4 bands of 1 row
    assert recall_params(0.3, 4) == (4, 1)


def test_candidate_pairs_all_pairs_in_small_buckets_star_in_large():
    rng = np.random.default_rng(0)
    sig = rng.integers(0, 2**32, size=(50, 8), dtype=np.uint64).astype(np.uint32)
    sig[[3, 10, 20]] = sig[3]  # a bucket of three
    pairs = candidate_pairs(sig, bands=4, rows=2)
    assert pairs.tolist() == [[3, 10], [3, 20], [10, 20]]
    sig[:40] = sig[0]  # a bucket of 40 > 32: every member linked to the first at least
    pairs = {tuple(p) for p in candidate_pairs(sig, bands=4, rows=2).tolist()}
    assert all((0, j) in pairs for j in range(1, 40))


def test_union_find_joins_a_chain_and_reports_jaccard_to_survivor():
    a = np.arange(128, dtype=np.uint32)
    b = a.copy()
    b[:20] += 1000  # J(a, b) = 108/128
    c = b.copy()
    c[20:40] += 1000  # J(b, c) = 108/128, J(a, c) = 88/128 < 0.8
    noise = np.arange(5000, 5128, dtype=np.uint32)
    sig = np.stack([a, noise, b, c])
    cluster, survivor, jac = near_duplicates(sig, 0.8, bands=32, rows=4, verify="estimate")
    assert cluster.tolist() == [0, -1, 0, 0]
    assert survivor.tolist() == [0, 1, 0, 0]
    assert jac.tolist() == [1.0, 1.0, 108 / 128, 88 / 128]
    # the longest member survives when lengths are given; ties go to the first
    _, survivor, _ = near_duplicates(sig, 0.8, 32, 4, "estimate", lengths=np.array([5, 9, 7, 7]))
    assert survivor.tolist() == [2, 1, 2, 2]
    # exact verification on shingle sets: the a–b and b–c candidates (estimate 108/128) are
    # checked on {0..9} vs {1..9} (J = 0.9: joined) and {1..9} vs {1..8, 50, 51} (J = 8/11:
    # not joined); the exact Jaccard is recorded
    sets = [np.arange(10), np.arange(100, 110), np.arange(1, 10), np.r_[np.arange(1, 9), 50, 51]]
    shingles = (np.concatenate(sets).astype(np.uint32), np.array([10, 10, 9, 10]))
    cluster, survivor, jac = near_duplicates(sig, 0.8, 32, 4, "exact", shingles=shingles)
    assert cluster.tolist() == [0, -1, 0, -1] and survivor.tolist() == [0, 1, 0, 3]
    assert jac.tolist() == [1.0, 1.0, 0.9, 1.0]
    # a chain a ≈ b ≈ c with J(a, c) = 8/12 below t: one cluster, c's recorded Jaccard is
    # computed for the (unverified) pair a–c, not borrowed from a verified one
    sets = [np.arange(10), np.arange(1, 11), np.arange(2, 12)]
    shingles = (np.concatenate(sets).astype(np.uint32), np.array([10, 10, 10]))
    same = np.zeros((3, 16), np.uint32)  # every pair a candidate with estimate 1
    cluster, survivor, jac = near_duplicates(same, 0.8, 4, 4, "exact", shingles=shingles)
    assert cluster.tolist() == [0, 0, 0] and survivor.tolist() == [0, 0, 0]
    assert jac.tolist() == [1.0, 9 / 11, 8 / 12]
    with pytest.raises(UserError, match="needs the documents' shingles"):
        near_duplicates(sig, 0.8, verify="exact")


def planted_corpus(n: int = 60, seed: int = 0) -> tuple[list[tuple[str, str]], set[str]]:
    """n random 200-word originals, then one copy of every third: exact (case and spacing
    changed) or with 1% of its words substituted."""
    rng = random.Random(seed)
    vocab = [f"word{i}" for i in range(3000)]
    originals = [" ".join(rng.choice(vocab) for _ in range(200)) for _ in range(n)]
    docs = [(f"o{i}", t) for i, t in enumerate(originals)]
    copies = set()
    for k, i in enumerate(range(0, n, 3)):
        words = originals[i].split()
        if k % 2:
            words = [rng.choice(vocab) if rng.random() < 0.01 else w for w in words]
        else:
            words = [w.upper() if rng.random() < 0.1 else w for w in words]
        docs.append((f"copy{i}", "  ".join(words) + "!"))
        copies.add(f"copy{i}")
    return docs, copies


def test_minhash_dedup_finds_planted_near_copies():
    docs, copies = planted_corpus()
    decisions = list(DEDUPERS.build({"name": "minhash", "threshold": 0.8})(docs))
    assert [d.id for d in decisions] == [i for i, _ in docs]
    dropped = {d.id: d.reason for d in decisions if not d.keep}
    assert set(dropped) <= copies  # no original removed
    assert len(dropped) >= 0.9 * len(copies)
    for doc_id, reason in dropped.items():
        assert reason["reason"] == "near_duplicate"
        assert reason["survivor"] == "o" + doc_id.removeprefix("copy")
        assert 0.8 <= reason["jaccard"] <= 1.0  # exact Jaccard, verified
    assert sorted(r["cluster"] for r in dropped.values()) == list(range(len(dropped)))
    for verify in ("estimate", "none"):
        other = [d for d in MinHashDedup(verify=verify)(docs) if not d.keep]
        assert {d.id for d in other} <= copies
    assert all(d.reason["jaccard"] >= 0.8 for d in MinHashDedup(verify="estimate")(docs)
               if not d.keep)


def shingle_set(text: str) -> set[str]:
    words = normalize(text).split()
    return {" ".join(words[i : i + 5]) for i in range(len(words) - 4)}


def test_exact_verification_catches_every_copy_at_the_threshold_and_none_below():
    """60 copies with true 5-gram Jaccard spread over 0.70–0.95 around t = 0.8: the default
    removes exactly those ≥ 0.8 (a candidate misses at most 1% of them in expectation) and
    records their exact Jaccard; datasketch's banding, unverified, misses some above and
    removes some below (its S-curve is 0.40 at s = 0.8 and 0.005 at s = 0.6)."""
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(5000)]
    docs, truth = [], {}
    for k in range(60):
        words = [rng.choice(vocab) for _ in range(300)]
        copy = list(words)
        for pos in rng.sample(range(300), 4 + k % 12):  # 4..15 substitutions, J ≈ 0.94..0.78
            copy[pos] = rng.choice(vocab)
        docs += [(f"o{k}", " ".join(words)), (f"c{k}", " ".join(copy))]
        a, b = shingle_set(docs[-2][1]), shingle_set(docs[-1][1])
        truth[f"c{k}"] = len(a & b) / len(a | b)
    above = {c for c, j in truth.items() if j >= 0.8}
    assert 15 <= len(above) <= 50  # both sides of the threshold are populated
    dropped = {d.id: d.reason for d in MinHashDedup()(docs) if not d.keep}
    assert set(dropped) == above
    assert all(r["jaccard"] == round(truth[c], 4) for c, r in dropped.items())
    unverified = {d.id for d in MinHashDedup(verify="none")(docs) if not d.keep}
    assert len(unverified & above) < len(above)


def test_exact_verification_joins_no_pair_below_the_threshold_however_loose_the_bands():
    docs, _ = planted_corpus(30, seed=2)  # 200-word random originals: J between them ≈ 0
    near = [("x", "alpha beta gamma delta epsilon zeta eta theta iota kappa"),
            ("y", "alpha beta gamma delta epsilon zeta eta theta iota lambda")]  # J = 5/7
    loose = {"bands": 64, "rows": 1}  # any shared shingle makes a candidate
    assert not any(not d.keep for d in MinHashDedup(**loose)(docs[:30] + near))
    assert [d.id for d in MinHashDedup(verify="none", **loose)(near) if not d.keep] == ["y"]


def test_streaming_batches_and_survivor_policy():
    docs, _ = planted_corpus(30, seed=1)
    whole = list(MinHashDedup(batch_size=1000)(docs))
    assert list(MinHashDedup(batch_size=7)(iter(docs))) == whole
    docs = [("short", "alpha beta gamma delta epsilon zeta"), ("long", "Alpha beta gamma delta "
            "epsilon zeta!!!")]
    first = list(MinHashDedup(survivor="first")(docs))
    longest = list(MinHashDedup(survivor="longest")(docs))
    assert [d.keep for d in first] == [True, False]
    assert [d.keep for d in longest] == [False, True]
    assert longest[0].reason["survivor"] == "long"
    assert list(MinHashDedup()([])) == []


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"threshold": 1.5}, "threshold must be in"),
        ({"num_perm": 0}, "num_perm must be >= 1"),
        ({"ngram": 0}, "ngram must be >= 1"),
        ({"bands": 200}, "bands must be in 1..num_perm=128"),
        ({"survivor": "middle"}, "survivor must be 'first' or 'longest'"),
        ({"verify": "exakt"}, "verify must be one of exact, estimate, none.*did you mean 'exact'"),
        ({"verify": False}, "YAML reads yes/no/on/off as booleans"),
        ({"rows": 4}, "rows needs bands"),
        ({"bands": 16, "rows": 9}, "bands·rows <= num_perm=128"),
        ({"treshold": 0.8}, "unknown option 'treshold'"),
    ],
)
def test_bad_options_are_user_errors(options, match):
    with pytest.raises(UserError, match=match):
        DEDUPERS.build({"name": "minhash", **options})


@pytest.mark.slow
def test_minhash_on_ray_equals_the_local_one():
    """issue 17 item 2: signatures in Ray tasks and candidate pairs from a band-key shuffle give
    the local decisions (clusters, survivors, Jaccard), big buckets (star rule) included."""
    import random

    from llm4all.curate.dedup.minhash import MinHashDedup
    from llm4all.curate.engine import connect_ray

    rng = random.Random(0)
    words = [f"w{i}" for i in range(400)]
    base = [" ".join(rng.choices(words, k=120)) for _ in range(60)]
    texts = list(base)
    for i, t in enumerate(base[:20]):  # near copies: a few words changed
        toks = t.split()
        for j in rng.sample(range(len(toks)), 3 + i % 5):
            toks[j] = rng.choice(words)
        texts.append(" ".join(toks))
    texts += [base[0]] * 40  # one bucket of > 32 members in every band
    ids = [f"d{i}" for i in range(len(texts))]
    ray = connect_ray(2)
    for options in ({"verify": "exact"}, {"verify": "estimate", "survivor": "longest"},
                    {"verify": "none", "threshold": 0.7}):
        dedup = MinHashDedup(batch_size=16, **options)
        local = list(dedup(zip(ids, texts, strict=True)))
        assert dedup.on_ray(ray, ids, texts, {}) == local, options
        assert sum(not d.keep for d in local) >= 40


@pytest.mark.slow
def test_connected_components_on_ray_equal_scipy_on_chains_stars_and_random_graphs():
    """issue 17 item 2: the distributed pass (hooking + pointer jumping) labels every node with
    its component's smallest node, in node order given by ``position``, like scipy's union-find."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from llm4all.curate.dedup.ray_minhash import components_on_ray
    from llm4all.curate.engine import connect_ray

    ray = connect_ray(2)
    rng = np.random.default_rng(0)
    n = 300
    chain = np.stack([np.arange(100, 139), np.arange(101, 140)], axis=1)[rng.permutation(39)]
    star = np.stack([np.full(20, 250), np.arange(200, 220)], axis=1)
    noise = rng.integers(0, 100, (60, 2))
    edges = np.concatenate([chain, star, noise])
    position = rng.permutation(n)  # document i is node position[i]
    got = components_on_ray(ray, [ray.put(part) for part in np.array_split(edges, 3)], position)
    _, label = connected_components(coo_matrix((np.ones(len(edges)), (position[edges[:, 0]],
                                                position[edges[:, 1]])), shape=(n, n)), directed=False)
    smallest = np.full(label.max() + 1, n)
    np.minimum.at(smallest, label, np.arange(n))
    np.testing.assert_array_equal(got, smallest[label])
    assert len(np.unique(got)) == label.max() + 1


def test_signature_spill_reads_back_the_signatures_and_keeps_their_band_keys():
    """The local MinHash spills signatures to disk batch by batch and keeps only band keys:
    what it maps back and the keys equal the in-memory signatures' (and their pairs)."""
    from llm4all.curate.dedup.minhash import candidate_pairs, pairs_from_keys
    from llm4all.curate.dedup.pairs import SignatureSpill, band_keys

    rng = np.random.default_rng(3)
    sig = rng.integers(0, 5, (40, 12), dtype=np.uint32)  # few values: many shared bands
    with SignatureSpill(12, 4, 3) as spill:
        assert spill.array().shape == (0, 12) and spill.keys().shape == (0, 4)
        for part in np.array_split(sig, [7, 7, 25]):  # an empty batch too
            spill.add(part)
        rows = spill.array()
        np.testing.assert_array_equal(rows, sig)
        index = np.array([39, 0, 7, 7, 21])  # rows read back by index, repeated, any order
        np.testing.assert_array_equal(rows[index], sig[index])
        np.testing.assert_array_equal(rows[5], sig[5])
        with pytest.raises(IndexError):
            rows[np.array([40])]
        np.testing.assert_array_equal(rows[3:9], sig[3:9])  # a bad index left no map behind
        np.testing.assert_array_equal(spill.keys(), band_keys(sig, 4, 3))
        pairs = pairs_from_keys(spill.keys())
    assert len(pairs) and np.array_equal(pairs, candidate_pairs(sig, 4, 3))
