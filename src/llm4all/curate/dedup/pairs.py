"""MinHash signatures to clusters: band keys, verification, survivor order, cluster numbers.

The parts of ``minhash.near_duplicates`` that the local engine and the Ray one
(``ray_minhash.py``) share, so both join the same pairs and number the same clusters.
"""

from __future__ import annotations

import mmap

import numpy as np

from llm4all.curate.dedup.shingles import set_jaccard
from llm4all.curate.dedup.spill import TempSpill

SIGMAS = 3.0  # exact verification pre-screens the estimate at threshold − 3σ (loses ≤ 0.13% more)


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n_docs, bands) uint64: a 64-bit hash of each band's ``rows`` signature entries."""
    keys = np.zeros((len(signatures), bands), np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):  # FNV-style: key = (key ^ value) · prime, column by column
            # (a column at a time as uint64: no uint64 copy of all the signatures, 1 KiB/document)
            keys ^= signatures[:, j : bands * rows : rows].astype(np.uint64)
            keys *= np.uint64(0x100000001B3)
            keys ^= keys >> np.uint64(29)
    return keys


def verify_pairs(pairs: np.ndarray, signatures: np.ndarray, threshold: float, verify: str,
                 shingles: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """The candidate ``pairs`` joined under ``verify`` (see ``near_duplicates``), with their exact
    Jaccard under ``verify="exact"`` (zeros otherwise)."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    exact = np.zeros(len(pairs))
    if verify == "none" or not len(pairs):
        return pairs, exact
    num_perm = signatures.shape[1]
    sim = np.concatenate([  # estimated Jaccard of each pair, 64k pairs at a time
        np.mean(signatures[p[:, 0]] == signatures[p[:, 1]], axis=1)
        for p in np.array_split(pairs, -(-len(pairs) // 65536))
    ])
    slack = SIGMAS * np.sqrt(threshold * (1 - threshold) / num_perm) if verify == "exact" else 0
    pairs = pairs[sim >= threshold - slack - 1e-12]
    if verify == "exact":
        exact = set_jaccard(pairs, *shingles)
        pairs, exact = pairs[exact >= threshold - 1e-12], exact[exact >= threshold - 1e-12]
    return pairs, exact[: len(pairs)]


def bucket_member_pairs(pos: np.ndarray, head: np.ndarray, all_pairs_max: int) -> np.ndarray:
    """(m, 2) pairs of members of the same bucket, by ``minhash.candidate_pairs``'s rule: each
    member with the members up to ``all_pairs_max`` - 1 after it, and in a bucket of more than
    ``all_pairs_max`` members also its first member with each other. ``pos``: the members,
    bucket by bucket, in input order within one; ``head``: True at each bucket's first member.
    The local engine (per band) and the Ray one (per shuffle partition) both pair by it."""
    bucket = np.cumsum(head) - 1
    size = np.bincount(bucket)[bucket] if len(pos) else np.zeros(0, np.int64)
    found = [np.empty((0, 2), np.int64)]
    for d in range(1, min(int(size.max(initial=0)), all_pairs_max)):  # members d apart
        hit = np.flatnonzero(bucket[:-d] == bucket[d:])
        found.append(np.stack([pos[hit], pos[hit + d]], axis=1))
    big = (size > all_pairs_max) & ~head  # a star on the first member of each big bucket
    found.append(np.stack([pos[np.flatnonzero(head)][bucket[big]], pos[big]], axis=1))
    return np.concatenate(found)


def survivor_order(n: int, lengths: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(rank, position): documents by survivor preference (input order, or the longest first,
    ties in input order) and each document's place in it (``rank[position[i]] == i``)."""
    rank = np.arange(n) if lengths is None else np.lexsort((np.arange(n), -np.asarray(lengths)))
    position = np.empty(n, np.int64)
    position[rank] = np.arange(n)
    return rank, position


def number_clusters(survivor: np.ndarray) -> np.ndarray:
    """Cluster numbers 0, 1, ... of the clusters of ≥ 2 documents by their first member in input
    order, −1 for a document alone; ``survivor[i]`` names i's cluster."""
    n = len(survivor)
    first = np.full(n, n, np.int64)
    np.minimum.at(first, survivor, np.arange(n))
    size = np.bincount(survivor, minlength=n)[survivor]
    multi = np.unique(first[survivor][size > 1])
    return np.where(size > 1, np.searchsorted(multi, first[survivor]), -1)


class SignatureSpill(TempSpill):
    """Signatures appended batch by batch to an unnamed temporary file, their band keys kept in
    memory: the local MinHash then holds ``bands × 8`` bytes per document (what LSH buckets by)
    instead of ``num_perm × 4`` (the signatures, read back by rows for the candidate pairs)."""

    def __init__(self, num_perm: int, bands: int, rows: int):
        super().__init__()
        self.num_perm, self.bands, self.rows = num_perm, bands, rows
        self._keys = [np.zeros((0, bands), np.uint64)]
        self.n = 0

    def add(self, sig: np.ndarray) -> None:
        """Append a batch of (n_docs, num_perm) uint32 signatures."""
        self._file.write(np.ascontiguousarray(sig, np.uint32).tobytes())
        self._keys.append(band_keys(sig, self.bands, self.rows))
        self.n += len(sig)

    def keys(self) -> np.ndarray:
        """(n_docs, bands) uint64 band keys of every document, in order."""
        return np.concatenate(self._keys)

    def array(self) -> SignatureRows:
        """(n_docs, num_perm) uint32 signatures, read back by rows (``SignatureRows``)."""
        self._file.flush()
        return SignatureRows(self._file.fileno(), self.n, self.num_perm)


class SignatureRows:
    """Spilled signatures indexed like an (n_docs, num_perm) array by rows (``rows[index]``):
    each lookup maps the file, copies the rows asked for and unmaps it, so the pages touched
    by the candidate pairs verified so far do not stay in the process (they did when the
    whole file stayed mapped: +14 MiB on the 8x benchmark corpus)."""

    def __init__(self, fd: int, n: int, num_perm: int):
        self.fd, self.shape = fd, (n, num_perm)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if not self.shape[0]:
            return np.zeros(self.shape, np.uint32)[index]
        with mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ) as mapped:
            view = np.frombuffer(mapped, np.uint32).reshape(self.shape)
            try:
                return np.array(view[index])  # a copy: the map closes on return
            finally:
                del view  # even on a bad index, or the map could not close

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:].astype(dtype or np.uint32, copy=False)
