"""Speed measurements return sane numbers; bad flags are rejected before any work."""

import pytest

from llm4all.errors import UserError
from llm4all.evaluate.speed import decode_speed, main, prefill_speed
from llm4all.models.load import load


def test_prefill_and_decode_numbers(tiny_model):
    model, _ = load(tiny_model)
    p = prefill_speed(model, 32, batch=2, repeats=2)
    assert p["tokens_per_s"] == pytest.approx(64 / p["seconds"]) and p["tokens_per_s"] > 0
    d = decode_speed(model, new_tokens=8, batch=3, repeats=2)
    lat = d["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert d["tokens_per_s"] > 0 and d["batch"] == 3


@pytest.mark.slow
def test_command_with_memory(tiny_model, tmp_path):
    r = main(str(tiny_model), dtypes=["float32", "bfloat16"], prompt_lengths=[16, 64], new_tokens=4,
             batch_sizes=[1, 2], repeats=1, memory=True, out=tmp_path)
    fp32 = r["dtypes"]["float32"]
    assert [p["prompt_tokens"] for p in fp32["prefill"]] == [16, 64]
    assert [d["batch"] for d in r["dtypes"]["bfloat16"]["decode"]] == [1, 2]
    m = fp32["memory"]
    assert m["peak_rss_mib"] >= m["rss_after_load_mib"] >= m["rss_before_load_mib"] > 50
    assert (tmp_path / "speed.json").exists()


def test_bad_flags(tiny_model):
    with pytest.raises(UserError, match="--dtypes"):
        main(str(tiny_model), dtypes=["int3"])
    with pytest.raises(UserError, match="at least 1"):
        main(str(tiny_model), batch_sizes=[0])
    model, _ = load(tiny_model)
    with pytest.raises(UserError, match="--new-tokens"):
        decode_speed(model, new_tokens=1)


def _bytes(tensors) -> int:
    unique = {id(t): t for t in tensors}
    return sum(t.numel() * t.element_size() for t in unique.values())


@pytest.mark.parametrize("kind", ["int8", "float16"])
@pytest.mark.parametrize("tied", [False, True])
def test_weight_bytes_counts_a_packed_embedding_only_where_the_head_reads_it(kind, tied):
    """The energy estimate's bytes per decode step: a packed (int8 rows + scales, or float16)
    input embedding has no ``weight`` parameter; it is left out unless it is also the head
    (make demo's speed_adapted_int4 stage failed on exactly this)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm4all.evaluate.speed import weight_bytes
    from llm4all.models.packed.embedding import PackedEmbedding

    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    emb = model.get_input_embeddings()
    everything = [*model.parameters(), *model.buffers()]
    assert weight_bytes(model) == _bytes(everything) - _bytes(emb.parameters())  # not read per step
    packed = PackedEmbedding.from_weight(emb.weight.detach(), kind)
    model.set_input_embeddings(packed)
    if tied:
        model.lm_head = packed  # the head reads the same packed rows
    packed_bytes = _bytes(packed.buffers())
    assert packed_bytes == 96 * 32 * (1 if kind == "int8" else 2) + (96 * 2 if kind == "int8" else 0)
    everything = [*model.parameters(), *model.buffers()]
    assert weight_bytes(model) == _bytes(everything) - (0 if tied else packed_bytes)
