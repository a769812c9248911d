"""MinHash + LSH: parity with a pure-Python reference, Jaccard estimates against exact
Jaccard, LSH parameters against datasketch and a brute-force search, exact set Jaccard against
Python sets, union-find clusters, planted near-copies found (every one at or above the
threshold, none below it), survivor policy, streaming in batches, bad input."""

from __future__ import annotations

import random

import numpy as np
import pytest

from llm4all.catalog import DEDUPERS
from llm4all.curate.dedup import lsh
from llm4all.curate.dedup import minhash as mh
from llm4all.curate.dedup import verify as vf
from llm4all.curate.dedup.exact import normalize
from llm4all.curate.dedup.lsh import (
    MinHashDedup,
    candidate_pairs,
    lsh_params,
    near_duplicates,
    recall_params,
)
from llm4all.errors import UserError

M64 = 2**64
TEXTS = [
    "  Hello,  World! this is   a test of the shingles here  ",
    "",
    "two words",
    "Ünïcode café — naïve façade, ﬁne ｆｕｌｌ width text here ok",
    "a b c d e",
    "\tA\n\nB c\x1c d e f",
]


def fmix64(h: int) -> int:
    h ^= h >> 33
    h = h * 0xFF51AFD7ED558CCD % M64
    h ^= h >> 33
    h = h * 0xC4CEB9FE1A85EC53 % M64
    return h ^ (h >> 33)


def reference_shingles(text: str, n: int) -> list[int]:
    """The module's definition, one Python integer at a time."""
    words = normalize(text).split()
    if not words:
        return [0]
    grams = [" ".join(words[i : i + n]) for i in range(max(len(words) - n + 1, 1))]
    polys = [sum(c * pow(mh._P, k, M64) for k, c in enumerate(g.encode())) % M64 for g in grams]
    return [fmix64(p) >> 32 for p in polys]


def reference_signature(text: str, num_perm: int, n: int, seed: int) -> list[int]:
    a, b = mh.permutations(num_perm, seed)
    xs = reference_shingles(text, n)
    return [min(((int(ak) * x + int(bk)) % M64) >> 32 for x in xs)
            for ak, bk in zip(a, b, strict=True)]


@pytest.mark.parametrize("n", [1, 3, 5])
def test_shingle_hashes_match_reference(n):
    with np.errstate(over="ignore"):
        got, counts = mh.shingle_hashes(TEXTS, n)
    assert got.tolist() == [x for t in TEXTS for x in reference_shingles(t, n)]
    assert counts.tolist() == [len(reference_shingles(t, n)) for t in TEXTS]


def test_normalized_bytes_give_the_words_of_normalize_on_any_unicode():
    """The numpy UTF-8 path (code points spaced out by normalize's own pattern) against
    ``normalize(text).split()`` on text drawn from every Unicode plane, with Unicode
    whitespace (NEL, line separator, ideographic space), combining marks and ligatures."""
    rng = random.Random(0)
    pool = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    mixed = "ab XY,.!\t\n\x85\u2028\u3000é\u0301ﬁ—’"
    texts = ["".join(rng.choice(pool) if rng.random() < 0.5 else rng.choice(mixed) for _ in range(400))
             for _ in range(60)] + TEXTS
    data, offsets = mh.normalized_bytes(texts)
    assert (data[offsets[1:] - 1] == 10).all() and not ((data < 32) & (data != 10)).any()
    for i, text in enumerate(texts):
        words = bytes(data[offsets[i] : offsets[i + 1] - 1]).decode().split(" ")
        assert [w for w in words if w] == normalize(text).split(), repr(text)


def test_powers_are_the_powers_of_the_base_mod_2_64(monkeypatch):
    monkeypatch.setattr(mh, "_POWERS", (np.ones(1, np.uint64), np.ones(1, np.uint64)))
    monkeypatch.setattr(mh, "_POWER_BLOCK", 8)  # several blocks for 21 powers
    up, down = mh._powers(21)
    inverse = pow(mh._P, -1, M64)
    assert up[:21].tolist() == [pow(mh._P, k, M64) for k in range(21)]
    assert down[:21].tolist() == [pow(inverse, k, M64) for k in range(21)]


