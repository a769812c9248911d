"""The curate executor (issue 17): streaming maps with a bounded window, on processes or Ray,
shared by reading (language identification), signals and the filter steps."""

import json

import numpy as np
import pytest

from llm4all.curate.engine import Workers, ray_stream, shuffle_partitions
from llm4all.errors import UserError


class FakeRay:
    """Enough of the ``ray`` module for ``ray_stream`` and ``shuffle_partitions``."""

    def __init__(self, cpus: int = 2):
        self.cpus = cpus

    def get(self, ref):
        return ref

    def cluster_resources(self):
        return {"CPU": float(self.cpus)}


def test_ray_stream_keeps_order_and_takes_items_only_as_slots_free():
    taken, results = [], []

    def items():
        for i in range(10):
            taken.append(i)
            yield i

    for r in ray_stream(FakeRay(), lambda x: x * x, items(), in_flight=3):
        results.append(r)
        # when result k comes back, items k .. k+2 are out and no further one was read
        assert len(taken) - len(results) <= 2, (len(taken), len(results))
    assert results == [i * i for i in range(10)] and taken == list(range(10))


def test_ray_stream_hands_each_reference_to_done():
    refs = ray_stream(FakeRay(), lambda x: (x, f"payload{x}"), range(4), in_flight=2,
                      done=lambda r: (r[0] + 100, r[1]))
    assert list(refs) == [(100 + i, f"payload{i}") for i in range(4)]


def test_shuffle_partitions_are_two_per_cpu_unless_the_rows_need_more():
    assert shuffle_partitions(FakeRay(2), 20_000) == 4
    assert shuffle_partitions(FakeRay(8), 0) == 16
    assert shuffle_partitions(FakeRay(2), 10_000_001) == 11  # at most a million rows each


def _square(x: int) -> int:
    return x * x


def test_local_workers_map_in_order_with_one_pool_for_every_stage():
    with Workers("local", 2) as workers:
        assert list(workers.map(_square, iter(range(13)))) == [i * i for i in range(13)]
        pool = workers._pool
        assert pool is not None
        assert list(workers.map(_square, range(5))) == [0, 1, 4, 9, 16]
        assert workers._pool is pool  # the same processes, not a second start-up
        assert list(workers.map(_square, [7], inline=True)) == [49]
    assert workers._pool is None


def test_language_identification_on_workers_equals_the_driver_one(tmp_path):
    """``read_all`` identifies languages a block at a time on the executor's processes; the
    store holds the same documents and meta, in input order, as when the driver does it."""
    from llm4all.curate import reading
    from llm4all.curate.reading import Ledger, read_all
    from llm4all.curate.store import DocStore

    texts = ["The quick brown fox jumps over the lazy dog near the river bank.",
             "Le renard brun saute par-dessus le chien paresseux au bord de la rivière.",
             "Der schnelle braune Fuchs springt über den faulen Hund am Flussufer.",
             "12345 67890"]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": texts[i % 4], "meta": {"lang": "en"}}) + "\n"
                            for i in range(23)))
    stored = []
    for executor in (None, Workers("local", 2)):
        with DocStore(tmp_path) as store:
            old, reading.LANG_BLOCK = reading.LANG_BLOCK, 5  # 5 blocks, several in flight
            try:
                read_all(store, [path], "text", False, 21, Ledger(None), lang_id=True, executor=executor)
            finally:
                reading.LANG_BLOCK = old
                if executor:
                    executor.close()
            stored.append([(store.ids[i], store.text(i), store.metas[i]) for i in range(len(store))])
    assert stored[0] == stored[1] and len(stored[0]) == 21  # max_docs holds
    langs = [m["lang"] for _, _, m in stored[0][:4]]
    assert langs == ["en", "fr", "de", "und"]
    assert stored[0][1][2]["lang_declared"] == "en" and "lang_declared" not in stored[0][0][2]


