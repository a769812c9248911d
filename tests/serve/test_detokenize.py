"""Incremental detokenisation (split UTF-8 characters) and stop strings (split over pieces)."""

from __future__ import annotations

import pytest

from llm4all.serve.detokenize import REPLACEMENT, ByteDetokenizer, StopStrings, TokenDetokenizer

TEXT = "café au lait 🌊 日本語, naïve"


def stream(detokenizer, ids):
    pieces = [detokenizer.push(t) for t in ids]
    return pieces, detokenizer.flush()


def test_byte_bpe_splits_characters_and_the_stream_never_shows_half_of_one(byte_bpe):
    ids = byte_bpe(TEXT)["input_ids"]
    assert any(REPLACEMENT in byte_bpe.decode([t]) for t in ids)  # the test needs split characters
    pieces, tail = stream(TokenDetokenizer(byte_bpe), ids)
    assert all(REPLACEMENT not in p for p in pieces)
    assert "".join(pieces) + tail == TEXT
    assert tail == ""
    # the emoji (4 bytes) appears in one piece, whole
    assert any("🌊" in p for p in pieces)


def test_context_from_the_prompt_keeps_the_first_leading_space(byte_bpe):
    prompt = byte_bpe("the of")["input_ids"]
    new = byte_bpe("the of and café")["input_ids"][len(prompt):]
    pieces, tail = stream(TokenDetokenizer(byte_bpe, prompt), new)
    assert "".join(pieces) + tail == " and café"


def test_an_invalid_byte_sequence_is_shown_at_the_end(byte_bpe):
    ids = byte_bpe("🌊")["input_ids"]
    assert len(ids) >= 2
    pieces, tail = stream(TokenDetokenizer(byte_bpe), ids[:-1])  # the emoji cut short
    assert "".join(pieces) == "" and REPLACEMENT in tail


def test_byte_detokenizer_joins_utf8_across_tokens():
    data = TEXT.encode()
    chunks = [data[i : i + 3] for i in range(0, len(data), 3)]  # cuts through characters
    pieces, tail = stream(ByteDetokenizer(lambda i: chunks[i]), range(len(chunks)))
    assert all(REPLACEMENT not in p for p in pieces)
    assert "".join(pieces) + tail == TEXT


@pytest.mark.parametrize("pieces, stops, shown", [
    (["Hello", " wor", "ld. Bye"], ["world"], "Hello "),         # split over two pieces
    (["a", "b", "c", "d", "e"], ["cd"], "ab"),                   # one character at a time
    (["ab", "cX", "d"], ["cd"], "abcXd"),                        # a false start is released
    (["User", ":", " hi"], ["\nUser:", "User:"], ""),            # the earliest of several
    (["one\n", "\nUser", ": x"], ["\n\nUser:"], "one"),
    (["no stop here"], [], "no stop here"),
])
def test_stop_strings(pieces, stops, shown):
    s = StopStrings(stops)
    out = "".join(s.push(p) for p in pieces) + s.flush()
    assert out == shown
    assert s.stopped == any(st in "".join(pieces) for st in stops)


def test_held_back_text_is_shown_when_generation_ends_without_a_stop():
    s = StopStrings(["STOP"])
    assert s.push("text ST") == "text "  # "ST" may begin "STOP"
    assert s.flush() == "ST"
    assert not s.stopped
