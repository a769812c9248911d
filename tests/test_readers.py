import gzip
import json

import pytest

from llm4all.data.document import Document
from llm4all.data.readers import Rejects, read_documents
from llm4all.data.writers import DocumentWriter, write_documents
from llm4all.errors import UserError

DOCS = [Document(f"d{i}", f"texte numéro {i}\nline two", {"lang": "fr", "i": i}) for i in range(7)]


@pytest.mark.parametrize("suffix", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"])
def test_write_read_round_trip(tmp_path, suffix):
    path = tmp_path / f"docs.{suffix}"
    assert write_documents(path, DOCS) == len(DOCS)
    assert list(read_documents(path)) == DOCS


def test_folder_of_txt_files_and_mixed_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("first")
    (tmp_path / "b.txt").write_text("second")
    docs = list(read_documents(tmp_path))
    assert [(d.id, d.text) for d in docs] == [("a/one", "first"), ("b", "second")]


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"id": ["x", "y"], "text": ["hello", "world"]})
    ds.save_to_disk(str(tmp_path / "ds"))
    docs = list(read_documents(tmp_path / "ds"))
    assert [(d.id, d.text) for d in docs] == [("x", "hello"), ("y", "world")]


def test_missing_id_and_meta_get_defaults(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b", "source": "web"}\n')
    docs = list(read_documents(path))
    assert [d.id for d in docs] == ["plain/1", "plain/3"]
    assert docs[1].meta == {"source": "web"}


@pytest.mark.parametrize("line, reason", [
    ('{"id": "b", "text": ', "invalid JSON"),
    ('{"id": "b", "txt": "x"}', "field 'text' must be a string (missing)"),
    ('{"id": "b", "text": 3}', "field 'text' must be a string (int)"),
    ('[1, 2]', "expected a JSON object"),
])
def test_malformed_record_names_file_and_line(tmp_path, line, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "text": "ok"}\n' + line + "\n")
    with pytest.raises(UserError, match=rf"bad.jsonl: line 2: {reason[:20]}"):
        list(read_documents(path))


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"latin1.jsonl: line 2: invalid UTF-8"):
        list(read_documents(path))
    txt = tmp_path / "t" / "bad.txt"
    txt.parent.mkdir()
    txt.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(UserError, match=r"bad.txt: line 2: invalid UTF-8"):
        list(read_documents(txt.parent))


def test_corrupt_gzip_is_a_user_error(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "a"}\n' * 100)[:40])
    with pytest.raises(UserError, match="x.jsonl.gz: line 1: corrupt compressed data"):
        list(read_documents(path))


def test_skip_mode_writes_and_counts_every_rejected_record(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"text": "good"}\n{"text": \n{"text": "caf\xe9"}\n{"text": "also good"}\n')
    rejects = Rejects(tmp_path / "rejects.jsonl")
    docs = list(read_documents(path, skip_bad=True, rejects=rejects))
    rejects.close()
    assert [d.text for d in docs] == ["good", "also good"]
    assert rejects.count == 2
    rows = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == [2, 3]
    assert "invalid JSON" in rows[0]["reason"] and "invalid UTF-8" in rows[1]["reason"]


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        list(read_documents(tmp_path / "nope.jsonl"))
    with pytest.raises(UserError, match="no documents found"):
        list(read_documents(tmp_path))


def test_writer_leaves_nothing_on_error(tmp_path):
    path = tmp_path / "out.jsonl.zst"
    with pytest.raises(RuntimeError), DocumentWriter(path) as w:
        w.write(DOCS[0])
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_zstd_file_is_an_error_not_a_shorter_file(tmp_path):
    import zstandard

    lines = b"".join(b'{"text": "document %d"}\n' % i for i in range(2000))
    frame = zstandard.ZstdCompressor(level=3).compress(lines)
    whole = tmp_path / "whole.jsonl.zst"
    whole.write_bytes(frame + zstandard.ZstdCompressor().compress(b'{"text": "second frame"}\n'))
    docs = list(read_documents(whole))
    assert len(docs) == 2001 and docs[-1].text == "second frame"  # every frame is read
    cut = tmp_path / "cut.jsonl.zst"
    cut.write_bytes(frame[: len(frame) * 2 // 3])
    with pytest.raises(UserError, match=r"cut.jsonl.zst: line \d+: corrupt compressed data \(the file ends "
                                        r"inside a zstd frame"):
        list(read_documents(cut))
    rejects = Rejects()
    with pytest.raises(UserError, match="corrupt compressed data"):  # --skip-bad cannot skip a cut file
        list(read_documents(cut, skip_bad=True, rejects=rejects))


def test_a_stray_state_json_does_not_make_a_folder_a_dataset(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "state.json").write_text('{"step": 3}')
    (data / "a.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    assert [d.text for d in read_documents(data)] == ["one", "two"]


def test_json_errors_read_once_at_column(tmp_path):
    path = tmp_path / "ctl.jsonl"
    path.write_bytes(b'{"text": "a\x01b"}\n')
    with pytest.raises(UserError) as e:
        list(read_documents(path))
    assert "line 1: invalid JSON (Invalid control character at column 12)" in str(e.value)
    assert "at at" not in str(e.value)


def test_a_damaged_gzip_is_corrupt_data_not_invalid_json(tmp_path):
    lines = b"".join(b'{"text": "document number %d with some words"}\n' % i for i in range(3000))
    raw = bytearray(gzip.compress(lines, compresslevel=1))
    for i in range(len(raw) // 2, len(raw) // 2 + 64):  # garble a stretch mid-stream
        raw[i] ^= 0x5A
    path = tmp_path / "hurt.jsonl.gz"
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"hurt.jsonl.gz: line \d+: corrupt compressed data"):
        list(read_documents(path))
