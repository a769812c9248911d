"""Where per-document work runs: local processes (default) or Ray Data.

Both engines run the same pure function on the same shards of documents, so they give the
same signal table; only the executor differs. Each finished shard is cached on disk under a
key made of the signal specification and the shard's content (ids and texts), so a rerun --
after a crash, or with other steps -- skips every shard already computed.

Batched (model-based) signals run in the calling process, shard by shard, so the model is
loaded once and uses all the threads torch gives it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llm4all.runs import atomic_path

Engine = Literal["local", "ray"]


def _shard_signals(item: tuple[list[str], list]) -> dict[str, np.ndarray]:
    from llm4all.curate.signals.compute import compute_signals

    texts, specs = item
    return compute_signals(texts, specs)


def _key(specs: list, ids: list[str], texts: list[str]) -> str:
    h = hashlib.blake2b(json.dumps(specs, sort_keys=True).encode(), digest_size=16)
    for doc_id, text in zip(ids, texts, strict=True):
        h.update(doc_id.encode())
        h.update(b"\0")
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\1")
    return h.hexdigest()


class ShardCache:
    """``.npz`` files of signal columns, one per (specification, shard content)."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        path = self.path(key)
        if not path.exists():
            return None
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    def put(self, key: str, columns: dict[str, np.ndarray]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path(key)) as tmp, open(tmp, "wb") as f:
            np.savez(f, **columns)


WINDOW_PER_WORKER = 2  # shards per worker sent at a time: bounds the texts in flight


