"""StreamingLLM cache: fixed size, exact when the text fits, keys re-rotated to their slots."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from llm4all.errors import UserError
from llm4all.evaluate.sinks import main, streaming_generate, streaming_nll
from llm4all.models.window import evict_all, sink_cache


def random_llama(seed: int = 0, max_positions: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                         initializer_range=0.3)
    return LlamaForCausalLM(config).eval()


def test_equals_full_attention_when_text_fits():
    model = random_llama()
    tokens = torch.randint(0, 64, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        full = model(torch.tensor([tokens])).logits[0]
        cache = sink_cache(model, 4, 40)
        steps = [model(input_ids=torch.tensor([[t]]), cache=cache, use_cache=True).logits[0]
                 for t in tokens]
    torch.testing.assert_close(torch.cat(steps), full, atol=1e-4, rtol=1e-4)
    direct = torch.nn.functional.cross_entropy(full[:-1], torch.tensor(tokens[1:])).item()
    for chunk in (1, 7):
        assert streaming_nll(model, tokens, 4, 40, chunk)["nll"] == pytest.approx(direct, abs=1e-5)


@pytest.mark.parametrize("sinks, window", [(4, 8), (0, 8), (2, 5)])
def test_cache_keeps_exactly_sinks_plus_window(sinks, window):
    model = random_llama()
    cache = sink_cache(model, sinks, window)
    with torch.no_grad():
        for t in range(30):
            model(input_ids=torch.tensor([[t % 64]]), cache=cache, use_cache=True)
            evict_all(cache)
            assert cache.get_seq_length() == min(t + 1, sinks + window)
            assert all(layer.values.shape[-2] == min(t + 1, sinks + window) for layer in cache.layers)


def test_keys_are_rerotated_to_their_slots():
    """Layer 0's key of a token depends only on the token and its position: after evictions the
    cached key of the token at text index i in slot j must be k_proj(norm(embed(token))) at j."""
    model = random_llama()
    tokens = list(range(3, 33))
    cache = sink_cache(model, 2, 6)
    with torch.no_grad():
        for t in tokens:
            model(input_ids=torch.tensor([[t]]), cache=cache, use_cache=True)
            evict_all(cache)
        kept = tokens[:2] + tokens[-6:]
        attn = model.model.layers[0].self_attn
        h = model.model.layers[0].input_layernorm(model.model.embed_tokens(torch.tensor([kept])))
        k = attn.k_proj(h).view(1, len(kept), -1, attn.head_dim).transpose(1, 2)
        cos, sin = model.model.rotary_emb(h, torch.arange(len(kept))[None])
        _, expected = apply_rotary_pos_emb(k, k, cos, sin)
        layer = cache.layers[0]
        got = layer.update(k[..., :0, :], k[..., :0, :])[0]  # read the rotated keys without appending
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_runs_past_the_training_context():
    model = random_llama(max_positions=64)
    tokens = torch.randint(0, 64, (100,), generator=torch.Generator().manual_seed(1)).tolist()
    r = streaming_nll(model, tokens, 4, 28)
    assert r["tokens"] == 99 and r["max_cache"] == 32 and r["ppl"] > 1
    assert len(streaming_generate(model, tokens[:60], 30, 4, 28)) == 30  # 90 tokens > 64 positions


def test_bad_sink_settings(tiny_model):
    model = random_llama()
    with pytest.raises(UserError, match="--window"):
        sink_cache(model, 4, 0)
    with pytest.raises(UserError, match="--max-tokens"):
        main(str(tiny_model), max_tokens=1)


@pytest.mark.slow
def test_command_on_a_file(tiny_model, docs_jsonl, tmp_path):
    r = main(str(tiny_model), data=docs_jsonl, window=16, sinks=2, max_tokens=60, chunk=4, generate=4,
             out=tmp_path)
    rows = r["results"]
    assert rows["sinks 2 + window 16"]["max_cache"] <= 2 + 16 + 4 - 1 and r["tokens"] == 60
    assert (tmp_path / "sinks.json").exists() and isinstance(r["generated_sinks"], str)
