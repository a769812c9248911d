"""Shingles and their hashes: the low-level numpy under exact and near-duplicate dedup.

Three things live here, each a pure function (or a small store) on whole batches:

**Normalisation** (``normalize``; ``exact.py`` hashes it, MinHash shingles it), so "exact"
and "near" duplicates are judged on the same text:

1. Unicode NFKC (compatibility composition: full-width letters, ligatures, non-breaking
   spaces become their plain forms);
2. ``str.lower()``;
3. every character that is neither a word character (Python ``re`` ``\\w``: Unicode
   letters, digits and ``_``) nor whitespace becomes a space — punctuation and symbols;
4. runs of whitespace collapse to one space, and leading/trailing whitespace goes.

So ``"Hello,   World!"`` and ``"hello world"`` normalise to the same ``"hello world"``.
ASCII text takes a fast path (one ``bytes.translate`` with a table built from the same rules,
tested equal to the general path on every ASCII character).

**MinHash signatures of word n-gram shingles.** Broder 1997, "On the resemblance and
containment of documents": for a random permutation π of the shingle universe,
P[min π(A) = min π(B)] = |A ∩ B| / |A ∪ B| (Jaccard), so the fraction of equal entries of
two signatures estimates the Jaccard similarity of two documents' shingle sets. All
deterministic across runs and machines:

1. ``normalize``d text as UTF-8 bytes, for a whole batch in numpy (``normalized_bytes``: a
   byte table for ASCII, NFKC + lowercase in Python then a vectorised UTF-8 decode otherwise);
2. each run of ``ngram`` consecutive words -> one shingle: the Karp–Rabin polynomial hash
   Σ_k c_k·P^k mod 2⁶⁴ of its bytes c_0 c_1 ... (words and the single spaces between them),
   computed for a whole batch at once from prefix sums of c_k·P^k and the inverse powers
   P^−k (P odd, so invertible mod 2⁶⁴), then avalanched by the MurmurHash3 64-bit
   finaliser and cut to its top 32 bits. A document with fewer than ``ngram`` words is one
   shingle of all its words; an empty document is the single shingle 0, so all empty
   documents are equal. (A polynomial hash mod 2⁶⁴ has engineered collisions — Thue–Morse
   strings of thousands of bytes — that 5-word shingles cannot reach; the 32-bit cut below
   dominates the collision rate);
3. ``num_perm`` permutations as multiply-add-shift hashing (Dietzfelbinger 1996; Thorup
   2015, "High Speed Hashing for Integers and Strings"):
   h_k(x) = ((a_k·x + b_k) mod 2⁶⁴) >> 32 for 32-bit x and a_k, b_k uniform 64-bit from a
   local ``numpy.random.default_rng(seed)``. The family is 2-independent, which uint64
   wrap-around computes exactly; and min_j h(x_j) = (min_j (a·x_j + b mod 2⁶⁴)) >> 32
   because the shift is monotone, so the shift is done once per signature entry. 2-independence
   is weaker than the min-wise independence MinHash assumes (Broder et al. 2000); the tests
   check the estimates against exact Jaccard similarities instead.

Collisions: 32-bit shingle hashes make two distinct shingles of a pair of 1,000-shingle
documents collide with probability ≈ 10⁶/2³² ≈ 2·10⁻⁴, which shifts a Jaccard estimate by
at most ~1/1,000; 32-bit signature values tie by chance with probability 2⁻³² per entry.
Signatures are uint32: ``num_perm × 4`` bytes per document (512 bytes at 128).

**Exact Jaccard of shingle sets** (``set_jaccard``, with the shingle hashes kept on disk by
``ShingleStore``): the check that ``minhash.py`` runs on LSH candidate pairs, whose MinHash
estimate (standard deviation √(J(1−J)/num_perm), 0.035 at J = 0.8 and 128 permutations) is
too coarse to decide "≥ 0.8" pair by pair. It costs O(|A| + |B|) per pair — cheap for the
candidates, impossible for all n² pairs. The sets are the 32-bit shingle hashes above, the
very sets MinHash estimates, so "exact" is exact up to 32-bit collisions (≈ |A|·|B| / 2³²).
The store spills them to an unnamed temporary file (4 bytes per shingle, ≈ 0.7× the text's
size, in ``$TMPDIR``) and maps it back read-only once every document is in, so RAM holds only
the signatures; only candidate documents' pages are read back.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np

from llm4all.curate.dedup.spill import ShingleFile
from llm4all.errors import UserError

NON_WORD = re.compile(r"[^\w\s]+")
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")
_UNICODE_NON_WORD = re.compile(r"\W+")  # within a non-ASCII run: punctuation, symbols, spaces
#: byte -> byte for ASCII text: lowercase word characters, everything else (punctuation,
#: symbols, control characters, whitespace) a space; bytes >= 128 never occur in ASCII text
ASCII_TABLE = bytes(
    i if i >= 128 else 32 if NON_WORD.match(chr(i)) or chr(i).isspace() else ord(chr(i).lower())
    for i in range(256)
)

_P = 0x9E3779B97F4A7C15  # odd 64-bit base of the polynomial hash (2⁶⁴/golden ratio, Knuth)
_FMIX = (np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))
_CHUNK = 4096  # shingles per (num_perm, chunk) uint64 block hashed at once (4 MiB at 128)
BATCH_CHARS = 1 << 19  # characters normalised together: byte-level arrays stay ~20 MiB (1.2x
# faster than 4 Mi characters at a sixth of the peak: 2x benchmark corpus, 0.95 vs 1.13 s, +35 vs +228 MiB)
_POWERS = (np.ones(1, np.uint64), np.ones(1, np.uint64))  # (P^k, P^−k) for k < len, grown
_POWER_BLOCK = 4096  # powers computed as (P^4096)^j · P^i
_SPACE_OUT: dict[int, bool] = {}  # code point -> normalize turns it into a space (cached)
_PAIR_CHUNK = 1 << 20  # shingles of the pairs verified together: ~25 MiB of uint64 work arrays
_LOW = np.uint64(0xFFFFFFFF)


def normalize(text: str) -> str:
    """NFKC, lowercase, punctuation and symbols to spaces, collapsed whitespace (see module)."""
    if text.isascii():  # NFKC is the identity on ASCII
        return b" ".join(text.encode().translate(ASCII_TABLE).split()).decode()
    return normalize_unicode(text)


def text_digest(text: str, normalise: bool = True) -> bytes:
    """16-byte BLAKE2b digest of ``normalize(text)`` (or of the raw text): exact dedup's key."""
    import hashlib

    return hashlib.blake2b((normalize(text) if normalise else text).encode("utf-8"), digest_size=16).digest()


