"""QLoRA: LoRA adapters over llm4all's packed 4-bit base (models/lora.py, train --lora-base int4)."""

import json

import pytest
import torch

from llm4all.data.tokenize import main as tokenize
from llm4all.errors import UserError
from llm4all.models.lora import GROUP, LoRALinear, _ThroughPacked, add_qlora, merge
from llm4all.models.packed.qlinear import QuantLinear
from llm4all.models.packed.rtn import rtn_quantize, to_module
from llm4all.train.args import TrainingConfig
from llm4all.train.command import main as train
from llm4all.train.prepare import LORA_TARGETS
from tinymodels import build_tiny_model, tiny_texts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _packed(rows=48, cols=128, seed=0):
    linear = torch.nn.Linear(cols, rows, bias=True)
    torch.manual_seed(seed)
    torch.nn.init.normal_(linear.weight)
    return to_module(rtn_quantize(linear.weight, 4, GROUP, symmetric=False), linear)


def test_gradient_through_the_packed_base_is_the_dense_one():
    layer = _packed()
    x = torch.randn(5, 7, 128, requires_grad=True)
    y = _ThroughPacked.apply(x, layer)
    w = layer.dense_weight().requires_grad_(False)
    x2 = x.detach().clone().requires_grad_(True)
    reference = torch.nn.functional.linear(x2, w, layer.bias)
    torch.testing.assert_close(y, reference)
    g = torch.randn_like(y)
    y.backward(g)
    reference.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    assert not any(t.requires_grad for t in layer.buffers())  # the base gets no gradient


def test_lora_starts_as_the_base_and_merges_to_what_it_computes():
    torch.manual_seed(0)
    lora = LoRALinear(_packed(), rank=4, alpha=8.0)
    x = torch.randn(3, 128)
    torch.testing.assert_close(lora(x), lora.base(x), rtol=1e-5, atol=1e-5)  # B = 0 at the start
    torch.nn.init.normal_(lora.lora_B)
    moved = lora(x)
    assert (moved - lora.base(x)).abs().max() > 1e-2
    torch.testing.assert_close(lora.merged()(x), moved, rtol=1e-5, atol=1e-4)
    assert lora.scale == 2.0 and [n for n, _ in lora.named_parameters()] == ["lora_A", "lora_B"]


def test_options_are_checked():
    with pytest.raises(UserError, match="--lora-base 'nf4': valid is int4"):
        TrainingConfig(lora_rank=4, lora_base="nf4")
    with pytest.raises(UserError, match="with --lora-rank > 0"):
        TrainingConfig(lora_base="int4")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(UserError, match="no decoder layer stack"):
        add_qlora(model, LORA_TARGETS, 4, 8.0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("qlora")
    model = build_tiny_model(root / "model", hidden=64)  # Linears of 64 and 128 columns
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                            for i, t in enumerate(tiny_texts(160, words=80))))
    tokenize([docs], out=root / "shards", tokenizer=str(model), workers=1, val_fraction=0.1)
    return root / "shards", model


def test_train_with_a_4bit_base_learns_and_saves_the_model_it_evaluated(shards, tmp_path):
    from llm4all.evaluate.perplexity import main as perplexity
    from llm4all.models.load import load

    data, model = shards
    options = {"seq_len": 32, "micro_batch": 4, "lr": 1e-2, "warmup": 2, "precision": "fp32",
               "lora_rank": 8, "lora_alpha": 16.0, "lora_base": "int4", "eval_tokens": 512}
    result = train(data, out=tmp_path / "q", model=str(model), steps=30, **options)
    curve = [json.loads(x)["loss"] for x in (tmp_path / "q" / "metrics.jsonl").read_text().splitlines()]
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.05  # the adapters learn on the 4-bit base
    saved, _ = load(tmp_path / "q" / "model")
    base, _ = load(model)
    assert {k for k, _ in saved.named_parameters()} == {k for k, _ in base.named_parameters()}
    # the saved (merged) model is the one the loop evaluated: same validation perplexity
    ppl = perplexity(str(tmp_path / "q" / "model"), data, context=32, stride=32, max_tokens=512,
                     batch_size=8)["ppl"]
    assert ppl == pytest.approx(result["val_ppl"], rel=1e-4)
    # frozen outside the adapters: embeddings and norms are the base's own
    torch.testing.assert_close(saved.model.embed_tokens.weight, base.model.embed_tokens.weight)
    torch.testing.assert_close(saved.model.norm.weight, base.model.norm.weight)


def test_the_base_is_held_in_4_bits(shards):
    from llm4all.models.load import load

    net, _ = load(shards[1])
    dense = sum(m.weight.numel() * 4 for m in net.modules()
                if isinstance(m, torch.nn.Linear) and m is not net.lm_head)
    add_qlora(net, LORA_TARGETS, 4, 8.0)
    bases = [m.base for m in net.modules() if isinstance(m, LoRALinear)]
    assert len(bases) == 7 * 2 and all(isinstance(b, QuantLinear) for b in bases)
    held = sum(t.numel() * t.element_size() for b in bases for t in b.buffers())
    assert held < dense * 4.5 / 32  # 4 bits + a float16 scale and a uint8 zero per 64 weights
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    merge(net)
    assert not any(isinstance(m, LoRALinear) for m in net.modules())