def compute_table(ids: list[str], texts: Sequence[str], specs: list, *, engine: Engine = "local",
                  workers: int = 2, shard_docs: int = 1000, cache: ShardCache | None = None,
                  progress: Callable[[int], None] | None = None,
                  ray_address: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Signal columns for all documents, computed shard by shard; returns (table, stats).

    ``texts`` may be lazy (``store.TextView``): a shard's texts are read when the shard is
    hashed for the cache and again when it is computed, and shards go to the workers a window
    of ``WINDOW_PER_WORKER × workers`` at a time, so the texts in memory (and in the pool's or
    Ray's queue) are a window's, whatever the corpus size. ``ray_address`` (engine ray): join
    that cluster (``auto``, or ``HOST:PORT`` of its head) instead of starting a local instance."""
    from llm4all.curate.signals.compute import resolve

    plan = resolve(specs)
    per_doc = [s for s, (_, fn, _) in zip(specs, plan, strict=True) if not fn.batched]
    batched = [s for s, (_, fn, _) in zip(specs, plan, strict=True) if fn.batched]
    bounds = [(i, min(i + shard_docs, len(ids))) for i in range(0, len(ids), shard_docs)]
    stats = {"shards": len(bounds), "cached": 0, "computed": 0, "seconds": {}}
    parts: list[dict[str, np.ndarray]] = [{} for _ in bounds]
    pool = None
    try:
        for group, runner in ((per_doc, "per_doc"), (batched, "batched")):
            if not group:
                continue
            start = time.perf_counter()
            todo = []
            for n, (a, b) in enumerate(bounds):
                key = _key(group, ids[a:b], texts[a:b])
                hit = cache.get(key) if cache else None
                if hit is not None:
                    parts[n].update(hit)
                    stats["cached"] += 1
                else:
                    todo.append((n, key, a, b))
            # model signals (batched) run in Ray actors that load the model once, else in the driver
            parallel = engine == "ray" or (runner == "per_doc" and workers > 1 and len(todo) > 1)
            if parallel and engine == "local" and pool is None:
                pool = get_context("spawn").Pool(min(workers, len(todo)))
            window = WINDOW_PER_WORKER * workers if parallel else 1
            for w in range(0, len(todo), window):
                part = todo[w:w + window]
                payload = [(texts[a:b], group) for _, _, a, b in part]
                if not parallel:
                    results = [_shard_signals(x) for x in payload]
                elif engine == "ray":
                    results = _ray_map([t for t, _ in payload], group, workers, ray_address,
                                       actors=runner == "batched")
                    stats["ray"] = ray_cluster(ray_address)
                else:
                    results = pool.map(_shard_signals, payload)
                for (n, key, a, b), columns in zip(part, results, strict=True):
                    parts[n].update(columns)
                    if cache:
                        cache.put(key, columns)
                    stats["computed"] += 1
                    if progress:
                        progress(b - a)
            stats["seconds"][runner] = round(time.perf_counter() - start, 2)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    columns = [c for _, fn, _ in plan for c in fn.columns]
    table = {c: np.concatenate([p[c] for p in parts]) if parts else np.zeros(0) for c in columns}
    return table, stats


#: what the driver is connected to: None (not yet), "local" or a cluster address
_RAY: dict[str, str | None] = {"connected": None}
#: environment the Ray workers get from the driver (one setting for every stage, on every node)
RAY_ENV = ("LLM4ALL_DEVICE", "LLM4ALL_THREADS", "LLM4ALL_CACHE")


def connect_ray(workers: int, address: str | None = None):
    """The ``ray`` module, connected to ``address`` (a running cluster: ``auto`` or ``HOST:PORT``)
    or to a local instance of ``workers`` CPUs started here; reconnects if asked for another."""
    import os

    from llm4all.errors import UserError

    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray Data: pip install 'ray[data]'") from None
    want = address or "local"
    if ray.is_initialized() and _RAY["connected"] != want:
        ray.shutdown()
    if not ray.is_initialized():
        env = {"env_vars": {k: os.environ[k] for k in RAY_ENV if k in os.environ}}
        try:
            if address:  # a cluster's CPUs are its own; llm4all must be installed on every node
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False, runtime_env=env)
            else:
                # "local": a new instance even where a cluster was started on this machine
                ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                         configure_logging=False, runtime_env=env)
        except Exception as e:  # Ray raises its own types (ConnectionError, AuthenticationError, ...)
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            hint = ("the cluster uses token authentication: set RAY_AUTH_MODE=token (the token is read from "
                    "~/.ray/auth_token or RAY_AUTH_TOKEN)" if "auth" in first.lower() else
                    "start one with `ray start --head` (docs/curate.md)")
            raise UserError(f"--ray-address {address}: cannot join a Ray cluster there ({first}); "
                            f"{hint}") from None
        _RAY["connected"] = want
    if not os.environ.get("LLM4ALL_VERBOSE"):  # Ray Data's progress lines and INFO logs: with -v only
        import logging

        logging.getLogger("ray").setLevel(logging.WARNING)
        ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


def ray_cluster(address: str | None) -> dict:
    """What the driver ran on: the cluster's address (or local), its live nodes and CPUs."""
    import ray

    if not ray.is_initialized():
        return {"address": address or "local"}
    return {"address": address or "local", "nodes": sum(bool(n["Alive"]) for n in ray.nodes()),
            "cpus": int(ray.cluster_resources().get("CPU", 0))}


class ShardSignals:
    """A Ray Data actor computing one shard's signals per row; model signals (perplexity,
    Ask-LLM) load their model once per actor and keep it (``signals.model.cached_model``)."""

    def __init__(self, specs: list):
        self.specs = specs

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        columns = _shard_signals((list(row["texts"]), self.specs))
        return {"shard": row["shard"], "columns": {k: v.tolist() for k, v in columns.items()}}


def _ray_map(shards: list[list[str]], specs: list, workers: int, address: str | None = None,
             actors: bool = False) -> list[dict[str, np.ndarray]]:
    """Compute shards with Ray Data (one row per shard), results in shard order: in tasks, or
    with ``actors`` in a pool of ``workers`` actors (model signals: one model load per actor)."""
    if not shards:
        return []
    ray = connect_ray(workers, address)
    rows = [{"shard": i, "texts": texts} for i, texts in enumerate(shards)]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    if actors:
        out = ds.map(ShardSignals, fn_constructor_args=(specs,),
                     concurrency=min(workers, len(rows))).take_all()
    else:
        out = ds.map(ShardSignals(specs)).take_all()
    out.sort(key=lambda r: r["shard"])
    return [{k: np.asarray(v, dtype=np.float64) for k, v in r["columns"].items()} for r in out]
