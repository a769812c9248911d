"""Exact Jaccard of candidate pairs on their shingle sets, from a spill file of shingle hashes.

MinHash + LSH (``lsh.py``) proposes candidate pairs; their MinHash estimate of the Jaccard
similarity has standard deviation √(J(1−J)/num_perm) (0.035 at J = 0.8, 128 permutations),
too coarse to decide "≥ 0.8" pair by pair. Computing the exact Jaccard |A ∩ B| / |A ∪ B| of
the two documents' shingle sets costs O(|A| + |B|) per pair — cheap for the few candidate
pairs, impossible for all n² pairs — and turns the LSH step into a pure recall device: a
looser banding that misses almost no pair at the threshold, with every join checked exactly.
The same check follows LSH in the CodeParrot near-deduplication script (Hugging Face
``transformers`` examples/research_projects/codeparrot, ``find_extremes``: exact Jaccard of
token sets inside each LSH cluster), its BigCode descendant (bigcode-project/bigcode-dataset,
``near_deduplication``) and text-dedup's false-positive check (C. Mou).

The sets are the 32-bit shingle hashes of ``minhash.shingle_hashes``, the very sets MinHash
estimates, so "exact" is exact up to 32-bit hash collisions (≈ |A|·|B| / 2³², 10⁻⁴ for two
1,000-shingle documents). ``ShingleStore`` spills them to an unnamed temporary file (4 bytes
per shingle, ≈ 0.7× the text's size on disk, in ``$TMPDIR``) and maps it back read-only once
every document is in, so RAM stays at the signatures' ``num_perm × 4`` bytes per document
plus 8 bytes of shingle count; only candidate documents' pages are read back.
"""

from __future__ import annotations

import tempfile

import numpy as np

_CHUNK = 1 << 22  # shingles of the pairs verified together: ~100 MiB of uint64 work arrays
_LOW = np.uint64(0xFFFFFFFF)


class ShingleStore:
    """Shingle hashes of every document in input order, on disk; ``close`` maps them back."""

    def __init__(self):
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 -- closed by close() / __exit__
        self._counts: list[np.ndarray] = [np.zeros(0, np.int64)]

    def add(self, hashes: np.ndarray, counts: np.ndarray) -> None:
        """Append a batch: (T,) uint32 hashes back to back, (n_docs,) shingles per document."""
        self._file.write(np.ascontiguousarray(hashes, np.uint32).tobytes())
        self._counts.append(np.asarray(counts, np.int64))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """((T,) uint32 hashes, read-only memory map; (n_docs,) int64 shingles per document)."""
        self._file.flush()
        counts = np.concatenate(self._counts)
        total = int(counts.sum())
        if total == 0:
            return np.zeros(0, np.uint32), counts
        return np.memmap(self._file, np.uint32, mode="r", shape=(total,)), counts

    def close(self) -> None:
        self._file.close()  # the OS removes an unnamed temporary file when it is closed

    def __enter__(self) -> ShingleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _gather(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """values[starts[k] : starts[k] + lengths[k]] for every k, back to back."""
    offset = np.cumsum(lengths) - lengths
    index = np.repeat(starts - offset, lengths) + np.arange(int(lengths.sum()))
    return np.asarray(values[index], np.uint64)


def set_jaccard(pairs: np.ndarray, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(m,) exact Jaccard |A ∩ B| / |A ∪ B| of the shingle sets of each pair (i, j).

    ``values`` holds every document's (T,) shingle hashes back to back (repeats allowed:
    they are sets here), ``counts`` (n_docs,) how many belong to each document. Pairs go in
    chunks of about ``_CHUNK`` shingles; in each, the key pair·2³³ + side·2³² + hash is made
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
        hi = max(int(np.searchsorted(work, base + _CHUNK, side="right")), lo + 1)
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