def normalize_unicode(text: str) -> str:
    """The general path of ``normalize``, for any text (``normalize`` uses it for non-ASCII).

    After NFKC and lowercasing, only the runs of non-ASCII characters go through the Unicode
    regular expression (their non-word characters, whitespace included, become spaces); the
    ASCII characters, most of them even in non-ASCII text, then go through ``ASCII_TABLE`` as
    bytes: the same result as one ``[^\\w\\s]+`` substitution and a split on Unicode whitespace
    (tested), 1.46x faster on the benchmark corpus's non-ASCII documents (2.05 -> 1.40 s).
    """
    text = _NON_ASCII_RUN.sub(_space_out, unicodedata.normalize("NFKC", text).lower())
    return b" ".join(text.encode("utf-8", "surrogatepass").translate(ASCII_TABLE).split()).decode(
        "utf-8", "surrogatepass")


def _space_out(run: re.Match) -> str:
    return _UNICODE_NON_WORD.sub(" ", run.group())


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): two (num_perm,) uint64 arrays of the multiply-add-shift family."""
    if num_perm < 1:
        raise UserError(f"minhash: num_perm must be >= 1, got {num_perm}")
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)
    return a, b


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(P^k, P^−k) mod 2⁶⁴ for k = 0..n−1, each (≥ n,) uint64.

    Blocked: P^(4096·j + i) = (P^4096)^j · P^i, two short cumulative products and one outer
    product (a cumulative product is sequential and ~20× slower per element than a multiply).
    """
    global _POWERS
    if len(_POWERS[0]) < n:
        size = max(n, 2 * len(_POWERS[0]))
        rows = -(-size // _POWER_BLOCK)

        def table(base: int) -> np.ndarray:
            small = np.full(_POWER_BLOCK, base, np.uint64)
            big = np.full(rows, pow(base, _POWER_BLOCK, 2**64), np.uint64)
            small[0] = big[0] = 1
            # uint64 products wrap mod 2⁶⁴
            return (np.cumprod(big)[:, None] * np.cumprod(small)[None, :]).reshape(-1)[:size]

        _POWERS = (table(_P), table(pow(_P, -1, 2**64)))
    return _POWERS


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (Appleby 2011), in place on a uint64 array."""
    shift, m1, m2 = _FMIX
    h ^= h >> shift
    h *= m1
    h ^= h >> shift
    h *= m2
    h ^= h >> shift
    return h


def _spaced_out(codes: np.ndarray) -> np.ndarray:
    """(k,) bool: which code points ``normalize`` turns into spaces (non-word or whitespace).

    Decided by ``normalize``'s own pattern once per distinct code point, then cached.
    """
    distinct, inverse = np.unique(codes, return_inverse=True)
    flags = [_SPACE_OUT.get(c) for c in distinct.tolist()]
    for i, c in enumerate(distinct.tolist()):
        if flags[i] is None:
            flags[i] = _SPACE_OUT[c] = bool(NON_WORD.match(chr(c))) or chr(c).isspace()
    return np.array(flags, bool)[inverse]


def normalized_bytes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(B,) uint8 of every ``normalize(text)`` + newline, back to back; (n_docs + 1,) offsets.

    ASCII text: one ``bytes.translate`` (``ASCII_TABLE``). Other text: NFKC and lowercase in
    Python, the same table on its ASCII bytes, then in numpy for the whole batch: decode the
    UTF-8 multi-byte code points, and overwrite those that ``normalize``'s pattern turns into
    spaces (punctuation, symbols, Unicode whitespace) with spaces — the regex runs once per
    distinct code point, not once per character. Runs of spaces collapse to one. Inside a
    document, words are split by single spaces (no byte < 32 is left), so a newline can only
    be a document separator. The words are exactly ``normalize(text).split()``.
    """
    parts = [(t if t.isascii() else unicodedata.normalize("NFKC", t).lower()).encode().translate(ASCII_TABLE)
             for t in texts]
    data = np.frombuffer(b"\n".join(parts) + b"\n", np.uint8).copy() if parts else np.zeros(0, np.uint8)
    lead = np.flatnonzero(data >= 0xC0)  # first byte of each multi-byte code point
    if len(lead):
        first = data[lead].astype(np.int64)
        size = 2 + (first >= 0xE0) + (first >= 0xF0)  # bytes of the code point: 2, 3 or 4
        code = first & (0x1F >> (size - 2))  # payload bits of the lead byte
        for k in (1, 2, 3):  # 6 payload bits per continuation byte; data ends with "\n"
            more = size > k
            code[more] = (code[more] << 6) | (data[lead[more] + k] & 0x3F)
        out = _spaced_out(code)
        starts, sizes = lead[out], size[out]
        offset = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        data[np.repeat(starts, sizes) + offset] = 32
    space = data == 32
    keep = ~space  # keep all but spaces after a space or at the start
    keep[1:] |= ~space[:-1]
    data = data[keep]
    return data, np.r_[0, np.flatnonzero(data == 10) + 1]


def shingle_hashes(texts: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes (as uint64) of the word ``ngram``-grams of a batch of documents.

    Returns:
        (T,) uint64 shingle hashes < 2³², documents back to back, and (n_docs,) int64
        shingles per document: max(words − ngram + 1, 1).
    """
    data, offsets = normalized_bytes(texts)  # (B,) bytes, words split by single spaces
    gap = data <= 32  # a space or a document separator
    begin = np.flatnonzero(~gap & np.r_[True, gap[:-1]])  # (W,) first byte of each word
    end = np.flatnonzero(gap & np.r_[False, ~gap[:-1]])  # (W,) one past its last byte
    words = np.diff(np.searchsorted(begin, offsets))  # (n_docs,) words per document
    up, down = _powers(len(data) + 1)
    prefix = np.zeros(len(data) + 1, np.uint64)  # prefix[i] = Σ_{k<i} c_k·P^k mod 2⁶⁴
    np.cumsum(data * up[: len(data)], out=prefix[1:])
    counts = np.maximum(words - ngram + 1, 1)
    first_word = np.cumsum(words) - words
    last_word = np.repeat(first_word + words - 1, counts)
    start = np.repeat(first_word - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
    empty = np.repeat(words == 0, counts)
    start = np.minimum(start, max(len(begin) - 1, 0))
    stop = np.maximum(np.minimum(start + ngram - 1, last_word), 0)
    if len(begin):
        lo, hi = begin[start], end[stop]
        h = (prefix[hi] - prefix[lo]) * down[lo]  # Σ_j c_{lo+j}·P^j: position-independent
    else:
        h = np.zeros(len(start), np.uint64)
    h[empty] = 0
    return fmix64(h) >> np.uint64(32), counts


def _min_hash(x: np.ndarray, a: np.ndarray, b: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """(num_perm,) uint64 min_j (a·x_j + b) mod 2⁶⁴ over one long document, chunk by chunk."""
    best = np.full(len(a), np.iinfo(np.uint64).max, np.uint64)
    for i in range(0, len(x), _CHUNK):
        part = x[i : i + _CHUNK]
        block = buf[:, : len(part)]
        np.multiply(a[:, None], part[None, :], out=block)
        block += b[:, None]
        np.minimum(best, block.min(axis=1), out=best)
    return best


def minhash_signatures(
    texts: Sequence[str], num_perm: int = 128, ngram: int = 5, seed: int = 1
) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures of word ``ngram``-gram shingles.

    Broder 1997 MinHash with multiply-add-shift permutations (see module docstring).
    The same (text, num_perm, ngram, seed) gives the same signature in any batch, order or run.
    """
    return signatures_and_shingles(texts, num_perm, ngram, seed)[0]


def signatures_and_shingles(
    texts: Sequence[str], num_perm: int = 128, ngram: int = 5, seed: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``minhash_signatures`` plus the shingle hashes they were taken over.

    Returns:
        (n_docs, num_perm) uint32 signatures; (T,) uint32 shingle hashes, documents back to
        back in input order (repeats kept); (n_docs,) int64 shingles per document.
    """
    if ngram < 1:
        raise UserError(f"minhash: ngram must be >= 1, got {ngram}")
    a, b = permutations(num_perm, seed)
    out = np.empty((len(texts), num_perm), np.uint32)
    hashes, counts = [np.zeros(0, np.uint32)], [np.zeros(0, np.int64)]
    buf = np.empty((num_perm, _CHUNK), np.uint64)
    size = np.cumsum([len(t) for t in texts])  # characters up to each text
    lo = 0
    while lo < len(texts):  # sub-batches of ~BATCH_CHARS bound the byte-level arrays
        hi = max(int(np.searchsorted(size, size[lo] - len(texts[lo]) + BATCH_CHARS)), lo + 1)
        with np.errstate(over="ignore"):
            x, n = shingle_hashes(texts[lo:hi], ngram)  # (T,) hashes, (hi−lo,) counts
            out[lo:hi] = _signatures(x, n, a, b, buf)
        hashes.append(x.astype(np.uint32))  # < 2³² by construction
        counts.append(n.astype(np.int64))
        lo = hi
    return out, np.concatenate(hashes), np.concatenate(counts)


def _signatures(
    x: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray, buf: np.ndarray
) -> np.ndarray:
    """(n_docs, num_perm) uint32 signatures from shingle hashes ``x``, ``counts`` per doc."""
    ends = np.cumsum(counts)
    out = np.empty((len(counts), len(a)), np.uint64)
    first = 0  # first document of the current group
    while first < len(counts):
        base = ends[first] - counts[first]  # first shingle of the group
        # the most documents whose shingles fit in one chunk (at least one document)
        last = max(int(np.searchsorted(ends, base + _CHUNK, side="right")), first + 1)
        if ends[last - 1] - base > _CHUNK:  # one document longer than a chunk
            out[first] = _min_hash(x[base : ends[first]], a, b, buf)
        else:
            block = buf[:, : ends[last - 1] - base]
            np.multiply(a[:, None], x[None, base : ends[last - 1]], out=block)
            block += b[:, None]
            starts = ends[first:last] - counts[first:last] - base
            out[first:last] = np.minimum.reduceat(block, starts, axis=1).T
        first = last
    return (out >> np.uint64(32)).astype(np.uint32)


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity: fraction of equal signature entries (last axis)."""
    return np.mean(sig_a == sig_b, axis=-1)


def _gather(values: np.ndarray | ShingleFile, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """values[starts[k] : starts[k] + lengths[k]] for every k, back to back."""
    if isinstance(values, ShingleFile):
        return values.runs(starts, lengths)
    offset = np.cumsum(lengths) - lengths
    index = np.repeat(starts - offset, lengths) + np.arange(int(lengths.sum()))
    return np.asarray(values[index], np.uint64)


def set_jaccard(pairs: np.ndarray, values: np.ndarray | ShingleFile, counts: np.ndarray) -> np.ndarray:
    """(m,) exact Jaccard |A ∩ B| / |A ∪ B| of the shingle sets of each pair (i, j).

    ``values`` holds every document's (T,) shingle hashes back to back (repeats allowed:
    they are sets here), ``counts`` (n_docs,) how many belong to each document. Pairs go in
    chunks of about ``_PAIR_CHUNK`` shingles; in each, the key pair·2³³ + side·2³² + hash is made
    unique (one set per side of each pair), then side is dropped and a sorted run of equal
    keys of length 2 is one shared shingle. Two empty sets have Jaccard 1.
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    counts = np.asarray(counts, np.int64)
    starts = np.cumsum(counts) - counts
    out = np.ones(len(pairs))
    work = np.cumsum(counts[pairs].sum(axis=1))  # shingles up to and including each pair
    lo = 0
    while lo < len(pairs):
        base = work[lo - 1] if lo else 0
        hi = max(int(np.searchsorted(work, base + _PAIR_CHUNK, side="right")), lo + 1)
        chunk = pairs[lo:hi]
        m = len(chunk)
        side = chunk.T.reshape(-1)  # (2m,) first members, then second members
        lengths = counts[side]
        owner = np.repeat(np.r_[np.arange(m) * 2, np.arange(m) * 2 + 1].astype(np.uint64), lengths)
        keys = np.sort((owner << np.uint64(32)) | _gather(values, starts[side], lengths))
        keys = keys[np.r_[True, keys[1:] != keys[:-1]]]  # one set per side (np.unique: slower)
        size = np.bincount((keys >> np.uint64(32)).astype(np.int64), minlength=2 * m)
        # drop the side bit: two sorted runs per pair, which timsort ("stable") merges
        merged = np.sort(((keys >> np.uint64(33)) << np.uint64(32)) | (keys & _LOW), kind="stable")
        shared = merged[1:][merged[1:] == merged[:-1]] >> np.uint64(32)
        inter = np.bincount(shared.astype(np.int64), minlength=m)
        union = size[0::2] + size[1::2] - inter
        out[lo:hi] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        lo = hi
    return out
