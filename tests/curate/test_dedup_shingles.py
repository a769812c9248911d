"""Shingle hashing: normalisation (hand-written cases, ASCII fast path == general path),
shingle hashes and MinHash signatures bit-for-bit against a pure-Python reference, Jaccard
estimates against exact Jaccard, exact set Jaccard against Python sets, the spill store."""

from __future__ import annotations

import random

import numpy as np
import pytest

from llm4all.curate.dedup import shingles as sh
from llm4all.curate.dedup.shingles import normalize, normalize_unicode
from llm4all.curate.dedup.spill import ShingleStore
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
    polys = [sum(c * pow(sh._P, k, M64) for k, c in enumerate(g.encode())) % M64 for g in grams]
    return [fmix64(p) >> 32 for p in polys]


def reference_signature(text: str, num_perm: int, n: int, seed: int) -> list[int]:
    a, b = sh.permutations(num_perm, seed)
    xs = reference_shingles(text, n)
    return [min(((int(ak) * x + int(bk)) % M64) >> 32 for x in xs)
            for ak, bk in zip(a, b, strict=True)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello,   World!", "hello world"),
        ("  don't\tstop\n\nme-now  ", "don t stop me now"),
        ("snake_case stays; 3.14 splits", "snake_case stays 3 14 splits"),
        # NFKC: full-width letters, ideographic space, ligature
        ("Ｆｕｌｌ\u3000ｗｉｄｔｈ ﬁne", "full width fine"),
        ("Café — Ünïcode «quotes»", "café ünïcode quotes"),
        ("$5 + 7% = ???", "5 7"),
        ("", ""),
        ("...!!!", ""),
    ],
)
def test_normalize_hand_cases(text, expected):
    assert normalize(text) == expected


def test_ascii_fast_path_equals_general_path_for_every_ascii_character():
    for i in range(128):
        c = chr(i)
        for text in (f"Ab{c}cD {c}x", f"{c}{c}q{c}", c):
            assert normalize(text) == normalize_unicode(text), repr(text)


def test_general_path_equals_its_definition_on_any_unicode():
    """``normalize_unicode`` (the non-ASCII runs through the Unicode pattern, the rest as bytes)
    against its definition: NFKC, lowercase, ``[^\\w\\s]+`` to a space, a split on Unicode
    whitespace; text from every plane, lone surrogates included."""
    import unicodedata

    from llm4all.curate.dedup.shingles import NON_WORD

    rng = random.Random(1)
    pool = [chr(c) for c in range(0x110000)]
    mixed = "ab XY_,.!\t\n\x1c\x85\xa0\u1680\u2028\u3000é\u0301ﬁ—’Kİß！"
    for _ in range(300):
        text = "".join(rng.choice(pool) if rng.random() < 0.3 else rng.choice(mixed)
                       for _ in range(rng.randint(0, 60)))
        expected = " ".join(NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).split())
        assert normalize_unicode(text) == expected, repr(text)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_shingle_hashes_match_reference(n):
    with np.errstate(over="ignore"):
        got, counts = sh.shingle_hashes(TEXTS, n)
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
    data, offsets = sh.normalized_bytes(texts)
    assert (data[offsets[1:] - 1] == 10).all() and not ((data < 32) & (data != 10)).any()
    for i, text in enumerate(texts):
        words = bytes(data[offsets[i] : offsets[i + 1] - 1]).decode().split(" ")
        assert [w for w in words if w] == normalize(text).split(), repr(text)


def test_powers_are_the_powers_of_the_base_mod_2_64(monkeypatch):
    monkeypatch.setattr(sh, "_POWERS", (np.ones(1, np.uint64), np.ones(1, np.uint64)))
    monkeypatch.setattr(sh, "_POWER_BLOCK", 8)  # several blocks for 21 powers
    up, down = sh._powers(21)
    inverse = pow(sh._P, -1, M64)
    assert up[:21].tolist() == [pow(sh._P, k, M64) for k in range(21)]
    assert down[:21].tolist() == [pow(inverse, k, M64) for k in range(21)]


def test_signatures_match_reference_and_are_batch_independent():
    sig = sh.minhash_signatures(TEXTS, num_perm=16, ngram=3, seed=7)
    assert sig.dtype == np.uint32 and sig.shape == (len(TEXTS), 16)
    for row, text in zip(sig, TEXTS, strict=True):
        assert row.tolist() == reference_signature(text, 16, 3, 7)
    alone = np.concatenate([sh.minhash_signatures([t], 16, 3, 7) for t in reversed(TEXTS)])
    assert np.array_equal(alone[::-1], sig)


def test_long_documents_and_small_sub_batches_match_reference(monkeypatch):
    monkeypatch.setattr(sh, "_CHUNK", 8)  # force the one-document-longer-than-a-chunk path
    text = " ".join(f"w{i}" for i in range(40))
    sig = sh.minhash_signatures([text, "short one", text], num_perm=8, ngram=2, seed=3)
    assert sig[0].tolist() == reference_signature(text, 8, 2, 3)
    assert sig[1].tolist() == reference_signature("short one", 8, 2, 3)
    assert np.array_equal(sig[0], sig[2])
    monkeypatch.setattr(sh, "BATCH_CHARS", 12)  # one or two texts per normalised sub-batch
    assert np.array_equal(sh.minhash_signatures(TEXTS, 16, 3, 7),
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
        sig = sh.minhash_signatures([a, b], num_perm=256)
        errors.append(float(sh.jaccard(sig[0], sig[1])) - exact)
    errors = np.array(errors)
    # one estimate has standard deviation sqrt(J(1-J)/256) <= 0.031
    assert np.abs(errors).max() < 0.11
    assert abs(errors.mean()) < 0.02


@pytest.mark.parametrize("chunk", [1 << 22, 7])
def test_set_jaccard_matches_python_sets(monkeypatch, chunk):
    monkeypatch.setattr(sh, "_PAIR_CHUNK", chunk)  # 7: one or two pairs per chunk
    rng = np.random.default_rng(0)
    sets = [rng.integers(0, 40, size=rng.integers(1, 30)).astype(np.uint32) for _ in range(12)]
    values, counts = np.concatenate(sets), np.array([len(x) for x in sets])
    pairs = np.array([(i, j) for i in range(12) for j in range(12)])
    want = [len(set(sets[i]) & set(sets[j])) / len(set(sets[i]) | set(sets[j])) for i, j in pairs]
    assert sh.set_jaccard(pairs, values, counts).tolist() == pytest.approx(want, abs=0)
    assert sh.set_jaccard(np.zeros((0, 2), np.int64), values, counts).shape == (0,)


def test_shingle_store_round_trips_batches_through_its_file():
    with ShingleStore() as store:
        store.add(np.array([5, 1, 5], np.uint32), np.array([1, 2]))
        store.add(np.array([], np.uint32), np.array([], np.int64))
        store.add(np.array([9], np.uint32), np.array([1]))
        values, counts = store.arrays()
        assert values.runs(np.array([0]), np.array([4])).tolist() == [5, 1, 5, 9]
        assert values.runs(np.array([3, 1]), np.array([1, 2])).tolist() == [9, 1, 5]
        assert counts.tolist() == [1, 2, 1]
        assert sh.set_jaccard(np.array([[0, 1]]), values, counts).tolist() == [0.5]
    with ShingleStore() as store:
        values, counts = store.arrays()
        assert len(values) == 0 and len(counts) == 0


def test_bad_ngram_is_a_user_error_in_the_pure_function():
    with pytest.raises(UserError, match="ngram must be >= 1"):
        sh.minhash_signatures(["text"], ngram=0)
