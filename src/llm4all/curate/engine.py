"""Where per-document work runs: local processes (default) or Ray.

``Workers`` is the run's executor: a pool of processes started on first use (engine local) or
Ray (a local instance, or a cluster joined with ``--ray-address``), whose ``map`` streams items
through a bounded window, so the driver holds a few items' arguments whatever the corpus size;
on Ray the window slides (``ray_stream``). Reading (language identification), the signals and,
on Ray, the filters (``filter_on_ray``) go through it. Both engines run the same pure functions
on the same shards of documents, so they give the same signal table; only the executor differs.
Each finished shard is cached on disk under a key made of the signal specification and the
shard's content (ids and texts), so a rerun -- after a crash, or with other steps -- skips every
shard already computed.

Batched (model-based) signals run in the calling process, shard by shard, so the model is
loaded once and uses all the threads torch gives it; on Ray, in a pool of actors that each load
it once for the run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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


WINDOW_PER_WORKER = 2  # tasks per worker in flight at a time: bounds the texts in flight


class Workers:
    """Where per-document work runs: a pool of ``workers`` processes (engine local, started on
    first use and shared by every stage of the run) or Ray (a local instance of ``workers`` CPUs,
    or the cluster at ``ray_address``). ``map`` streams: at most ``WINDOW_PER_WORKER`` items per
    worker are out at once, so the driver holds a window's arguments, whatever the input size."""

    def __init__(self, engine: Engine = "local", workers: int = 2, ray_address: str | None = None):
        self.engine, self.workers, self.address = engine, workers, ray_address
        self._pool = None

    def ray(self):
        """The connected ``ray`` module (engine ray)."""
        return connect_ray(self.workers, self.address)

    def map(self, fn: Callable, items: Iterable, inline: bool = False) -> Iterator:
        """``fn(item)`` for each item, in order; ``fn`` must be importable by the workers (a
        module-level function). ``inline``: run here (a single item is not worth a process)."""
        if self.engine == "ray" and not inline:
            ray = self.ray()
            task = ray.remote(fn)
            yield from ray_stream(ray, task.remote, items)
        elif self.workers > 1 and not inline:
            if self._pool is None:
                self._pool = get_context("spawn").Pool(self.workers)
            items = iter(items)
            while part := list(itertools.islice(items, WINDOW_PER_WORKER * self.workers)):
                yield from self._pool.map(fn, part)
        else:
            yield from map(fn, items)

    def release(self) -> None:
        """The run needs its workers no more: a local pool closes; Ray is let go in a background
        thread (a local instance stops, ~1.2 s of Ray's own waiting on its processes, while the
        driver writes its outputs; a cluster is only disconnected from), which ``close`` and the
        next ``connect_ray`` wait for."""
        if self.engine == "ray":
            import threading

            import ray

            if ray.is_initialized():
                stop = threading.Thread(target=_stop_ray, name="llm4all-ray-stop", daemon=True)
                _STOPPING.append(stop)
                stop.start()
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None
        _wait_ray_stopped()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def compute_table(ids: list[str], texts: Sequence[str], specs: list, executor: Workers,
                  shard_docs: int = 1000, cache: ShardCache | None = None, *,
                  progress: Callable[[int], None] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Signal columns for all documents, computed shard by shard; returns (table, stats).

    ``texts`` may be lazy (``store.TextView``): a shard's texts are read when the shard is
    hashed for the cache and again when it goes to a worker (``Workers.map``: a window in
    flight), so the texts in memory (and in the pool's or Ray's queue) are a window's, whatever
    the corpus size. On Ray the window slides (a shard goes out as soon as one comes back:
    ``ray_stream``); per-document signals run in Ray tasks, model signals in a pool of actors that
    load the model once for the whole run; locally, model signals run here, batched, with all
    of torch's threads."""
    from llm4all.curate.signals.compute import resolve

    plan = resolve(specs)
    per_doc = [s for s, (_, fn, _) in zip(specs, plan, strict=True) if not fn.batched]
    batched = [s for s, (_, fn, _) in zip(specs, plan, strict=True) if fn.batched]
    bounds = [(i, min(i + shard_docs, len(ids))) for i in range(0, len(ids), shard_docs)]
    stats = {"shards": len(bounds), "cached": 0, "computed": 0, "seconds": {}}
    filled: dict[str, np.ndarray] = {}  # each column allocated once and filled shard by shard
    rows: Counter[str] = Counter()  # rows filled per column
    for group, runner in ((per_doc, "per_doc"), (batched, "batched")):
        if not group:
            continue
        start = time.perf_counter()
        todo = []
        for a, b in bounds:
            key = _key(group, ids[a:b], texts[a:b])
            hit = cache.get(key) if cache else None
            if hit is not None:
                _fill(filled, rows, hit, a, b, len(ids))
                stats["cached"] += 1
            else:
                todo.append((key, a, b))
        shards = ((texts[a:b], group) for _, a, b in todo)  # read one at a time, as they go out
        if executor.engine == "ray" and runner == "batched" and todo:
            results = _ray_actor_signals(executor.ray(), shards)
        else:
            results = executor.map(_shard_signals, shards, inline=runner == "batched" or len(todo) < 2)
        for (key, a, b), columns in zip(todo, results, strict=True):
            _fill(filled, rows, columns, a, b, len(ids))
            if cache:
                cache.put(key, columns)
            stats["computed"] += 1
            if progress:
                progress(b - a)
        if executor.engine == "ray" and todo:
            stats["ray"] = ray_cluster(executor.address)
        stats["seconds"][runner] = round(time.perf_counter() - start, 2)
    columns = [c for _, fn, _ in plan for c in fn.columns]
    missing = [c for c in columns if rows[c] != len(ids)]
    if missing:  # a signal that did not give its column for every shard: never a zero filler
        raise RuntimeError(f"signal columns {missing} filled for {[rows[c] for c in missing]} of "
                           f"{len(ids)} documents")
    return {c: filled.get(c, np.zeros(0)) for c in columns}, stats


def _fill(table: dict[str, np.ndarray], rows: Counter, columns: dict, a: int, b: int, n: int) -> None:
    """Rows a:b of every column of ``table`` (n rows each, allocated on the first shard: no list
    of per-shard arrays concatenated at the end, which held the table twice and scattered it in
    small pieces through the heap); a later shard of a wider type widens the column."""
    for c, v in columns.items():
        v = np.asarray(v)
        if c not in table:
            table[c] = np.zeros(n, v.dtype)
        elif np.result_type(table[c], v) != table[c].dtype:
            table[c] = table[c].astype(np.result_type(table[c], v))
        table[c][a:b] = v
        rows[c] += b - a


#: what the driver is connected to: None (not yet), "local" or a cluster address
_RAY: dict[str, str | None] = {"connected": None}
_STOPPING: list = []  # threads shutting Ray down (Workers.release)


def _stop_ray() -> None:
    import ray

    ray.shutdown()
    _RAY["connected"] = None


def _wait_ray_stopped() -> None:
    while _STOPPING:
        _STOPPING.pop().join()
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
    _wait_ray_stopped()
    if ray.is_initialized() and _RAY["connected"] != want:
        ray.shutdown()
    if not ray.is_initialized():
        if not os.environ.get("LLM4ALL_VERBOSE"):
            _quiet_token_auth_notice()
        try:
            if address:  # a cluster's CPUs are its own; llm4all must be installed on every node
                env = {"env_vars": {k: os.environ[k] for k in RAY_ENV if k in os.environ}}
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False, runtime_env=env)
            else:
                # "local": a new instance even where a cluster was started on this machine; its
                # workers inherit this environment (a runtime_env would start new worker
                # processes in place of the ones Ray starts with it: +0.55 s to the first tasks)
                ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
        except Exception as e:  # Ray raises its own types (ConnectionError, AuthenticationError, ...)
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            hint = ("the cluster uses token authentication: set RAY_AUTH_MODE=token (the token is read from "
                    "~/.ray/auth_token or RAY_AUTH_TOKEN)" if "auth" in first.lower() else
                    "start one with `ray start --head` (docs/curate.md)")
            raise UserError(f"--ray-address {address}: cannot join a Ray cluster there ({first}); "
                            f"{hint}") from None
        _RAY["connected"] = want
    if not os.environ.get("LLM4ALL_VERBOSE"):  # Ray's INFO logs: with -v only
        logging.getLogger("ray").setLevel(logging.WARNING)
    return ray


