"""generate and chat on the real SmolLM2-135M-Instruct: greedy parity with model.generate
(fp32 and packed int4), its byte-level BPE splitting emoji and CJK, a two-turn chat."""

from __future__ import annotations

import io

import pytest
import torch

from llm4all.serve.backends import open_lm
from llm4all.serve.chat import ChatSession, run
from llm4all.serve.detokenize import REPLACEMENT, TokenDetokenizer
from llm4all.serve.generate import generate

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France? Answer in one sentence."


def assert_greedy_parity(lm, n: int = 32):
    ids = lm.chat_ids([{"role": "user", "content": QUESTION}])
    ours = generate(lm, QUESTION, chat=True, max_new_tokens=n)
    with torch.no_grad():
        ref = lm.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n)[0, len(ids):]
    assert ours.token_ids == ref.tolist()
    assert ours.text == lm.tokenizer.decode(ours.token_ids, skip_special_tokens=True)
    return ours


def test_greedy_equals_model_generate_fp32():
    result = assert_greedy_parity(open_lm("smollm2-135m"))
    assert "Paris" in result.text and result.stop_reason == "eos"


def test_greedy_equals_model_generate_packed_int4(tmp_path):
    from llm4all.compress.command import main as compress

    compress("smollm2-135m", out=tmp_path / "int4", method={"name": "rtn", "bits": 4, "group_size": 64})
    assert_greedy_parity(open_lm(str(tmp_path / "int4")))


def test_smollm2_splits_emoji_and_cjk_and_the_stream_shows_whole_characters():
    lm = open_lm("smollm2-135m")
    text = "Waves 🌊 and 日本語 (Japanese), naïve café ✓"
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    split = [t for t in ids if REPLACEMENT in lm.tokenizer.decode([t])]
    assert len(split) >= 4  # tokens that hold part of a character
    detokenizer = TokenDetokenizer(lm.tokenizer)
    pieces = [detokenizer.push(t) for t in ids]
    assert all(REPLACEMENT not in p for p in pieces)
    assert "".join(pieces) + detokenizer.flush() == text


def test_split_stop_string_and_emoji_on_the_smollm2_tokenizer(scripted_lm):
    lm = open_lm("smollm2-135m")
    script = lm.tokenizer("Sure! 🌊🌊 Done.\nUser: more", add_special_tokens=False)["input_ids"]
    result = generate(scripted_lm(lm.tokenizer, script), "Hi", stop=["\nUser:"])
    assert result.text == "Sure! 🌊🌊 Done." and result.stop_reason == "stop"


def test_two_turn_chat_reuses_the_cache_and_answers_as_a_fresh_model_would():
    session = ChatSession(open_lm("smollm2-135m"), max_new_tokens=24)
    out = io.StringIO()
    run(session, io.StringIO("What is the capital of France?\nAnd of Italy?\n/exit\n"), out)
    assert len(session.turns) == 2 and "Paris" in session.messages[1]["content"]
    second = session.turns[1]
    assert second.reused_tokens >= session.turns[0].prompt_tokens  # the first turn is not fed again
    fresh = open_lm("smollm2-135m")
    reference = generate(fresh, fresh.chat_ids(session.messages[:3]), max_new_tokens=24)
    assert session.messages[3]["content"] == reference.text
