"""The decoding loop on a tiny model: greedy parity with model.generate, seeds, EOS, stop
strings, UTF-8 streaming, the KV-cache prefix, the CLI."""

from __future__ import annotations

import io

import pytest
import torch

from llm4all.cli import main as cli
from llm4all.errors import UserError
from llm4all.serve.backends import TorchLM, open_lm
from llm4all.serve.detokenize import REPLACEMENT
from llm4all.serve.generate import generate, stream
from llm4all.serve.sampling import Sampling

PROMPTS = ["the of and to", "she was with", "it"]


def hf_greedy(lm, prompt: str, n: int) -> list[int]:
    ids = lm.encode(prompt)
    out = lm.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_model_generate(lively_model, prompt):
    lm = open_lm(str(lively_model))
    result = generate(lm, prompt, max_new_tokens=30)
    assert result.token_ids == hf_greedy(lm, prompt, 30)
    assert len(set(result.token_ids)) > 5  # a real sequence, not one token repeated
    assert result.stop_reason == "length" and result.prompt_tokens == len(lm.encode(prompt))


def test_seeded_sampling_is_reproducible_and_depends_on_the_seed(lively_model):
    lm = open_lm(str(lively_model))
    runs = {seed: [generate(lm, "the of", max_new_tokens=25, sampling=Sampling(1.0, seed=seed)).token_ids
                   for _ in range(2)] for seed in (0, 1)}
    assert runs[0][0] == runs[0][1] and runs[1][0] == runs[1][1]
    assert runs[0][0] != runs[1][0]
    greedy = generate(lm, "the of", max_new_tokens=25).token_ids
    assert runs[0][0] != greedy
    # top-k 1 leaves one token to draw: the greedy one, whatever the temperature and seed
    top1 = Sampling(1.5, top_k=1, seed=3)
    assert generate(lm, "the of", max_new_tokens=25, sampling=top1).token_ids == greedy


def test_an_eos_token_from_the_generation_config_stops_generation(lively_model):
    lm = open_lm(str(lively_model))
    greedy = generate(lm, "she was with", max_new_tokens=20).token_ids
    k = next(i for i in range(3, 20) if greedy[i] not in greedy[:i])  # first time this token appears
    lm.model.generation_config.eos_token_id = greedy[k]
    stopped = generate(TorchLM(lm.model, lm.tokenizer), "she was with", max_new_tokens=20)
    assert stopped.stop_reason == "eos"
    assert stopped.token_ids == greedy[: k + 1]  # the EOS is returned but not shown as text
    assert stopped.text == generate(lm, "she was with", max_new_tokens=k).text
    assert hf_greedy(lm, "she was with", 20) == stopped.token_ids  # model.generate stops there too


def test_stop_string_split_over_tokens_and_utf8_through_the_loop(byte_bpe, scripted_lm):
    text = "Sure 🌊 café. User: ignored"
    script = byte_bpe(text)["input_ids"]
    user = byte_bpe(" User:")["input_ids"]
    assert len(user) > 1  # the stop string spans tokens
    pieces = []
    result = generate(scripted_lm(byte_bpe, script), "the", stop=["User:"], on_text=pieces.append)
    assert result.text == "".join(pieces) == "Sure 🌊 café. "
    assert all(REPLACEMENT not in p and "U" not in p for p in pieces)
    assert result.stop_reason == "stop"
    assert byte_bpe.decode(result.token_ids).endswith("User:")  # stopped on the token completing it
    full = generate(scripted_lm(byte_bpe, script), "the")
    assert full.text == text and full.stop_reason == "eos"
    assert generate(scripted_lm(byte_bpe, script), "the", max_new_tokens=3).stop_reason == "length"


def test_iterating_a_stream_gives_the_pieces_and_then_the_result(byte_bpe, scripted_lm):
    script = byte_bpe("one two")["input_ids"]
    s = stream(scripted_lm(byte_bpe, script), "the")
    assert s.result is None
    assert "".join(s) == "one two"
    assert s.result.text == "one two" and s.result.stop_reason == "eos"


def test_a_prompt_extending_the_cache_reuses_it(lively_model):
    lm = open_lm(str(lively_model))
    first = generate(lm, "the of and to", max_new_tokens=10)
    longer = lm.encode("the of and to") + first.token_ids + lm.encode("she was")
    again = generate(lm, longer, max_new_tokens=15)
    assert again.reused_tokens == len(longer) - 3  # all but the last generated token and "she was"
    assert again.token_ids == generate(open_lm(str(lively_model)), longer, max_new_tokens=15).token_ids


