"""Mixed precision and activation checkpointing in train and distill, checked by their results
(issue 16 item 1): checkpointing changes no gradient, bf16 autocast changes the numbers a little
and not the outcome, and fp16's gradient scaler skips a step that overflows."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from llm4all.distill.command import main as distill
from llm4all.train.command import main as train
from tinymodels import tiny_teacher_and_shards

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = {"steps": 3, "seq_len": 32, "micro_batch": 4, "warmup": 1, "lr": 3e-3, "eval_tokens": 512}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    return root, tiny_teacher_and_shards(root, layers=4)


def run(command: str, setup, out, **kw) -> tuple[dict, dict]:
    root, teacher = setup
    if command == "train":
        result = train(root / "shards", out=out, model=str(teacher), **STEPS, **kw)
    else:
        result = distill(root / "shards", out=out, teacher=str(teacher), mode="online", **STEPS, **kw)
    return result, load_file(out / "model" / "model.safetensors")


def first_loss(out) -> float:
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]


@pytest.mark.parametrize("command", ["train", "distill"])
def test_checkpointing_is_exact_and_bf16_is_close(setup, tmp_path, command, monkeypatch):
    import transformers.modeling_utils as mu  # it holds its own reference to torch's checkpoint

    calls, real = [], mu.checkpoint
    monkeypatch.setattr(mu, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    _, plain = run(command, setup, tmp_path / "fp32", precision="fp32")
    assert not calls
    _, ckpt = run(command, setup, tmp_path / "ckpt", precision="fp32", activation_checkpointing=True)
    assert calls  # the layers did run through torch.utils.checkpoint
    for name, w in plain.items():  # recomputed activations: the same gradients, so the same weights
        torch.testing.assert_close(ckpt[name], w, rtol=1e-5, atol=1e-6, msg=name)
    run(command, setup, tmp_path / "bf16", precision="bf16")
    a, b = first_loss(tmp_path / "fp32"), first_loss(tmp_path / "bf16")
    assert a != b and abs(a - b) < 0.02 * a  # autocast was on (bf16 products) and changed little


@pytest.mark.parametrize("command", ["train", "distill"])
def test_fp16_scaler_skips_an_overflowing_step(setup, tmp_path, command, monkeypatch):
    """The loss of step 2 is multiplied by 1e35: scaled by the gradient scaler its gradients are
    inf, so the step is skipped (weights unchanged) and the loss scale halves."""
    from llm4all.train import loop

    real = loop._optimizer_step
    seen, weights = [], []

    def step(net, loss_fn, sampler, optimizer, scaler, cfg, n, dist_):
        def huge(*args):
            loss, parts = loss_fn(*args)
            return loss * 1e35, parts

        weights.append(next(p for p in net.parameters() if p.requires_grad).detach().clone())
        out = real(net, huge if n == 1 else loss_fn, sampler, optimizer, scaler, cfg, n, dist_)
        seen.append(scaler.get_scale())
        return out

    monkeypatch.setattr(loop, "_optimizer_step", step)
    run(command, setup, tmp_path / "fp16", precision="fp16")
    assert seen[1] == seen[0] / 2 and seen[2] == seen[1]  # halved once, on the overflow
    assert torch.equal(weights[2], weights[1])  # the overflowing step changed nothing
    assert not torch.equal(weights[1], weights[0])  # the normal step did
