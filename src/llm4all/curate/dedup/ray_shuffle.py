"""Hash shuffles in plain Ray tasks: the rows of a key meet in one task, whatever produced them.

The dedup steps on Ray group rows by a key: exact dedup the positions of one digest, MinHash the
documents of one (band, bucket), then the copies of one candidate pair from different bands.
This is Ray's shuffle pattern (Ray Core's "simple shuffle"): each map output is split into P
partitions by a hash of the key (``split``), and reduce task k concatenates the k-th
partition of every map output and applies its function (``reduce_on_ray``); a reduce function
can split its own output again (``returns=P``) for a second shuffle, as MinHash does from
buckets to pairs. Rows of one key always land in one partition, so a reduce function sees all
of them.

Why not Ray Data's ``groupby``: each dataset it runs plans and starts a streaming executor,
0.5 s before the first row moves (0.85 s to group the ~200 repeated digests of the 4x
benchmark, against 0.68 s to hash its 18k documents), and MinHash ran one per
connected-components round. These tasks start on the warm workers of the run in milliseconds;
the rows and work per partition are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from llm4all.curate.dedup.shingles import fmix64

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2⁶⁴/φ: spreads consecutive integers apart


def partition_of(key: Sequence[np.ndarray], parts: int) -> np.ndarray:
    """Each row's partition in [0, parts): the key's columns (int64 or uint64) combined and
    mixed by MurmurHash3's 64-bit finaliser (Appleby 2011), so positions and counters spread
    as evenly as hashes do."""
    h = np.zeros(len(key[0]), np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps mod 2⁶⁴, as meant
        for column in key:
            h ^= np.asarray(column).astype(np.uint64, copy=False)
            h *= _GOLDEN
            h ^= h >> np.uint64(33)
        fmix64(h)
    return (h % np.uint64(parts)).astype(np.int64)


def split(rows: dict[str, np.ndarray], key: Sequence[np.ndarray], parts: int) -> list[dict[str, np.ndarray]]:
    """``rows`` (equal-length columns) as ``parts`` partitions by ``partition_of(key)``; each
    partition keeps its rows in their input order."""
    part = partition_of(key, parts)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(parts + 1))
    return [{c: v[order[bounds[k]:bounds[k + 1]]] for c, v in rows.items()} for k in range(parts)]


def concat(pieces: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The rows of several partitions (same columns) as one."""
    return {c: np.concatenate([p[c] for p in pieces]) for c in pieces[0]}


def _reduce(fn: Callable[..., Any], args: tuple, *pieces: dict[str, np.ndarray]) -> Any:
    """Ray task: ``fn(rows, *args)`` on one partition's rows (its pieces from every map output)."""
    return fn(concat(pieces), *args)


def reduce_on_ray(ray, maps: Sequence[Sequence[Any]], fn: Callable[..., Any], *args: Any,
                  returns: int = 1) -> list:
    """For each partition k, a Ray task computing ``fn(rows_k, *args)``, where ``rows_k`` is the
    k-th partition of every map output in ``maps`` (each a list of P partitions: dicts of
    columns, or references to them); returns the tasks' references (a list of ``returns`` each
    when ``returns`` > 1), in partition order. Ray fetches each task's pieces to its worker;
    the driver holds references only."""
    task = ray.remote(num_returns=returns)(_reduce)
    parts = len(maps[0])
    return [task.remote(fn, args, *[m[k] for m in maps]) for k in range(parts)]