def test_ctrl_c_inside_the_forward_pass_leaves_a_usable_cache(lively_model):
    lm = open_lm(str(lively_model))
    expected = generate(lm, "she was with", max_new_tokens=12).token_ids
    calls = {"n": 0}

    def interrupt_fourth_step(module, args):
        calls["n"] += 1
        if calls["n"] == 4:  # layer 0 has cached step 4's keys, layer 1 has not started
            raise KeyboardInterrupt

    hook = lm.model.model.layers[-1].register_forward_pre_hook(interrupt_fourth_step)
    with pytest.raises(KeyboardInterrupt):
        generate(lm, "she was with", max_new_tokens=12)
    hook.remove()
    assert [layer.get_seq_length() for layer in lm.cache.layers] == [len(lm.cached)] * 2
    assert generate(lm, "she was with", max_new_tokens=12).token_ids == expected


def test_context_and_chat_template_errors(lively_model):
    lm = open_lm(str(lively_model))
    with pytest.raises(UserError, match="no chat template"):
        generate(lm, "hi", chat=True)
    with pytest.raises(UserError, match="context is 256"):
        list(stream(lm, " ".join(["the"] * 300)))
    assert generate(lm, " ".join(["the"] * 250), max_new_tokens=50).token_ids.__len__() == 6
    with pytest.raises(UserError, match="--max-new-tokens"):
        generate(lm, "the", max_new_tokens=0)


def test_chat_applies_the_template_with_a_system_message(lively_model):
    lm = open_lm(str(lively_model))
    # roles spelled with words of the tiny vocabulary: system -> they, user -> he, assistant -> you
    lm.tokenizer.chat_template = (
        "{% for m in messages %}<s>{{ 'he' if m['role'] == 'user' else 'they' }} {{ m['content'] }}</s>"
        "{% endfor %}{% if add_generation_prompt %}<s>you{% endif %}")
    from llm4all.serve.generate import prompt_ids

    ids = prompt_ids(lm, "the of", chat=True, system="she was")
    assert lm.tokenizer.decode(ids) == "<s> they she was </s> <s> he the of </s> <s> you"
    assert generate(lm, "the of", chat=True, system="she was", max_new_tokens=5).prompt_tokens == len(ids)


def test_cli_streams_to_stdout(lively_model, capsys):
    lm = open_lm(str(lively_model))
    expected = generate(lm, "the of and to", max_new_tokens=8).text
    assert cli(["generate", str(lively_model), "the of and to", "--max-new-tokens", "8"]) == 0
    out, err = capsys.readouterr()
    assert out == expected + "\n"
    assert "8 new tokens" in err and "stop: length" in err and "torch" in err
    assert cli(["generate", str(lively_model), "the", "--top-p", "0"]) == 2
    assert "--top-p" in capsys.readouterr().err
    assert cli(["generate", str(lively_model), "the", "--system", "x"]) == 2


def test_greedy_on_a_packed_int4_checkpoint_equals_its_model_generate(lively_model, tmp_path):
    from llm4all.compress.command import main as compress
    from llm4all.models.packed.qlinear import QuantLinear

    out = tmp_path / "int4"
    compress(str(lively_model), out=out, method={"name": "rtn", "bits": 4, "group_size": 32})
    lm = open_lm(str(out))
    assert any(isinstance(m, QuantLinear) for m in lm.model.modules())  # runs the packed layers
    for prompt in PROMPTS:
        assert generate(lm, prompt, max_new_tokens=20).token_ids == hf_greedy(lm, prompt, 20)


def test_cli_reads_the_prompt_from_stdin_and_stops_at_a_stop_string(lively_model, capsys, monkeypatch):
    lm = open_lm(str(lively_model))
    full = generate(lm, "she was with", max_new_tokens=10).text
    stop = full.split()[2]  # the third word of the greedy text
    monkeypatch.setattr("sys.stdin", io.StringIO("she was with"))
    assert cli(["generate", str(lively_model), "-", "--max-new-tokens", "10", "--stop", stop]) == 0
    out, err = capsys.readouterr()
    assert out == full[: full.index(stop)] + "\n" and "stop: stop" in err
