"""Packed embeddings and heads; a loaded quantised model holds no full-precision weight matrix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llm4all.compress.command import main as compress
from llm4all.models.load import load
from llm4all.models.packed import embedding
from llm4all.models.packed.embedding import PackedEmbedding, TiedHead, quantize_rows
from tinymodels import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("mem") / "model", hidden=64, layers=2)


def _ids():
    return torch.from_numpy(np.random.default_rng(1).integers(4, 64, size=(2, 24)))


def test_int8_rows_hand_computed_and_error_bound():
    q, s = quantize_rows(torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]]))
    assert q.tolist() == [[64, -127, 32], [0, 0, 0]]  # 0.5·127 = 63.5 rounds to 64 (half to even)
    assert s[0].item() == pytest.approx(1 / 127, rel=1e-3)
    w = torch.randn(50, 40, generator=torch.Generator().manual_seed(0))
    q, s = quantize_rows(w)
    assert torch.all((q.float() * s.float()[:, None] - w).abs() <= s.float()[:, None] / 2 + 1e-6)


@pytest.mark.parametrize("kind", ["float16", "int8"])
def test_packed_lookup_and_chunked_head_match_dense(kind, monkeypatch):
    monkeypatch.setenv("LLM4ALL_QKERNEL", "0")  # the exact path (the kernels: test_compress_kernels.py)
    monkeypatch.setattr(embedding, "CHUNK", 7)  # several chunks and a ragged last one for 50 rows
    w = torch.randn(50, 16, generator=torch.Generator().manual_seed(1))
    emb = PackedEmbedding.from_weight(w, kind)
    dense = emb.dense_weight()  # the de-quantised rows
    ids = torch.tensor([[3, 49, 0], [7, 7, 1]])
    out = emb(ids)
    assert out.dtype == torch.float32 and torch.equal(out, dense[ids])
    h = torch.randn(2, 3, 16)
    assert torch.allclose(TiedHead(emb)(h), h @ dense.T, atol=1e-5)
    assert dict(TiedHead(emb).named_buffers()) == {}  # the tied head owns no storage


@pytest.mark.parametrize("embeddings", ["float16", "int8"])
def test_quantised_model_keeps_no_full_precision_matrix(tiny, tmp_path, embeddings, monkeypatch):
    monkeypatch.setenv("LLM4ALL_QKERNEL", "0")  # compare with the exact path
    out = tmp_path / "q"
    compress(str(tiny), out=out, method={"name": "rtn", "bits": 4, "group_size": 32}, embeddings=embeddings)
    net, _ = load(out)
    assert isinstance(net.get_input_embeddings(), PackedEmbedding)
    assert isinstance(net.get_output_embeddings(), TiedHead)
    matrices = {n: t.dtype for n, t in [*net.named_parameters(), *net.named_buffers()] if t.dim() == 2}
    assert all(d in (torch.uint8, torch.int8, torch.float16) for d in matrices.values()), matrices
    reference, _ = load(tiny)
    with torch.no_grad():  # the packed model computes what its de-quantised weights compute
        reference.model.embed_tokens.weight.copy_(net.get_input_embeddings().dense_weight())
        for name, m in net.named_modules():
            if hasattr(m, "qweight") and not isinstance(m, PackedEmbedding):
                reference.get_submodule(name).weight.copy_(m.dense_weight())
            elif isinstance(m, torch.nn.RMSNorm) or name.endswith("norm"):
                reference.get_submodule(name).weight.copy_(m.weight)
        assert torch.allclose(net(_ids()).logits, reference(_ids()).logits, atol=1e-4)
    meta = json.loads((out / "llm4all_quant.json").read_text())
    assert ("model.embed_tokens" in meta["modules"]) == (embeddings == "int8")


RSS = """
import gc, json, sys, psutil, torch, transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from llm4all.models.load import load, resolve
import llm4all.models.packed, safetensors.torch
path = resolve(sys.argv[1])
cfg = AutoConfig.from_pretrained(path)
with torch.device("meta"):
    AutoModelForCausalLM.from_config(cfg)  # modeling code, so that only the weights are measured
AutoTokenizer.from_pretrained(path)
gc.collect()
p = psutil.Process()
base = p.memory_info().rss
net, _ = load(sys.argv[1])
[t.reshape(-1)[::256].sum() for t in net.state_dict().values()]  # every page of every tensor
print((p.memory_info().rss - base) / 2**20)
"""


@pytest.mark.slow
def test_resident_memory_really_shrinks(tmp_path):
    """SmolLM2-135M: RSS added by loading the weights, fp32 vs RTN int4 g64, each in its own process."""
    rss = {}
    for name, embeddings in [("int4", "float16"), ("int4-e8", "int8")]:
        compress("smollm2-135m", out=tmp_path / name, method={"name": "rtn", "bits": 4, "group_size": 64},
                 embeddings=embeddings)
    for name, target in [("fp32", "smollm2-135m"), ("int4", str(tmp_path / "int4")),
                         ("int4-e8", str(tmp_path / "int4-e8"))]:
        proc = subprocess.run([sys.executable, "-c", RSS, target], capture_output=True, text=True, check=True)
        rss[name] = float(proc.stdout.strip().splitlines()[-1])
    # tensors: fp32 513 MiB; int4 55 MiB packed Linears + 54 MiB float16 embedding; int8 rows 27 MiB.
    # Measured 2026-11-23: fp32 533, int4 127, int4 + int8 embeddings 100 MiB.
    assert rss["int4"] < 0.27 * rss["fp32"], rss
    assert rss["int4-e8"] < 0.21 * rss["fp32"], rss
