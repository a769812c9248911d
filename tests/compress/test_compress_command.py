"""llm4all compress end to end on tiny models: packed files load back, sizes, shapes, bad inputs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from llm4all.compress.command import main as compress
from llm4all.compress.quantize.rtn import rtn_quantize
from llm4all.errors import UserError
from llm4all.models.load import load
from tinymodels import build_tiny_model


@pytest.fixture(scope="module")
def model64(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny64") / "model", hidden=64, layers=3)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shards")
    tokens = np.random.default_rng(0).integers(4, 64, size=4096).astype(np.uint16)
    tokens.tofile(path / "train-00000.bin")
    split = {"shards": [{"file": "train-00000.bin", "tokens": 4096}], "tokens": 4096}
    (path / "index.json").write_text(json.dumps({"dtype": "uint16", "eos_id": 2, "splits": {"train": split}}))
    return path


def _ids():
    return torch.from_numpy(np.random.default_rng(1).integers(4, 64, size=(2, 24)))


def _safetensors_sizes(path: Path) -> dict[str, int]:
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


@pytest.mark.parametrize("method", [{"name": "rtn", "bits": 4, "group_size": 32},
                                    {"name": "gptq", "bits": 4, "group_size": 16},
                                    {"name": "int8", "symmetric": False}])
def test_packed_model_loads_back_and_matches_fake_quantised(model64, shards, tmp_path, method, monkeypatch):
    monkeypatch.setenv("LLM4ALL_QKERNEL", "0")  # exact de-quantisation (kernels: test_compress_kernels.py)
    out = tmp_path / "q"
    compress(str(model64), out=out, method=method, calib=shards, calib_tokens=512, seq_len=64,
             calib_dtype="float32")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "llm4all_quant.json",
                                                 "tokenizer.json"}
    packed, _ = load(out)
    reference, _ = load(model64)
    with torch.no_grad():  # fake-quantise: every tensor fp16-rounded, Linears de-quantised
        for p in reference.parameters():
            p.copy_(p.half().float())
        for name, m in packed.named_modules():
            if hasattr(m, "dense_weight"):
                reference.get_submodule(name).weight.copy_(m.dense_weight())
        if method["name"] == "rtn":  # and the packed codes are exactly RTN's
            W = reference.model.layers[0].mlp.up_proj.weight
            assert torch.equal(W, rtn_quantize(W, 4, 32, False).dequantize())
        assert torch.allclose(packed(_ids()).logits, reference(_ids()).logits, atol=1e-5)


def test_int4_linear_weights_are_a_sixth_to_seventh_of_fp32(model64, shards, tmp_path):
    out = tmp_path / "q4"
    compress(str(model64), out=out, method={"name": "rtn", "bits": 4, "group_size": 32})
    sizes = _safetensors_sizes(out / "model.safetensors")
    linear = sum(v for k, v in sizes.items() if k.endswith((".qweight", ".scales", ".zeros")))
    fp32 = sum(m.weight.numel() * 4 for n, m in load(model64)[0].named_modules()
               if isinstance(m, torch.nn.Linear) and n != "lm_head")
    assert 6.0 <= fp32 / linear <= 7.0  # 4 bits + (fp16 scale + uint8 zero) / 32 = 0.59 bytes
    assert sizes["model.embed_tokens.weight"] == 64 * 64 * 2  # embeddings stay fp16


def test_structured_pruning_shrinks_matrices_and_runs(model64, shards, tmp_path):
    out = tmp_path / "s"
    compress(str(model64), out=out, method={"name": "structured", "heads": 0.5, "ffn": 0.25, "layers": 1},
             calib=shards, calib_tokens=512, seq_len=64)
    net, _ = load(out)
    assert len(net.model.layers) == 2 and net.config.num_hidden_layers == 2
    layer = net.model.layers[0]
    assert layer.self_attn.q_proj.weight.shape == (32, 64)  # 4 heads of 16 -> 2
    assert layer.self_attn.o_proj.weight.shape == (64, 32)
    assert layer.mlp.up_proj.weight.shape == (96, 64) and layer.mlp.down_proj.weight.shape == (64, 96)
    assert torch.isfinite(net(_ids()).logits).all()


def test_sparse_checkpoint_keeps_mask(model64, shards, tmp_path):
    out = tmp_path / "w"
    compress(str(model64), out=out, method={"name": "sparsegpt", "prunen": 2, "prunem": 4},
             calib=shards, calib_tokens=512, seq_len=64)
    net, _ = load(out)
    W = net.model.layers[1].mlp.down_proj.weight
    assert torch.all((W != 0).view(W.shape[0], -1, 4).sum(-1) == 2)


@pytest.mark.parametrize("method, match", [
    ({"name": "gptqq"}, "unknown method"),
    ({"name": "rtn", "bits": 4, "group_size": 24}, "does not divide"),
    ({"name": "rtn", "bits": 5}, "bits must be one of"),
    ({"name": "wanda", "sparsity": 1.0}, "sparsity"),
    ({"name": "rtn", "bitz": 4}, "unknown option 'bitz'"),
    ({"name": "gptq"}, "--calib"),
])
def test_bad_inputs_fail_cleanly(model64, tmp_path, method, match):
    out = tmp_path / "bad"
    with pytest.raises(UserError, match=match):
        compress(str(model64), out=out, method=method)
    assert not out.exists()


def test_missing_or_damaged_weights_are_errors_not_random_weights(model64, tmp_path):
    """A packed checkpoint without its llm4all_quant.json used to load as a plain model with random
    weights (perplexity 6,409); a config without weights and a truncated file traced back."""
    import shutil

    out = tmp_path / "q"
    compress(str(model64), out=out, method={"name": "rtn", "bits": 4, "group_size": 32})
    (out / "llm4all_quant.json").unlink()
    with pytest.raises(UserError, match=r"weights missing, e\.g\. .*llm4all_quant\.json is missing"):
        load(out)
    bare = tmp_path / "bare"
    shutil.copytree(model64, bare)
    (bare / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"bare: cannot load the model"):
        load(bare)
    cut = tmp_path / "cut"
    shutil.copytree(model64, cut)
    raw = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match=r"cut: cannot load the model"):
        load(cut)


@pytest.mark.parametrize("damage", ["json", "quant_keys", "weights"])
def test_a_damaged_packed_checkpoint_is_one_line(model64, tmp_path, damage):
    out = tmp_path / "q"
    compress(str(model64), out=out, method={"name": "rtn", "bits": 4, "group_size": 32})
    if damage == "json":
        (out / "llm4all_quant.json").write_text("{not json")
    elif damage == "quant_keys":
        (out / "llm4all_quant.json").write_text(json.dumps({"format": 1}))
    else:
        raw = (out / "model.safetensors").read_bytes()
        (out / "model.safetensors").write_bytes(raw[:1000])
    with pytest.raises(UserError, match=r"/q(/llm4all_quant\.json)?: (damaged|not valid JSON|format)"):
        load(out)