def ray_data(ray):
    """The ``ray.data`` module, configured for llm4all on first use: imported only by the steps
    that use Ray Data (embeddings in actors), as the import alone takes 0.5 s."""
    import os

    context = ray.data.DataContext.get_current()  # imports ray.data, which sets up its logger
    # sort-based shuffles run in tasks (warm worker processes); the hash shuffle starts actors per
    # operation: 1-3 s each at 20k rows, and half the speed at 2M rows on 2 CPUs (docs/curate.md)
    context.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    if not os.environ.get("LLM4ALL_VERBOSE"):  # Ray Data's progress lines and INFO logs: with -v only
        context.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # not even "progress bars disabled"
    return ray.data


def _quiet_token_auth_notice() -> None:
    """Drop Ray's notice that the local instance it starts uses token authentication (its secure
    default, printed on every run); its warning that authentication is *disabled* still shows."""
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _TokenAuthNotice) for f in log.filters):
        log.addFilter(_TokenAuthNotice())


class _TokenAuthNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled for this Ray cluster")


def ray_cluster(address: str | None) -> dict:
    """What the driver ran on: the cluster's address (or local), its live nodes and CPUs."""
    import ray

    if not ray.is_initialized():
        return {"address": address or "local"}
    return {"address": address or "local", "nodes": sum(bool(n["Alive"]) for n in ray.nodes()),
            "cpus": int(ray.cluster_resources().get("CPU", 0))}


