"""Speculative decoding reproduces the target's greedy output for any draft."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llm4all.errors import UserError
from llm4all.evaluate.speculative import (
    ModelDraft,
    NgramDraft,
    compare,
    greedy,
    make_draft,
    speculative,
)


def random_llama(layers: int, seed: int) -> LlamaForCausalLM:
    """A tiny Llama with large random weights, so greedy outputs vary (not one repeated token)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.3)
    return LlamaForCausalLM(config).eval()


def no_cache_greedy(model, prompt, n):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


def test_cached_greedy_equals_recomputation():
    target = random_llama(3, 0)
    assert greedy(target, [5, 6, 7], 25) == no_cache_greedy(target, [5, 6, 7], 25)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_output_identical_to_target_greedy(seed, k):
    target = random_llama(3, seed)
    ref = greedy(target, [5, 6, 7, 8], 20)
    accepted = []
    for draft in (ModelDraft(random_llama(1, 100 + seed)), make_draft("layers:2", target), NgramDraft(2),
                  ModelDraft(target)):
        out, stats = speculative(target, draft, [5, 6, 7, 8], 20, k)
        assert out == ref
        assert stats["accepted"] <= stats["proposed"]
        accepted.append(stats["accepted"] / max(stats["proposed"], 1))
    assert accepted[-1] == 1.0  # the target as its own draft: every proposal is accepted


def test_chain_draft_asks_the_model_only_when_the_lookup_has_nothing():
    target = random_llama(3, 8)
    prompt = [5, 6, 7, 8, 5, 6, 7]  # "5 6 7" repeats: the lookup proposes 8 first
    ref = greedy(target, prompt, 24)
    calls = []

    class Counting(ModelDraft):
        def propose(self, seq, k):
            calls.append(len(seq))
            return super().propose(seq, k)

    chain = make_draft("ngram:3|layers:2", target)
    chain.drafts[1].__class__ = Counting
    out, stats = speculative(target, chain, prompt, 24, k=3)
    assert out == ref and stats["proposed"] > 0
    lookup_steps = sum(1 for n in range(len(prompt), len(prompt) + 24)
                       if NgramDraft(3).propose((prompt + ref)[:n], 3))
    assert len(calls) < stats["target_forwards"]  # the model was skipped when the lookup matched
    assert lookup_steps > 0


def test_perfect_draft_needs_one_forward_per_k_plus_1_tokens():
    target = random_llama(2, 3)
    out, stats = speculative(target, ModelDraft(target), [1, 2, 3], 24, k=3)
    assert len(out) == 24 and stats["target_forwards"] == 6  # 4 tokens per target pass


def test_eos_stops_both_decoders():
    target = random_llama(2, 4)
    ref = greedy(target, [9, 10], 30)
    eos = ref[7]
    expected = ref[: ref.index(eos) + 1]
    assert greedy(target, [9, 10], 30, eos_token_id=eos) == expected
    out, _ = speculative(target, ModelDraft(random_llama(1, 5)), [9, 10], 30, k=4, eos_token_id=eos)
    assert out == expected


def test_compare_reports_speed_and_acceptance():
    target = random_llama(2, 6)
    r = compare(target, "layers:1", [[1, 2, 3], [4, 5]], max_new_tokens=10, k=2)
    assert r["identical"] and r["tokens"] == 20 and 0 <= r["acceptance"] <= 1
    assert r["speedup"] > 0 and r["target_tokens_per_s"] > 0


def test_bad_drafts():
    target = random_llama(2, 7)
    with pytest.raises(UserError, match="1..1"):
        make_draft("layers:2", target)
    with pytest.raises(UserError, match="integer"):
        make_draft("layers:x", target)
    with pytest.raises(UserError, match="at least 1"):
        speculative(target, NgramDraft(2), [1, 2], 5, k=0)
    with pytest.raises(UserError, match="unknown model"):
        make_draft("no-such-draft", target)


@pytest.mark.slow
def test_teacher_speculative_output_is_its_greedy_output():
    from llm4all.models.load import load

    target, tok = load("smollm2-135m")
    text = "In the beginning God created the heaven and the earth."
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    ref = greedy(target, prompt, 12)
    for spec in ("layers:4", "ngram:2"):
        out, _ = speculative(target, make_draft(spec, target), prompt, 12, k=3)
        assert out == ref
