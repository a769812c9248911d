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
