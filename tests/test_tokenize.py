import json

import numpy as np
import pytest

from llm4all.data.shards import TokenShards
from llm4all.data.tokenize import main as tokenize
from llm4all.data.tokenize import split_of
from llm4all.errors import UserError
from llm4all.models.load import load_tokenizer


def test_shards_hold_each_document_then_eos(tiny_model, docs_jsonl, tmp_path):
    index = tokenize([docs_jsonl], out=tmp_path / "shards", tokenizer=str(tiny_model),
                     val_fraction=0.25, workers=1)
    tok = load_tokenizer(tiny_model)
    docs = [json.loads(line) for line in docs_jsonl.read_text().splitlines()]
    expected = {"train": [], "validation": []}
    for d in docs:
        ids = tok(d["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        expected[split_of(d["id"], 0.25)].extend(ids)
    shards = TokenShards(tmp_path / "shards")
    for split in ("train", "validation"):
        assert shards.tokens(split).tolist() == expected[split]
        assert index["splits"][split]["tokens"] == len(expected[split])
    assert index["splits"]["train"]["docs"] + index["splits"]["validation"]["docs"] == len(docs)
    assert index["splits"]["validation"]["docs"] > 0
    assert shards.dtype == np.uint16 and index["eos_id"] == tok.eos_token_id
    assert (tmp_path / "shards" / "DONE").exists()


def test_split_is_a_pure_function_of_the_id():
    ids = [f"doc-{i}" for i in range(2000)]
    splits = [split_of(i, 0.1) for i in ids]
    assert splits == [split_of(i, 0.1) for i in reversed(ids)][::-1]
    assert 0.07 < splits.count("validation") / len(ids) < 0.13


def test_two_workers_equal_one(tiny_model, docs_jsonl, tmp_path):
    tokenize([docs_jsonl], out=tmp_path / "a", tokenizer=str(tiny_model), workers=1, batch_docs=3)
    tokenize([docs_jsonl], out=tmp_path / "b", tokenizer=str(tiny_model), workers=2, batch_docs=3)
    for split in ("train", "validation"):
        a, b = (TokenShards(tmp_path / x).tokens(split).tolist() for x in "ab")
        assert a == b


def test_shard_rollover_and_doc_index(tiny_model, docs_jsonl, tmp_path):
    index = tokenize([docs_jsonl], out=tmp_path / "s", tokenizer=str(tiny_model), workers=1,
                     shard_tokens=200, val_fraction=0.0)
    assert len(index["splits"]["train"]["shards"]) > 2
    import zstandard

    rows = zstandard.ZstdDecompressor().decompress((tmp_path / "s" / "train-docs.jsonl.zst").read_bytes(),
                                                   max_output_size=10**7).decode().splitlines()
    rows = [json.loads(r) for r in rows]
    shards = TokenShards(tmp_path / "s").shard_arrays("train")
    for r in rows:
        assert shards[r["shard"]][r["start"] + r["tokens"] - 1] == index["eos_id"]


def test_bad_input_leaves_no_output(tiny_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "the of"}\n{"id": "b", "text": 7}\n')
    with pytest.raises(UserError, match="bad.jsonl: line 2"):
        tokenize([bad], out=tmp_path / "out", tokenizer=str(tiny_model), workers=1)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.jsonl"]


def test_skip_bad_writes_rejects(tiny_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "the of"}\n{"id": "b", "text": 7}\n')
    index = tokenize([bad], out=tmp_path / "out", tokenizer=str(tiny_model), workers=1, skip_bad=True)
    assert index["rejected"] == 1
    assert "line" in (tmp_path / "out" / "rejects.jsonl").read_text()


def test_empty_file_and_duplicate_ids(tiny_model, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="no documents to tokenize"):
        tokenize([empty], out=tmp_path / "o1", tokenizer=str(tiny_model), workers=1)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "text": "the"}\n{"id": "a", "text": "of"}\n')
    with pytest.raises(UserError, match=r"dup.jsonl: line 2: duplicate document id 'a'"):
        tokenize([dup], out=tmp_path / "o2", tokenizer=str(tiny_model), workers=1)
    null = tmp_path / "null.jsonl"
    null.write_text('{"id": null, "text": "the"}\n')
    with pytest.raises(UserError, match=r"null.jsonl: line 1: field 'id' must be a non-empty string or an "
                                        r"integer, got null"):
        tokenize([null], out=tmp_path / "o3", tokenizer=str(tiny_model), workers=1)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
