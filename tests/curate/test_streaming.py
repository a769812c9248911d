"""Streaming curate (issue 17 item 1): the driver holds no corpus, its memory is flat in its size."""

import json
import random
import subprocess
import sys

import pytest

from llm4all.curate.store import DocStore
from llm4all.data.document import Document


def test_store_reads_back_what_it_wrote(tmp_path):
    texts = ["plain ascii", "accents: é, ü, ß", "", "emoji 🙂 and CJK 漢字", "x" * 100_000]
    with DocStore(tmp_path) as store:
        for i, t in enumerate(texts):
            assert store.add(Document(f"d{i}", t, {"i": i}, where=f"f:{i + 1}")) == i
        assert len(store) == 5 and store.ids == [f"d{i}" for i in range(5)]
        assert list(store.lengths) == [len(t) for t in texts]
        view = store.texts([4, 1, 3])
        assert len(view) == 3 and view[1] == texts[1] and view[-1] == texts[3]
        assert view[0:2] == [texts[4], texts[1]] and list(view) == [texts[4], texts[1], texts[3]]
        assert list(store.texts()) == texts
        doc = store.document(3)
        assert (doc.id, doc.text, doc.meta, doc.where) == ("d3", texts[3], {"i": 3}, "f:4")
        store.add(Document("late", "added after a read", {}))  # writes after reads are read too
        assert store.text(5) == "added after a read"
    assert not list(tmp_path.iterdir())  # the texts' temporary file is gone


def _corpus(path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(5000)]
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"s{seed}-{i}", "text": " ".join(rng.choices(words, k=700))}) + "\n")


def _peak_rss_kib(data, out) -> int:
    cmd = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "llm4all", "-q", "curate", *map(str, data),
           "--out", str(out), "--workers", "1", "--signals", "zlib_ratio", "--steps", "{dedup: exact}",
           "--lang-id", "meta"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stderr.strip().splitlines()[-1])


@pytest.mark.slow
def test_driver_memory_is_flat_when_the_corpus_doubles(tmp_path):
    """~48 MB of text, then twice that: the driver's peak RSS grows by less than 10% (it used to
    hold every text, and grew by about the corpus size)."""
    one, two = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _corpus(one, 12_000, 1)
    _corpus(two, 12_000, 2)
    single = _peak_rss_kib([one], tmp_path / "one")
    double = _peak_rss_kib([one, two], tmp_path / "two")
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["read"] == summary["kept"] == 24_000
    assert double < 1.10 * single, (single, double)


def test_store_takes_texts_first_and_their_meta_later_in_order(tmp_path):
    """Reading puts a block's texts in the store at once and its meta when the languages come
    back: the driver holds meta in flight, not texts."""
    with DocStore(tmp_path) as store:
        a, b = Document("a", "first text", {"k": 1}, where="f:1"), Document("b", "second", {"k": 2})
        assert store.add_text(a) == 0 and store.add_text(b) == 1
        assert store.text(1) == "second" and len(store) == 2
        store.add_meta(a)
        store.add_meta(b)
        assert store.document(0) == Document("a", "first text", {"k": 1}, where="f:1")
        assert store.metas[1] == {"k": 2}
        with pytest.raises(RuntimeError, match="meta of 'c' before its text"):
            store.add_meta(Document("c", "", {}))


def test_a_step_sees_its_rows_of_the_columns_it_reads_copied_once():
    """The pipeline gives each step ``TableRows``: the judged rows of a column, copied when the
    step first reads it (not the whole table at every step)."""
    import numpy as np

    from llm4all.curate.step import TableRows

    table = {"a": np.arange(10.0), "b": np.arange(10.0) * 2}
    rows = TableRows(table, np.array([7, 2, 5]))
    assert list(rows) == ["a", "b"] and len(rows) == 2 and "a" in rows and "c" not in rows
    assert rows._rows == {}  # nothing copied yet
    np.testing.assert_array_equal(rows["b"], [14, 4, 10])
    assert list(rows._rows) == ["b"] and rows["b"] is rows["b"]  # copied once, kept
    assert {c: list(v) for c, v in rows.items()} == {"a": [7, 2, 5], "b": [14, 4, 10]}
    with pytest.raises(KeyError):
        rows["c"]


def test_signal_columns_are_filled_in_place_shard_by_shard():
    """compute_table allocates each column once: shards fill their rows, a wider type widens the
    column, and a column a shard did not give is an error, never zeros."""
    from collections import Counter

    import numpy as np

    from llm4all.curate.engine import _fill

    table, rows = {}, Counter()
    _fill(table, rows, {"n": np.array([1, 2], np.int64)}, 0, 2, 5)
    _fill(table, rows, {"n": np.array([0.5, 1.5, 2.5])}, 2, 5, 5)
    assert table["n"].dtype == np.float64 and list(table["n"]) == [1, 2, 0.5, 1.5, 2.5]
    assert rows["n"] == 5


def test_a_signal_missing_from_a_shard_fails_instead_of_filling_zeros(monkeypatch):
    from llm4all.curate import engine

    real = engine._shard_signals
    calls = iter(range(100))

    def flaky(args):
        columns = real(args)
        return {c: v for c, v in columns.items() if c != "ttr"} if next(calls) == 1 else columns

    monkeypatch.setattr(engine, "_shard_signals", flaky)
    texts = [f"text number {i} with some words" for i in range(9)]
    with engine.Workers("local", 1) as executor, pytest.raises(RuntimeError, match="ttr"):  # in-process
        engine.compute_table([f"d{i}" for i in range(9)], texts, ["ttr"], executor, shard_docs=3)
