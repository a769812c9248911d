"""Hash shuffles in plain Ray tasks (issue 17 item 2): the partitioning, and the reduce
functions of exact dedup and MinHash against the local rules, without a Ray instance (the
end-to-end equality on Ray is in test_dedup_exact.py and test_dedup_minhash.py)."""

import numpy as np

from llm4all.curate.dedup.minhash import _ALL_PAIRS_MAX, pairs_from_keys
from llm4all.curate.dedup.ray_exact import later_copies
from llm4all.curate.dedup.ray_minhash import bucket_pairs, shared_band_rows
from llm4all.curate.dedup.ray_shuffle import concat, partition_of, reduce_on_ray, split


class InlineRay:
    """Enough of the ``ray`` module for ``reduce_on_ray``: tasks run at ``.remote``, in order."""

    def remote(self, num_returns: int = 1):
        def wrap(fn):
            class Task:
                @staticmethod
                def remote(*args):
                    out = fn(*args)
                    assert num_returns == 1 or len(out) == num_returns
                    return out
            return Task
        return wrap


def test_partition_of_is_a_function_of_the_key_and_spreads_counters_evenly():
    key = np.arange(100_000, dtype=np.int64)
    part = partition_of([key], 8)
    assert part.min() == 0 and part.max() == 7
    np.testing.assert_array_equal(part, partition_of([key.copy()], 8))
    counts = np.bincount(part, minlength=8)
    assert counts.min() > 0.95 * 100_000 / 8, counts  # consecutive integers, spread like hashes
    pairs = partition_of([key % 300, key // 300], 5)  # two columns: both count
    assert len(np.unique(pairs[key % 300 == 7])) == 5 and len(np.unique(pairs[key // 300 == 7])) == 5
    unsigned = np.array([2**64 - 1, 2**63, 5], np.uint64)
    np.testing.assert_array_equal(partition_of([unsigned], 3), partition_of([unsigned.view(np.int64)], 3))


def test_split_keeps_every_row_once_in_input_order_and_a_key_in_one_partition():
    rng = np.random.default_rng(0)
    key = rng.integers(0, 50, 1000)
    rows = {"key": key, "pos": np.arange(1000)}
    parts = split(rows, [key], 4)
    assert len(parts) == 4
    for p in parts:
        assert np.all(np.diff(p["pos"]) > 0)  # input order
    assert sorted(concat(parts)["pos"].tolist()) == list(range(1000))
    assert sum(len(set(p["key"].tolist()) & set(q["key"].tolist()))
               for i, p in enumerate(parts) for q in parts[i + 1:]) == 0
    empty = split({"key": np.zeros(0, np.int64)}, [np.zeros(0, np.int64)], 3)
    assert [len(p["key"]) for p in empty] == [0, 0, 0]


def test_later_copies_name_the_first_position_of_their_digest():
    rng = np.random.default_rng(1)
    digest = rng.integers(0, 40, (500, 2)).astype(np.uint64)  # many repeats
    rows = {"hi": digest[:, 0], "lo": digest[:, 1], "pos": np.arange(500)}
    survivor = np.arange(500)
    for pos, first in (later_copies(p) for p in split(rows, [rows["hi"]], 3)):
        survivor[pos] = first
    first_seen: dict[tuple, int] = {}
    expected = [first_seen.setdefault(tuple(d), i) for i, d in enumerate(digest.tolist())]
    np.testing.assert_array_equal(survivor, expected)
    pos, first = later_copies({"hi": np.zeros(0, np.uint64), "lo": np.zeros(0, np.uint64),
                               "pos": np.zeros(0, np.int64)})
    assert len(pos) == len(first) == 0


def test_bucket_pairs_through_two_shuffles_equal_the_local_candidate_pairs():
    """Buckets of every size, a bucket of more than 32 members (the star rule) included, split
    over partitions: the unique pairs equal ``pairs_from_keys``'s."""
    rng = np.random.default_rng(2)
    keys = rng.integers(0, 60, (400, 6)).astype(np.uint64)  # 6 bands, buckets of ~7
    keys[rng.choice(400, 45, replace=False), 2] = 12345  # one bucket of 45 in band 2
    expected = pairs_from_keys(keys)
    table = shared_band_rows(keys)
    parts = 3
    ray = InlineRay()
    buckets = split(table, [table["band"], table["key"]], parts)
    candidates = reduce_on_ray(ray, [buckets], bucket_pairs, _ALL_PAIRS_MAX, parts, returns=parts)
    unique = reduce_on_ray(ray, candidates, lambda rows: np.unique(rows["pair"], axis=0))
    got = np.concatenate(unique)
    assert len(got) == len(np.unique(got, axis=0))  # each pair in one partition only
    np.testing.assert_array_equal(got[np.lexsort((got[:, 1], got[:, 0]))], expected)
    assert len(expected) > 45 * 31 // 2
