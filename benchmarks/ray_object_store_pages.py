"""Claim (issue 17 item 1, Ray engine): the Ray object-store pages a curate driver touches while
sending shards to its tasks are bounded -- they stop growing once the store reuses freed
space -- so they do not grow with the corpus.

The driver sends shards of texts to Ray tasks through ``engine.ray_stream`` (a sliding window of
4 tasks in flight, as ``curate --engine ray --workers 2`` does); each shard (500 texts of 4,000
characters, 2 MB) goes through Ray's shared-memory object store, whose pages the driver writes
and which then count in its RSS (RssShmem). Printed after every 40 shards: the driver's
RssShmem. Peer: the same count of shards with the window (the bytes sent grow linearly); the
ratio printed last is RssShmem after 200 shards over RssShmem after 120 (1.00 = flat).

    .venv/bin/python benchmarks/ray_object_store_pages.py
"""

from __future__ import annotations

from pathlib import Path


def rss_shmem_mib() -> float:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["RssShmem"].split()[0]) / 1024


def count(texts: list[str]) -> int:
    """The Ray task: what a signal task receives, reduced to its size."""
    return len(texts)


def main() -> None:
    from llm4all.curate.engine import connect_ray, ray_stream

    ray = connect_ray(2)
    task = ray.remote(count)
    shard = ["x" * 4000] * 500
    seen = {}
    for rounds in range(1, 6):
        for _ in ray_stream(ray, task.remote, (shard for _ in range(40)), 4):
            pass
        seen[40 * rounds] = rss_shmem_mib()
        print(f"after {40 * rounds:>3} shards ({40 * rounds * 2} MB sent): driver RssShmem "
              f"{seen[40 * rounds]:.0f} MiB", flush=True)
    print(f"ratio (RssShmem after 200 shards / after 120): {seen[200] / seen[120]:.2f}")


if __name__ == "__main__":
    main()
