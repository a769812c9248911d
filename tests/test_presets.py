import json

import pytest
import torch

from llm4all.catalog import PRESETS
from llm4all.errors import UserError
from llm4all.models.presets import (
    build_model,
    count_parameters,
    from_plan,
    llama_config,
    preset,
    presets,
    shape_for,
)
from llm4all.plan.arch import from_hf_config


def test_registry_lists_every_preset_with_a_cited_one_line_doc():
    names = PRESETS.names()
    assert {"llama-test", "llama-10m", "llama-30m", "llama-60m", "smollm2-135m", "smollm2-360m",
            "llama-1b"} <= set(names)
    assert all(doc for _, doc in PRESETS.describe())


def test_published_shapes_match_their_model_cards():
    c = preset("smollm2-135m")
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.intermediate_size, c.vocab_size, c.tie_word_embeddings) == (576, 30, 9, 3, 1536, 49152, True)
    assert c.rope_parameters["rope_theta"] == 100000.0 and c.max_position_embeddings == 8192
    # published totals: SmolLM2-135M 134.5M, SmolLM2-360M 361.8M, Llama-3.2-1B 1.236B (tied)
    assert count_parameters(c)["total"] == 134_515_008
    assert count_parameters(preset("smollm2-360m"))["total"] == 361_821_120
    assert count_parameters(preset("llama-1b"))["total"] == 1_235_814_400


@pytest.mark.parametrize("name,options", [("llama-test", {}), ("llama-test", {"tie_word_embeddings": False}),
                                          ("llama-10m", {"vocab_size": 1000})])
def test_count_parameters_equals_the_built_model(name, options):
    config = preset(name, **options)
    model = build_model(config, seed=0)
    n = count_parameters(config)
    assert n["total"] == sum(p.numel() for p in model.parameters())
    assert n["embedding"] == config.vocab_size * config.hidden_size * (1 if config.tie_word_embeddings else 2)
    assert model.config._attn_implementation == "sdpa"


def test_count_parameters_with_biases_and_parity_with_the_planner():
    config = llama_config(64, 2, 4, 2, 160, head_dim=16, vocab_size=300, tie_word_embeddings=False)
    config.attention_bias = config.mlp_bias = True
    assert count_parameters(config)["total"] == sum(p.numel() for p in build_model(config).parameters())
    for name in ("smollm2-135m", "llama-1b", "llama-30m"):
        c = preset(name)
        assert count_parameters(c)["total"] == from_hf_config(c.to_dict()).n_params()


def test_family_rule_recovers_smollm2_135m_and_names_the_small_presets():
    assert shape_for(134_515_008, vocab_size=49152) == {
        "hidden": 576, "layers": 30, "heads": 9, "kv_heads": 3, "intermediate": 1536}
    for name, target in (("llama-10m", 10e6), ("llama-30m", 30e6), ("llama-60m", 60e6)):
        n = count_parameters(preset(name))["non_embedding"]
        assert abs(n / target - 1) < 0.1, (name, n)


def test_build_model_is_seeded_and_leaves_the_global_rng_alone():
    c = preset("llama-test", vocab_size=100)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b, other = build_model(c, seed=1), build_model(c, seed=1), build_model(c, seed=2)
    assert torch.rand(1) == before
    wa, wb = a.model.embed_tokens.weight, b.model.embed_tokens.weight
    assert torch.equal(wa, wb) and not torch.equal(wa, other.model.embed_tokens.weight)
    assert build_model(c, dtype="bf16").dtype == torch.bfloat16


def test_from_plan_uses_arch_or_picks_the_closest_family_shape(tmp_path):
    from llm4all.plan.commands import chinchilla, memory

    plan = memory(model="smollm2-135m", json=True, out=tmp_path / "m.json")
    c = from_plan(json.loads((tmp_path / "m.json").read_text()))
    assert (c.hidden_size, c.num_hidden_layers, c.num_key_value_heads) == (576, 30, 3)
    assert count_parameters(c)["total"] == plan["params"]
    plan = chinchilla(params=50e6, json=True)
    c = from_plan(plan)
    assert abs(count_parameters(c)["total"] / 50e6 - 1) < 0.1
    assert from_plan(plan, vocab_size=1000).vocab_size == 1000


def test_bad_inputs_are_user_errors():
    with pytest.raises(UserError, match="did you mean 'vocab_size'"):
        preset("llama-test", vocab_sise=10)
    with pytest.raises(UserError, match="unknown presets entry 'llama-2m'"):
        preset("llama-2m")
    with pytest.raises(UserError, match="no 'arch' or 'params'"):
        from_plan({"tokens": 1e9})
    with pytest.raises(UserError, match="arch is missing 'layers'"):
        from_plan({"arch": {"hidden": 64, "heads": 4, "intermediate": 128}})
    with pytest.raises(UserError, match="below the smallest shape"):
        shape_for(1e5, vocab_size=49152)
    with pytest.raises(UserError, match="unknown dtype"):
        build_model(preset("llama-test"), dtype="int3")


def test_presets_command_lists_counts(capsys):
    rows = presets(vocab_size=1000)
    assert {r["vocab"] for r in rows} == {1000}
    assert "smollm2-135m" in capsys.readouterr().out
