"""Layer, head and channel importance on calibration tokens, and students chosen by it."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llm4all.errors import UserError
from llm4all.models.build import StudentInit, evenly_spaced
from llm4all.models.importance import (
    angular_distance,
    block_influence,
    residual_stream,
    select_layers_by_importance,
    width_importance,
)
from llm4all.models.init import student_from_teacher
from tinymodels import tiny_teacher_and_shards

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def llama(layers: int = 4, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def make_identity(model: LlamaForCausalLM, layer: int) -> None:
    """A layer whose attention and MLP write nothing: its output equals its input."""
    with torch.no_grad():
        model.model.layers[layer].self_attn.o_proj.weight.zero_()
        model.model.layers[layer].mlp.down_proj.weight.zero_()


IDS = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))


def test_residual_stream_is_the_input_of_every_layer_and_the_last_output():
    model = llama()
    stream = residual_stream(model, IDS, batch_size=3)
    assert len(stream) == 5 and stream[0].shape == (64, 32)
    out = model(input_ids=IDS, output_hidden_states=True).hidden_states
    for i in range(4):
        assert torch.allclose(stream[i], out[i].reshape(-1, 32), atol=1e-6)
    assert torch.allclose(model.model.norm(stream[4].reshape(4, 16, 32)), out[4], atol=1e-5)


def test_an_identity_layer_has_zero_block_influence_and_goes_first():
    model = llama()
    make_identity(model, 2)
    stream = residual_stream(model, IDS)
    bi = block_influence(stream)
    assert abs(bi[2]) < 1e-9 and min(bi[0], bi[1], bi[3]) > 1e-3
    assert select_layers_by_importance(stream, 3, "block_influence") == [0, 1, 3]


def test_the_block_of_identity_layers_is_the_one_angular_distance_drops():
    model = llama(layers=5)
    make_identity(model, 1)
    make_identity(model, 2)
    stream = residual_stream(model, IDS)
    d = angular_distance(stream, 2)
    assert d[1] < 1e-6 and min(d[0], d[2]) > 1e-3  # x_1 == x_3: the block of layers 1, 2
    assert select_layers_by_importance(stream, 3, "angular") == [0, 3, 4]


def test_width_importance_scores_a_silent_head_and_channel_zero_and_the_student_drops_them():
    model = llama(layers=2)
    head_dim = 8
    with torch.no_grad():
        model.model.layers[0].self_attn.v_proj.weight[:head_dim].zero_()  # KV head 0: query heads 0, 1
        model.model.layers[1].mlp.up_proj.weight[5].zero_()  # channel 5 of layer 1
    scores = width_importance(model, IDS)
    assert scores[0]["heads"][:2].abs().max() == 0 and scores[0]["heads"][2:].min() > 0
    assert scores[1]["channels"][5] == 0 and scores[1]["channels"].count_nonzero() == 63
    student = student_from_teacher(model, every=1, num_attention_heads=2, num_key_value_heads=1,
                                   intermediate_size=63, importance=scores)
    q = student.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(q, model.model.layers[0].self_attn.q_proj.weight[2 * head_dim:])  # group 1 kept
    up = student.model.layers[1].mlp.up_proj.weight
    assert up.shape == (63, 32) and up.abs().sum(1).min() > 0  # the silent channel is gone


def test_evenly_spaced_keeps_first_and_last():
    assert evenly_spaced(30, 12) == [0, 3, 5, 8, 11, 13, 16, 18, 21, 24, 26, 29]
    assert evenly_spaced(4, 4) == [0, 1, 2, 3] and evenly_spaced(7, 1) == [0]


@pytest.mark.parametrize("kwargs, message", [
    ({"init_layers": [0, 1], "init_every": 2}, "give one of --init-layers, --init-every, --init-keep"),
    ({"init_select": "angular"}, "give --init-keep N"),
    ({"init_keep": 0}, "--init-keep must be at least 1"),
])
def test_student_init_refuses_contradictions(kwargs, message):
    with pytest.raises(UserError, match=message):
        StudentInit(**kwargs)


@pytest.mark.slow
def test_distill_a_student_of_the_most_influential_layers(tmp_path):
    from llm4all.distill.command import main as distill

    teacher = tiny_teacher_and_shards(tmp_path, layers=4)
    result = distill(tmp_path / "shards", out=tmp_path / "kd", teacher=str(teacher), init_keep=2,
                     init_select="block_influence", init_width="activations", init_calibration_tokens=256,
                     steps=2, seq_len=32, micro_batch=4, precision="fp32", top_k=8, max_windows=8, warmup=1)
    assert result["step"] == 2
    config = json.loads((tmp_path / "kd" / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    manifest = json.loads((tmp_path / "kd" / "llm4all.json").read_text())
    assert "2 layers by block_influence" in manifest["models"][0]["source"]
