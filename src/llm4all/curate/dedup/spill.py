"""What near-duplicate detection keeps on disk rather than in the driver's memory.

``ShingleStore`` appends every document's shingle hashes to an unnamed temporary file batch by
batch (exact verification needs them), and ``ShingleFile`` reads a document's run back with
``os.pread`` when a pair is verified; nothing is mapped, so the pages of the pairs verified so
far do not stay in the process (measured: the local driver's peak on the 4x benchmark corpus
311 -> 290 MiB, MinHash 1.22 s instead of 1.6-1.85 s; docs/benchmarks.md).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np


class TempSpill:
    """An unnamed temporary file that batches are appended to (the OS removes it when it is
    closed, or when the process ends)."""

    def __init__(self):
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 -- closed by close() / __exit__

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShingleFile:
    """The (T,) uint32 shingle hashes of a ``ShingleStore``, read with ``os.pread`` one document's
    run at a time, not mapped: verification holds its chunk's shingles (``_PAIR_CHUNK``), and
    the pages of the pairs verified so far do not pile up in the process, whatever the corpus."""

    def __init__(self, fd: int, total: int):
        self.fd, self.total = fd, total

    def __len__(self) -> int:
        return self.total

    def runs(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """hashes[starts[k] : starts[k] + lengths[k]] for every k, back to back, as uint64."""
        out = np.empty(int(np.sum(lengths)), np.uint32)
        at = 0
        for start, n in zip(np.asarray(starts).tolist(), np.asarray(lengths).tolist(), strict=True):
            if n:
                out[at:at + n] = np.frombuffer(os.pread(self.fd, 4 * n, 4 * start), np.uint32)
                at += n
        return out.astype(np.uint64)


class ShingleStore(TempSpill):
    """Shingle hashes of every document in input order, on disk; ``arrays`` reads them back."""

    def __init__(self):
        super().__init__()
        self._counts: list[np.ndarray] = [np.zeros(0, np.int64)]

    def add(self, hashes: np.ndarray, counts: np.ndarray) -> None:
        """Append a batch: (T,) uint32 hashes back to back, (n_docs,) shingles per document."""
        self._file.write(np.ascontiguousarray(hashes, np.uint32).tobytes())
        self._counts.append(np.asarray(counts, np.int64))

    def arrays(self) -> tuple[ShingleFile, np.ndarray]:
        """((T,) uint32 hashes, read from the file a run at a time; (n_docs,) int64 shingles per
        document)."""
        self._file.flush()
        counts = np.concatenate(self._counts)
        return ShingleFile(self._file.fileno(), int(counts.sum())), counts