_END = object()


def ray_parallelism(ray) -> int:
    """The CPUs of the cluster the driver is connected to (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def ray_stream(ray, submit: Callable[[Any], Any], items: Iterable, in_flight: int | None = None,
               done: Callable[[Any], Any] | None = None) -> Iterator:
    """``done(submit(item))`` for each item, in order, with at most ``in_flight`` tasks out
    (default ``WINDOW_PER_WORKER`` per CPU of the cluster).

    ``submit`` starts a Ray task and returns its reference(s); ``done`` (default ``ray.get``)
    turns them into the result. An item is taken from ``items`` (e.g. a shard's texts read
    from the store) only when a slot is free, so the driver and the object store hold the
    arguments of ``in_flight`` tasks, whatever the number of items, and the workers never wait
    for a window's slowest task (the window slides; Ray's "pipelining with ray.wait" pattern).
    """
    finish = done or ray.get
    in_flight = in_flight or WINDOW_PER_WORKER * ray_parallelism(ray)
    pending: deque = deque()
    items = iter(items)
    while True:
        if len(pending) >= in_flight:  # a slot first, then the next item
            yield finish(pending.popleft())
        item = next(items, _END)
        if item is _END:
            break
        pending.append(submit(item))
    while pending:
        yield finish(pending.popleft())


def shuffle_partitions(ray, rows: int, per_partition: int = 1_000_000) -> int:
    """Partitions for a hash shuffle of ``rows`` rows (``dedup/ray_shuffle.py``): two per CPU
    of the cluster, or more when that would put over ``per_partition`` rows in one (each
    partition is one reduce task; Ray Data's default of 200 cost seconds at the sizes one
    machine curates)."""
    return max(2 * ray_parallelism(ray), -(-rows // per_partition))


FILTER_BLOCK = 8192  # documents (their ids and signal rows) per Ray task


def _filter_block(fn: Callable[..., list], options: dict[str, Any], ids: list[str],
                  table: dict[str, np.ndarray]) -> list:
    """Ray task: one block's decisions."""
    return fn(ids, table, **options)


def filter_on_ray(ray, fn: Callable[..., list], options: dict[str, Any], ids: list[str],
                  table: Mapping[str, np.ndarray]) -> list:
    """The filter ``fn(ids, table, **options)`` in Ray tasks over blocks of ``FILTER_BLOCK``
    documents (their ids and signal rows; a sliding window of blocks in flight): the same
    decisions as one call over all of them, as a filter judges each row by itself."""
    table = dict(table)
    fn(ids[:0], {c: v[:0] for c, v in table.items()}, **options)  # a wrong column or option: a
    task = ray.remote(_filter_block)  # UserError here, not a Ray task's traceback
    blocks = ray_stream(ray, lambda a: task.remote(fn, options, ids[a:a + FILTER_BLOCK],
                                                   {c: v[a:a + FILTER_BLOCK] for c, v in table.items()}),
                        range(0, len(ids), FILTER_BLOCK))
    return [d for block in blocks for d in block]


class ShardSignalsActor:
    """A Ray actor computing shards' signals; model signals (perplexity, Ask-LLM) load their
    model once per actor and keep it (``signals.model.cached_model``)."""

    def signals(self, item: tuple[list[str], list]) -> dict[str, np.ndarray]:
        return _shard_signals(item)


def _ray_actor_signals(ray, shards: Iterator[tuple[list[str], list]]) -> Iterator[dict]:
    """Each (texts, specs) shard's signal columns, in order, from a pool of one Ray actor per
    CPU (at most one shard each in flight), each loading the model once for the whole run."""
    from ray.util import ActorPool

    actor = ray.remote(ShardSignalsActor)
    pool = ActorPool([actor.remote() for _ in range(ray_parallelism(ray))])
    for shard in shards:
        if not pool.has_free():
            yield pool.get_next()
        pool.submit(lambda a, x: a.signals.remote(x), shard)
    while pool.has_next():
        yield pool.get_next()
