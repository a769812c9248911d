"""Recovery after pruning through llm4all distill: masks survive, the student moves toward the teacher."""

from __future__ import annotations

import json

import pytest
import torch

from llm4all.compress.command import main as compress
from llm4all.errors import UserError
from llm4all.models.load import load
from tinymodels import tiny_teacher_and_shards

OPTIONS = {"lr": 1e-3, "precision": "fp32", "seq_len": 32, "micro_batch": 4, "eval_tokens": 512}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("recover")
    teacher = tiny_teacher_and_shards(root, hidden=64, layers=2)
    return root, teacher


@pytest.fixture(scope="module")
def trained(setup):
    """A teacher worth recovering towards: the tiny model after 20 steps on the shards."""
    from llm4all.train.command import main as train

    root, init = setup
    train(root / "shards", out=root / "trained", model=str(init), steps=20, lr=1e-2, seq_len=32,
          micro_batch=8, precision="fp32", warmup=2)
    return root / "trained" / "model"


@pytest.mark.slow
def test_wanda_then_recovery_keeps_the_mask_and_recovers(setup, trained, tmp_path):
    root, _ = setup
    out = tmp_path / "w"
    result = compress(str(trained), out=out, method={"name": "wanda", "sparsity": 0.75},
                      calib=root / "shards", calib_tokens=256, seq_len=32, recover_steps=8,
                      recover_options=OPTIONS)
    before, _ = load(tmp_path / "w.recovery" / "compressed")  # the pruned checkpoint, as distilled
    after, _ = load(out)
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        w0, w1 = before.get_submodule(name).weight, after.get_submodule(name).weight
        assert torch.equal(w0 == 0, w1 == 0)  # the same weights are pruned, exactly
        assert (w1 == 0).float().mean() == 0.75 and not torch.equal(w0, w1)  # and the others trained
    teacher = json.loads((root / "trained" / "result.json").read_text())["val_ppl"]
    rec = json.loads((out / "llm4all_quant.json").read_text())["recovery"]
    # measured: teacher 43.16, pruned 43.71, recovered 43.15
    assert rec["val_ppl_after"] < teacher + 0.5 * (rec["val_ppl_before"] - teacher) < rec["val_ppl_before"]
    meta = json.loads((out / "llm4all_quant.json").read_text())
    assert meta["modules"]["model.layers.1.mlp.down_proj"]["kind"] == "sparse"
    assert rec["steps"] == 8 and "->" in result["recovered_val_ppl"]


def test_structured_pruning_recovers_with_shrunk_shapes(setup, tmp_path):
    root, teacher = setup
    out = tmp_path / "s"
    compress(str(teacher), out=out, method={"name": "structured", "heads": 0.5, "ffn": 0.25},
             calib=root / "shards", calib_tokens=256, seq_len=32, recover_steps=4, recover_options=OPTIONS)
    net, _ = load(out)
    assert net.model.layers[0].self_attn.q_proj.weight.shape == (32, 64)
    assert net.model.layers[0].mlp.up_proj.weight.shape == (96, 64)
    assert torch.isfinite(net(input_ids=torch.tensor([[4, 5, 6]])).logits).all()


@pytest.mark.parametrize("method, options, match", [
    ({"name": "rtn", "bits": 4, "group_size": 32}, {}, "quantised"),
    ({"name": "wanda"}, {"steps": 3}, "set by compress itself"),
])
def test_recovery_bad_inputs(setup, tmp_path, method, options, match):
    root, teacher = setup
    with pytest.raises(UserError, match=match):
        compress(str(teacher), out=tmp_path / "bad", method=method, calib=root / "shards", calib_tokens=256,
                 seq_len=32, recover_steps=2, recover_options=options)
    assert not (tmp_path / "bad").exists()