def test_signatures_match_reference_and_are_batch_independent():
    sig = mh.minhash_signatures(TEXTS, num_perm=16, ngram=3, seed=7)
    assert sig.dtype == np.uint32 and sig.shape == (len(TEXTS), 16)
    for row, text in zip(sig, TEXTS, strict=True):
        assert row.tolist() == reference_signature(text, 16, 3, 7)
    alone = np.concatenate([mh.minhash_signatures([t], 16, 3, 7) for t in reversed(TEXTS)])
    assert np.array_equal(alone[::-1], sig)


def test_long_documents_and_small_sub_batches_match_reference(monkeypatch):
    monkeypatch.setattr(mh, "_CHUNK", 8)  # force the one-document-longer-than-a-chunk path
    text = " ".join(f"w{i}" for i in range(40))
    sig = mh.minhash_signatures([text, "short one", text], num_perm=8, ngram=2, seed=3)
    assert sig[0].tolist() == reference_signature(text, 8, 2, 3)
    assert sig[1].tolist() == reference_signature("short one", 8, 2, 3)
    assert np.array_equal(sig[0], sig[2])
    monkeypatch.setattr(mh, "_BATCH_CHARS", 12)  # one or two texts per normalised sub-batch
    assert np.array_equal(mh.minhash_signatures(TEXTS, 16, 3, 7),
                          np.array([reference_signature(t, 16, 3, 7) for t in TEXTS]))


def test_estimated_jaccard_tracks_exact_jaccard():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    errors = []
    for _ in range(40):
        base = [rng.choice(vocab) for _ in range(300)]
        other = [w if rng.random() > rng.random() * 0.3 else rng.choice(vocab) for w in base]
        a, b = " ".join(base), " ".join(other)
        sa = {" ".join(base[i : i + 5]) for i in range(296)}
        sb = {" ".join(other[i : i + 5]) for i in range(296)}
        exact = len(sa & sb) / len(sa | sb)
        sig = mh.minhash_signatures([a, b], num_perm=256)
        errors.append(float(mh.jaccard(sig[0], sig[1])) - exact)
    errors = np.array(errors)
    # one estimate has standard deviation sqrt(J(1-J)/256) <= 0.031
    assert np.abs(errors).max() < 0.11
    assert abs(errors.mean()) < 0.02


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
        area = lsh._fp_area(b, r, threshold)
        rivals = [(b2, r2) for b2 in range(1, num_perm + 1) for r2 in range(1, num_perm // b2 + 1)
                  if (1 - threshold**r2) ** b2 <= 0.01]
        assert all(lsh._fp_area(b2, r2, threshold) >= area - 1e-12 for b2, r2 in rivals)
    # no banding of 4 permutations reaches 1% at t = 0.3: the smallest miss, 4 bands of 1 row
    assert recall_params(0.3, 4) == (4, 1)


@pytest.mark.parametrize("chunk", [1 << 22, 7])
def test_set_jaccard_matches_python_sets(monkeypatch, chunk):
    monkeypatch.setattr(vf, "_CHUNK", chunk)  # 7: one or two pairs per chunk
    rng = np.random.default_rng(0)
    sets = [rng.integers(0, 40, size=rng.integers(1, 30)).astype(np.uint32) for _ in range(12)]
    values, counts = np.concatenate(sets), np.array([len(x) for x in sets])
    pairs = np.array([(i, j) for i in range(12) for j in range(12)])
    want = [len(set(sets[i]) & set(sets[j])) / len(set(sets[i]) | set(sets[j])) for i, j in pairs]
    assert vf.set_jaccard(pairs, values, counts).tolist() == pytest.approx(want, abs=0)
    assert vf.set_jaccard(np.zeros((0, 2), np.int64), values, counts).shape == (0,)


def test_shingle_store_round_trips_batches_through_its_file():
    with vf.ShingleStore() as store:
        store.add(np.array([5, 1, 5], np.uint32), np.array([1, 2]))
        store.add(np.array([], np.uint32), np.array([], np.int64))
        store.add(np.array([9], np.uint32), np.array([1]))
        values, counts = store.arrays()
        assert values.tolist() == [5, 1, 5, 9] and counts.tolist() == [1, 2, 1]
        assert vf.set_jaccard(np.array([[0, 1]]), values, counts).tolist() == [0.5]
    with vf.ShingleStore() as store:
        values, counts = store.arrays()
        assert len(values) == 0 and len(counts) == 0


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


def test_bad_ngram_is_a_user_error_in_the_pure_function():
    with pytest.raises(UserError, match="ngram must be >= 1"):
        mh.minhash_signatures(["text"], ngram=0)
