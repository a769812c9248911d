"""Exact dedup: hashing of the normalised text, first-occurrence survivors, streaming
decisions, registry options (normalisation itself: test_dedup_shingles.py)."""

from __future__ import annotations

import pytest

from llm4all.catalog import DEDUPERS
from llm4all.curate.dedup.exact import ExactDedup, exact_duplicates, text_hash
from llm4all.curate.step import Decision
from llm4all.errors import UserError


def test_text_hash_is_128_bit_and_normalised():
    assert len(text_hash("a")) == 16
    assert text_hash("Hello, World") == text_hash("hello   world!")
    assert text_hash("hello world") != text_hash("hello  worlds")


def test_exact_duplicates_first_occurrence_survives():
    texts = ["a b", "A  b!", "c", "a b", "a b c", "C."]
    assert exact_duplicates(texts) == [0, 0, 2, 0, 4, 2]


def test_exact_dedup_streams_decisions_with_reasons():
    seen = []

    def docs():
        for doc in [("d1", "Same text."), ("d2", "same TEXT"), ("d3", "other"), ("d4", "SAME")]:
            seen.append(doc[0])
            yield doc

    stream = ExactDedup()(docs())
    assert next(stream) == Decision("d1", True)
    assert seen == ["d1"]  # lazy: one document read per decision
    rest = list(stream)
    assert rest == [
        Decision("d2", False, {"reason": "exact_duplicate", "survivor": "d1"}),
        Decision("d3", True),
        Decision("d4", True),
    ]


def test_exact_dedup_raw_mode_and_counts_reconcile():
    docs = [(str(i), t) for i, t in enumerate(["x", "X", "x", "x ", "y"])]
    raw = list(DEDUPERS.build({"name": "exact", "normalise": False})(docs))
    assert [d.keep for d in raw] == [True, True, False, True, True]
    norm = list(DEDUPERS.build("exact")(docs))
    assert [d.keep for d in norm] == [True, False, False, False, True]
    assert len(norm) == len(docs)  # every document gets exactly one decision


def test_exact_dedup_unknown_option_is_a_user_error():
    with pytest.raises(UserError, match="unknown option 'normalize'.*did you mean 'normalise'"):
        DEDUPERS.build({"name": "exact", "normalize": True})


@pytest.mark.slow
def test_exact_dedup_on_ray_equals_the_local_one():
    """issue 17 item 2: hash tasks + a hash shuffle give the local decisions, survivors included."""
    from llm4all.curate.dedup.ray_exact import exact_on_ray
    from llm4all.curate.engine import connect_ray

    ray = connect_ray(2)
    texts = [f"document number {i % 37} says hello" for i in range(300)]
    texts += ["Hello, World!", "hello   world", "HELLO WORLD?", "hello worlds"]
    ids = [f"d{i}" for i in range(len(texts))]
    for normalise in (True, False):
        local = list(ExactDedup(normalise)(zip(ids, texts, strict=True)))
        on_ray = exact_on_ray(ray, ids, texts, normalise, shard_docs=40)
        assert on_ray == local
    assert sum(not d.keep for d in local) == 300 - 37  # raw text: only the 300 repeat
