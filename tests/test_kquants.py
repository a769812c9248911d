"""K-quant GGUF export through llama.cpp's llama-quantize, with an importance matrix from shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llm4all.data.shards import TokenShards
from llm4all.errors import UserError
from llm4all.export.command import main as export
from llm4all.export.kquants import calibration_text, export_kquant, tensor_types
from tinybpe import bpe_shards, build_bpe_llama
from tinymodels import tiny_texts


@pytest.fixture(scope="module")
def model_and_shards(tmp_path_factory) -> tuple[Path, Path]:
    # every weight row is a multiple of 256 columns, so every 2-D tensor can be a K-quant
    root = tmp_path_factory.mktemp("kquant")
    model = build_bpe_llama(root / "model", hidden=256, intermediate=512)
    return model, bpe_shards(model, root)


def test_calibration_text_is_the_shards_documents(model_and_shards, tmp_path):
    from transformers import AutoTokenizer

    model, shards = model_and_shards
    tokenizer = AutoTokenizer.from_pretrained(model)
    out = tmp_path / "calib.txt"
    info = calibration_text(shards, out, tokenizer, max_tokens=10**9)
    docs = out.read_text().strip().split("\n\n")
    source = set(tiny_texts(200, seed=1, words=80))
    assert len(docs) == info["documents"] == TokenShards(shards).index["splits"]["train"]["docs"]
    assert set(docs) <= source  # byte-level BPE decodes back to the exact text
    assert info["tokens"] == TokenShards(shards).num_tokens("train")
    short = calibration_text(shards, tmp_path / "short.txt", tokenizer, max_tokens=500)
    assert short["tokens"] == 500 and short["documents"] < info["documents"]


def test_calibration_shards_of_another_tokenizer_are_refused(model_and_shards, tmp_path):
    from transformers import AutoTokenizer

    model, shards = model_and_shards
    other = tmp_path / "shards"
    shutil.copytree(shards, other)
    index = json.loads((other / "index.json").read_text())
    index["vocab_size"] = 50000
    (other / "index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="shards made with a tokenizer of 50000 tokens"):
        calibration_text(other, tmp_path / "c.txt", AutoTokenizer.from_pretrained(model))


def test_q4_k_m_with_and_without_importance_matrix(model_and_shards, tmp_path):
    import gguf

    from llm4all.evaluate.llamacpp import llama_cpp_perplexity
    from llm4all.export.gguf import export_gguf

    model, shards = model_and_shards
    plain = export_kquant(model, tmp_path / "plain.gguf", type="q4_k_m")
    weighted = export_kquant(model, tmp_path / "imatrix.gguf", type="q4_k_m", calib=shards,
                             calib_tokens=4096, context=128)
    # Q4_K_M: Q4_K weights, Q6_K for attn_v / half of ffn_down / the (tied) output, F32 norms
    assert set(plain["tensor_types"]) == {"Q4_K", "Q6_K", "F32"}, plain["tensor_types"]
    assert weighted["tensor_types"] == plain["tensor_types"]
    assert weighted["imatrix"] and weighted["calibration"]["tokens"] == 4096
    # llama-quantize records the importance matrix it used, and it changes the chosen scales
    keys = {name: set(gguf.GGUFReader(r["out"]).fields) for name, r in (("plain", plain), ("w", weighted))}
    assert "quantize.imatrix.entries_count" in keys["w"] - keys["plain"]
    blocks = {name: {t.name: t.data.tobytes() for t in gguf.GGUFReader(r["out"]).tensors}
              for name, r in (("plain", plain), ("w", weighted))}
    for tensor in ("blk.0.attn_q.weight", "blk.1.ffn_up.weight"):  # weighted by activations
        assert blocks["plain"][tensor] != blocks["w"][tensor]
    assert blocks["plain"]["token_embd.weight"] == blocks["w"]["token_embd.weight"]  # not weighted
    f32 = export_gguf(model, tmp_path / "f32.gguf", type="f32")
    assert plain["bytes"] < f32["bytes"] / 4
    tokens = TokenShards(shards).tokens("validation")[:512]
    ref = llama_cpp_perplexity(f32["out"], tokens, context=128)["ppl"]
    for result in (plain, weighted):
        ppl = llama_cpp_perplexity(result["out"], tokens, context=128)["ppl"]
        assert abs(ppl / ref - 1) < 0.1, (ppl, ref)
    assert not list(tmp_path.glob(".kquant-*"))  # the F32 intermediate is gone


def test_export_command_k_quants_and_calib_checks(model_and_shards, tmp_path):
    model, shards = model_and_shards
    q6 = export(str(model), out=tmp_path, type="q6_k")
    assert q6["out"] == str(tmp_path / "model-q6_k.gguf")
    assert set(tensor_types(q6["out"])) == {"Q6_K", "F32"}
    q4 = export_kquant(model, tmp_path / "q4.gguf", type="q4_k_m")
    assert q4["bytes"] < q6["bytes"]
    with pytest.raises(UserError, match="--calib needs --format gguf with a K-quant"):
        export(str(model), out=tmp_path / "x.gguf", type="q8_0", calib=shards)
    with pytest.raises(UserError, match="single file ending in .gguf"):
        export_kquant(model, tmp_path / "x.bin", type="q4_k_m")


def test_rows_that_are_not_super_blocks_fall_back(tmp_path):
    # hidden 64: no tensor splits into 256-weight super-blocks; llama-quantize falls back to Q5_0
    model = build_bpe_llama(tmp_path / "model", hidden=64, intermediate=128)
    types = export_kquant(model, tmp_path / "m.gguf", type="q4_k_m")["tensor_types"]
    assert "Q4_K" not in types and "Q6_K" not in types, types
    assert types.get("Q5_0", 0) > 0 and types.get("Q8_0", 0) > 0, types  # Q4_K → Q5_0, Q6_K → Q8_0
