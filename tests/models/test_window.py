"""Sliding-window attention and attention sinks as model options: masks, caches, training, export."""

from __future__ import annotations

import json

import pytest
import torch

from llm4all.errors import UserError
from llm4all.models.kvcache import cache_bytes
from llm4all.models.load import load
from llm4all.models.window import window_mask, with_window

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ids_(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_a_llama_becomes_a_mistral_sharing_its_weights(tiny_model):
    net, _ = load(str(tiny_model))
    x = ids_(2, 30)
    with torch.no_grad():
        ref = net(input_ids=x).logits
        wide = with_window(net, 64)
        assert type(wide).__name__ == "MistralForCausalLM" and wide.config.sliding_window == 64
        assert wide.model.layers[0].self_attn.q_proj.weight is net.model.layers[0].self_attn.q_proj.weight
        assert torch.equal(wide(input_ids=x).logits, ref)  # a window longer than the text changes nothing
        assert not torch.allclose(with_window(net, 4)(input_ids=x).logits, ref)


def test_the_mask_is_mistrals_window_and_keeps_packed_sequences_apart(tiny_model):
    net = with_window(load(str(tiny_model))[0], 6)
    x = ids_(2, 40)
    pos = torch.cat([torch.arange(15), torch.arange(25)])[None].expand(2, -1)
    with torch.no_grad():
        native = net(input_ids=x, use_cache=False).logits
        ours = net(input_ids=x, attention_mask=window_mask(2, 40, 0, 6, 0, torch.float32, "cpu")).logits
        assert torch.equal(native, ours)
        packed = net(input_ids=x, position_ids=pos, attention_mask=window_mask(
            2, 40, 0, 6, 0, torch.float32, "cpu", pos)).logits
        alone = net(input_ids=x[:, 15:], use_cache=False).logits
        assert torch.allclose(packed[:, 15:], alone, atol=1e-5)
        assert torch.allclose(packed, net(input_ids=x, position_ids=pos, use_cache=False).logits, atol=1e-5)


def test_sinks_keep_the_first_tokens_in_reach(tiny_model):
    """Two layers of window 3 reach 5 tokens back: the last position sees a changed token 0 only
    through the sinks, and never a changed token 20."""
    x = ids_(1, 40)
    first, middle = x.clone(), x.clone()
    first[0, 0] = (x[0, 0] + 1) % 64
    middle[0, 20] = (x[0, 20] + 1) % 64
    last = {}
    with torch.no_grad():
        for sinks in (0, 2):
            net = with_window(load(str(tiny_model))[0], 3, sinks)
            last[sinks] = [net(input_ids=t, use_cache=False).logits[0, -1] for t in (x, first, middle)]
    assert torch.equal(last[0][0], last[0][1]) and torch.equal(last[0][0], last[0][2])
    assert not torch.allclose(last[2][0], last[2][1]) and torch.equal(last[2][0], last[2][2])


@pytest.mark.parametrize("sinks", [0, 2])
def test_generation_memory_is_flat_and_equals_recomputing_without_a_cache(tiny_model, sinks):
    from llm4all.serve.backends import TorchLM
    from llm4all.serve.generate import generate

    net, tok = load(str(tiny_model))
    net = with_window(net, 8, sinks)
    lm = TorchLM(net, tok)
    sizes = []
    for n in (20, 120):
        lm.crop(0)
        generate(lm, [3, 4, 5], max_new_tokens=n, stop=())
        sizes.append(cache_bytes(lm.cache))
    assert sizes[0] == sizes[1] > 0  # bounded by the window (+ sinks), not the length
    entries = sinks + 8 - 1  # the sinks and the last W - 1 tokens (the next query brings itself)
    assert sizes[0] == entries * 2 * 2 * 8 * 4 * 2  # (k, v) · layers · kv heads · head dim · fp32
    lm.crop(0)
    out = generate(lm, [3, 4, 5], max_new_tokens=40 if sinks == 0 else 6).token_ids
    x = [3, 4, 5]
    with torch.no_grad():  # recompute every step over the whole text, no cache
        for _ in range(len(out)):
            x.append(int(net(input_ids=torch.tensor([x]), use_cache=False).logits[0, -1].argmax()))
    # with sinks, positions move into the cache once it evicts: compare before the first eviction
    assert x[3:] == out


def test_presets_and_errors(tiny_model):
    from llm4all.catalog import PRESETS

    config = PRESETS.build({"name": "llama-test", "sliding_window": 16, "attention_sinks": 2})
    assert config.model_type == "mistral" and config.sliding_window == 16 and config.attention_sinks == 2
    assert PRESETS.build({"name": "llama-10m-swa"}).sliding_window == 256
    with pytest.raises(UserError, match="attention_sinks needs sliding_window"):
        PRESETS.build({"name": "llama-test", "attention_sinks": 2})
    net = load(str(tiny_model))[0]
    with pytest.raises(UserError, match="--attention-sinks needs --sliding-window"):
        with_window(net, 0, 4)
    net.config.model_type = "gpt2"
    with pytest.raises(UserError, match="gpt2 models are not supported; valid: llama, mistral"):
        with_window(net, 8)


def test_train_with_a_window_and_sinks_saves_a_mistral_that_reloads_with_them(tmp_path):
    from llm4all.evaluate.perplexity import main as perplexity
    from llm4all.export.command import main as export
    from llm4all.train.command import main as train
    from tinymodels import tiny_teacher_and_shards

    teacher = tiny_teacher_and_shards(tmp_path)
    result = train(tmp_path / "shards", out=tmp_path / "run", model=str(teacher), steps=6, seq_len=32,
                   micro_batch=4, precision="fp32", sliding_window=8, attention_sinks=2)
    saved = tmp_path / "run" / "model"
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "mistral"
    assert config["sliding_window"] == 8 and config["attention_sinks"] == 2
    ppl = perplexity(saved, tmp_path / "shards", context=32, stride=32)
    assert ppl["sliding_window"] == 8 and ppl["attention_sinks"] == 2
    assert ppl["ppl"] == pytest.approx(result["val_ppl"], rel=1e-4)  # the loop scored the same attention
    wide = perplexity(saved, tmp_path / "shards", context=32, stride=32, sliding_window=64)
    assert wide["ppl"] != pytest.approx(ppl["ppl"], rel=1e-4)
    with pytest.raises(UserError, match="2 attention sinks, a mask only llm4all applies"):
        export(str(saved), out=tmp_path / "hf", format="hf")
    with pytest.raises(UserError, match="sliding window"):
        from llm4all.export.gguf import export_gguf

        export_gguf(saved, tmp_path / "x.gguf")


def test_padded_batches_score_as_their_rows_alone(tiny_model):
    """eval tasks pads rows to one length: the sinks mask keeps the 2-D padding mask's meaning."""
    net = with_window(load(str(tiny_model))[0], 6, 2)
    x = ids_(2, 20)
    padding = torch.ones(2, 20, dtype=torch.long)
    padding[1, 12:] = 0  # the second row is 12 tokens, right-padded
    with torch.no_grad():
        both = net(input_ids=x, attention_mask=padding, use_cache=False).logits
        alone = net(input_ids=x[1:, :12], use_cache=False).logits
    assert torch.allclose(both[1, :12], alone[0], atol=1e-5) and torch.isfinite(both).all()