@pytest.fixture(scope="module")
def ray():
    pytest.importorskip("ray")
    from llm4all.curate.engine import connect_ray

    return connect_ray(2)


def test_filter_in_ray_blocks_equals_the_local_filter(ray, monkeypatch):
    from llm4all.curate import engine
    from llm4all.curate.step import build_step

    rng = np.random.default_rng(0)
    n = 50
    ids = [f"d{i}" for i in range(n)]
    table = {"word_count": rng.integers(0, 200, n).astype(float), "alpha_word_fraction": rng.random(n),
             "ttr": rng.random(n)}
    for spec in ({"filter": "published"}, {"filter": "bounds", "bounds": {"ttr": [0.2, 0.9]}}):
        _, step = build_step(spec, "steps[0]")
        local = step(ids, [""] * n, table)
        monkeypatch.setattr(engine, "FILTER_BLOCK", 7)  # 8 blocks, a window of them in flight
        assert step.on_ray(ray, ids, [""] * n, table) == local
        assert 0 < sum(d.keep for d in local) < n
    _, wrong = build_step({"filter": "bounds", "bounds": {"nope": [0, 1]}}, "steps[0]")
    with pytest.raises(UserError, match="no signal column 'nope'") as caught:
        wrong.on_ray(ray, ids, [""] * n, table)
    assert type(caught.value) is UserError  # raised in the driver: one line, no task traceback


def test_a_local_ray_instance_passes_the_environment_to_its_workers(monkeypatch):
    """No runtime_env for a local instance (it would replace the workers Ray starts with it):
    its workers inherit LLM4ALL_* from the driver; Ray Data is configured where it is used."""
    import os

    ray = pytest.importorskip("ray")
    from llm4all.curate.engine import connect_ray, ray_data

    ray.shutdown()  # a new instance, started with this environment
    monkeypatch.setenv("LLM4ALL_CACHE", "/nonexistent/llm4all-env-check")
    try:
        connect_ray(2)
        seen = ray.get([ray.remote(lambda: os.environ.get("LLM4ALL_CACHE")).remote() for _ in range(4)])
        assert seen == ["/nonexistent/llm4all-env-check"] * 4
        data = ray_data(ray)
        context = data.DataContext.get_current()
        assert context.shuffle_strategy == data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    finally:
        ray.shutdown()  # later tests start an instance without the variable


def test_release_lets_ray_go_in_the_background_and_a_later_run_starts_it_again():
    """``Workers.release`` (after a run's last step): Ray's stop runs in a thread while the driver
    writes its outputs; ``close`` waits for it, and the next connection starts a new instance."""
    ray = pytest.importorskip("ray")
    workers = Workers("ray", 2)
    assert list(workers.map(json.dumps, ([i] for i in range(3)))) == ["[0]", "[1]", "[2]"]
    workers.release()
    assert not ray.is_initialized()
    with Workers("ray", 2) as again:
        assert list(again.map(json.dumps, [["x"]])) == ['["x"]']
    local = Workers("local", 2)
    assert list(local.map(json.dumps, ([i] for i in range(4)))) == [f"[{i}]" for i in range(4)]
    local.release()
    assert local._pool is None


def test_ray_workers_map_in_order(ray):
    workers = Workers("ray", 2)  # the function goes by reference: one the workers can import
    assert list(workers.map(json.dumps, ([i] for i in range(9)))) == [f"[{i}]" for i in range(9)]


def test_only_rays_token_auth_enabled_notice_is_quieted():
    """Without -v, Ray's notice that its local instance uses token authentication (every run) is
    dropped; its warning that authentication is disabled is not."""
    import logging

    from llm4all.curate.engine import _quiet_token_auth_notice

    _quiet_token_auth_notice()
    _quiet_token_auth_notice()  # once is enough
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    assert len(log.filters) == 1

    def passes(msg: str) -> bool:
        return log.filter(logging.LogRecord(log.name, logging.WARNING, __file__, 1, msg, None, None))

    assert not passes("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=...")
    assert passes("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
