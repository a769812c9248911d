"""Lossless GGUF from packed checkpoints: ggml blocks written from llm4all's codes and scales."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from llm4all.errors import UserError
from llm4all.export import gguf_blocks as gb
from llm4all.export.gguf import export_gguf, llama_tensors
from test_export import build_bpe_model, hf_gguf, logits
from tinymodels import tiny_texts


def dequantized(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Every tensor of a GGUF file de-quantised by the gguf package: name → (type, float32 (rows, cols))."""
    import gguf

    out = {}
    for t in gguf.GGUFReader(path).tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = (t.tensor_type.name, w.reshape(w.shape[0], -1) if w.ndim > 1 else w)
    return out


def packed_weights(packed_dir: Path) -> dict[str, np.ndarray]:
    """The weights the packed model computes with, in GGUF names and order (Q/K rows permuted)."""
    from llm4all.models.load import load

    net, _ = load(packed_dir)
    return dict(llama_tensors(net))


# ---- the block encoders against ggml's own layout ----------------------------------------------

def grid(rng, rows: int, cols: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Random integers k in [lo, hi] (each block holding both ends) and float16 block scales."""
    k = rng.integers(lo, hi + 1, size=(rows, cols)).astype(np.int16)
    k[:, ::32], k[:, 1::32] = lo, hi  # the extremes in every block
    d = (rng.uniform(1e-3, 3e-2, size=(rows, cols // 32))).astype(np.float16)
    return k, d


@pytest.mark.parametrize(("kind", "lo", "hi"), [("Q4_0", -8, 7), ("Q5_0", -16, 15), ("Q8_0", -127, 127)])
def test_blocks_equal_ggml_reference_quantiser(kind, lo, hi):
    """With the block's extreme code present, ggml's reference quantiser finds d = our scale and
    q = our code, so its bytes must equal ours: the field order and the nibble order are ggml's."""
    import gguf

    k, d = grid(np.random.default_rng(0), 6, 128, lo, hi)
    ours = gb.ENCODERS[kind](k, d)
    assert ours.shape == (6, 4 * gb.BLOCK_BYTES[kind])
    w = k.astype(np.float32) * np.repeat(d.astype(np.float32), 32, axis=1)  # exact products
    ref = gguf.quants.quantize(w, gguf.GGMLQuantizationType[kind])
    assert np.array_equal(ours, ref)
    back = gguf.quants.dequantize(ours, gguf.GGMLQuantizationType[kind])
    assert np.array_equal(back, w)  # bitwise


def test_q4_1_offsets_make_the_minimum_exact():
    import gguf

    rng = np.random.default_rng(1)
    k, d = grid(rng, 4, 64, -8, 7)  # spans all 16 values: the only offset is 8, and −8·d is exact
    data, err = gb.q4_1(k, d)
    assert (err == 0).all()
    w = k.astype(np.float32) * np.repeat(d.astype(np.float32), 32, axis=1)
    assert np.array_equal(gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q4_1), w)
    assert np.array_equal(data, gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1))  # min = −8·d
    # codes 0..12 with zero 3 (k ∈ [−3, 9]) leave offsets 3..6 free: one with an exact m is picked
    d = np.full((1, 1), np.float16((1 + 2**-10) * 2**-6))  # an 11-bit significand: 3·d needs 12 bits
    assert float(np.float16(3 * d.astype(np.float64)[0, 0])) != 3 * float(d[0, 0])
    k = np.tile(np.arange(-3, 10), 3)[:32][None].astype(np.int16)
    off, err = gb.q4_1_offsets(k, d)
    assert err[0, 0] == 0 and off[0, 0] == 4  # 4·d is exact (a power of two)
    # a block spanning exactly 16 values with an inexact minimum: the error is the float16 rounding of m
    k = np.tile(np.arange(-3, 13), 2)[None].astype(np.int16)
    off, err = gb.q4_1_offsets(k, d)
    m = 3 * float(d[0, 0])
    assert off[0, 0] == 3 and err[0, 0] == abs(float(np.float16(m)) - m) > 0
    assert err[0, 0] <= 2**-11 * m


def test_fits_and_ranges():
    k = np.zeros((1, 32), dtype=np.int16)
    d = np.ones((1, 1), dtype=np.float16)
    k[0, 0] = 8
    assert not gb.fits(k, d, "Q4_0") and gb.fits(k, d, "Q5_0") and gb.fits(k, d, "Q4_1")
    with pytest.raises(ValueError, match="Q4_0 holds integers in"):
        gb.q4_0(k, d)


# ---- tiny packed models, exported with --type auto ---------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lossless")
    from llm4all.data.tokenize import main as tokenize

    out = {name: build_bpe_model(root / name, tied=name == "tied") for name in ("tied", "untied")}
    docs = root / "docs.jsonl"
    lines = [json.dumps({"id": str(i), "text": t}) for i, t in enumerate(tiny_texts(60))]
    docs.write_text("\n".join(lines) + "\n")
    tokenize([docs], out=root / "shards", tokenizer=str(out["tied"]), workers=1)
    out["shards"] = root / "shards"
    return out


SYM4 = {"name": "rtn", "bits": 4, "group_size": 32, "symmetric": True}
#: (method, embeddings, model) → the ggml type its Linears map to exactly
CASES = [
    ({"name": "rtn", "bits": 4, "group_size": 32, "symmetric": True}, "float16", "tied", "Q4_0"),
    ({"name": "gptq", "bits": 4, "group_size": 32, "symmetric": True}, "int8", "untied", "Q4_0"),
    ({"name": "gptq", "bits": 4, "group_size": 64, "gguf_exact": True}, "int8", "tied", "Q4_1"),
    ({"name": "rtn", "bits": 4, "group_size": 64, "symmetric": False}, "float16", "untied", "Q5_0"),
    ({"name": "rtn", "bits": 3, "group_size": -1, "symmetric": False}, "float16", "tied", "Q4_0"),
    ({"name": "rtn", "bits": 2, "group_size": 32, "symmetric": True}, "float16", "tied", "Q4_0"),
    ({"name": "rtn", "bits": 8, "group_size": -1, "symmetric": True}, "int8", "untied", "Q8_0"),
    ({"name": "rtn", "bits": 8, "group_size": 64, "symmetric": True}, "float16", "tied", "Q8_0"),
]


@pytest.mark.parametrize(("method", "embeddings", "which", "kind"), CASES,
                         ids=[f"{c[0]['name']}{c[0]['bits']}-{c[3]}-{c[2]}" for c in CASES])
def test_auto_export_is_bitwise_the_packed_model(models, tmp_path, monkeypatch, method, embeddings, which,
                                                 kind):
    """Every tensor of the GGUF, de-quantised by the gguf package, equals the packed model's weight
    (Q/K rows permuted) bit for bit; compress announced the same types; transformers' GGUF loader
    gives the packed model's logits."""
    monkeypatch.setenv("LLM4ALL_QKERNEL", "0")  # the exact path: the CPU kernels round through bf16
    from llm4all.compress.command import main as compress
    from llm4all.models.load import load

    packed = tmp_path / "packed"
    result = compress(str(models[which]), out=packed, method=method, embeddings=embeddings,
                      calib=models["shards"], calib_tokens=512, seq_len=64)
    assert result["gguf_type"].startswith(f"{kind.lower()}, exact")
    mapping = json.loads((packed / "llm4all_quant.json").read_text())["gguf_type"]
    exported = export_gguf(packed, tmp_path / "m.gguf", type="auto")
    assert exported["lossless"] and exported["not_exact"] == {}
    embedding = "Q8_0" if embeddings == "int8" else "F16"
    n_linear, n_embed = 14, 1 + (which == "untied")
    types = {kind: n_linear, "F32": 5}
    types[embedding] = types.get(embedding, 0) + n_embed
    assert exported["tensor_types"] == types
    assert mapping["tensors"] == {t: n for t, n in exported["tensor_types"].items() if t != "F32"}
    ref, got = packed_weights(packed), dequantized(tmp_path / "m.gguf")
    assert set(ref) == set(got)
    for name, w in ref.items():
        assert np.array_equal(got[name][1], w), name
    back, _ = hf_gguf(tmp_path / "m.gguf")
    net, _ = load(packed)
    ids = list(range(4, 60))
    want = logits(net, ids)
    assert ((logits(back, ids) - want).abs().max() / want.abs().max()).item() < 1e-5


LLAMA_CASES = [c for c in CASES if c[3] in ("Q4_0", "Q4_1", "Q5_0") or c[1] == "int8"][:4]


@pytest.mark.parametrize(("method", "embeddings", "which", "kind"), LLAMA_CASES,
                         ids=[f"{c[3]}-{c[1]}-{c[2]}" for c in LLAMA_CASES])
def test_llama_cpp_runs_the_export_like_the_packed_model(models, tmp_path, monkeypatch, method, embeddings,
                                                          which, kind):
    """llama.cpp computes the packed model's logits from the exported blocks: a wrong nibble order,
    scale or row permutation would be off by the size of the logits, not by llama.cpp's own 8-bit
    activation rounding (Q8_0/Q8_1 activations in its CPU dot products, ~1 % here)."""
    monkeypatch.setenv("LLM4ALL_QKERNEL", "0")
    from llm4all.compress.command import main as compress
    from llm4all.models.llamacpp import open_llama
    from llm4all.models.load import load

    packed = tmp_path / "packed"
    compress(str(models[which]), out=packed, method=method, embeddings=embeddings, calib=models["shards"],
             calib_tokens=512, seq_len=64)
    path = Path(export_gguf(packed, tmp_path / "m.gguf")["out"])
    ids = [int(i) for i in np.random.default_rng(0).integers(3, 300, size=48)]
    net, _ = load(packed)
    with torch.inference_mode():
        want = net(torch.tensor([ids])).logits[0].numpy()  # (T, V)
    llm = open_llama(path, n_ctx=64, threads=1)
    try:
        llm.eval(ids)
        got = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()
    assert np.abs(got - want).max() < 0.03 * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.9


def test_the_q_k_permutation_moves_codes_and_scales(models, tmp_path):
    """A Q4_0 attn_q block row must be the permuted row of the packed model (not the HF row)."""
    from llm4all.compress.command import main as compress
    from llm4all.export.gguf import permute_qk

    packed = tmp_path / "packed"
    compress(str(models["tied"]), out=packed, method=SYM4)
    from llm4all.models.load import load

    net, _ = load(packed)
    q = net.model.layers[0].self_attn.q_proj.dense_weight().numpy()
    export_gguf(packed, tmp_path / "m.gguf")
    got = dequantized(tmp_path / "m.gguf")["blk.0.attn_q.weight"][1]
    assert np.array_equal(got, permute_qk(q, net.config.num_attention_heads))
    assert not np.array_equal(got, q)


def test_layouts_without_an_exact_type_say_so(models, tmp_path, capsys):
    from llm4all.cli import main as cli
    from llm4all.compress.command import main as compress

    cases = {"g16": (SYM4 | {"group_size": 16}, "groups of 16", "Q8_0"),
             "asym8": ({"name": "rtn", "bits": 8, "group_size": -1}, "F32 is exact", "Q8_0"),
             "lowrank": ({"name": "svd", "ratio": 0.5}, "low-rank", "F16"),
             "w8a8": ({"name": "w8a8"}, "float32 scale rounded to float16 in Q8_0", "Q8_0"),
             "bitnet": ({"name": "bitnet"}, "float32 scale rounded to float16 in Q4_0", "Q4_0")}
    for name, (method, reason, kind) in cases.items():
        packed = tmp_path / name
        result = compress(str(models["tied"]), out=packed, method=method)
        assert reason in result["gguf_type"] and result["gguf_type"].startswith(f"{kind.lower()}, closest")
        stage = tmp_path / f"{name}-export"
        cli(["export", str(packed), "--out", str(stage)])  # a directory: model-auto.gguf + manifest
        printed = capsys.readouterr().out
        assert re.search(r"not exact: (14|10) tensors: .*" + reason, printed), printed[-3000:]
        manifest = json.loads((stage / "llm4all.json").read_text())
        assert manifest["command"] == "export" and manifest["models"][0]["path"] == "model-auto.gguf"
        assert manifest["gguf"]["lossless"] is False
        assert manifest["gguf"]["tensor_types"][kind] >= 10
        if name in ("w8a8", "bitnet"):  # the codes are kept: only the scale's float16 rounding differs
            ref, got = packed_weights(packed), dequantized(stage / "model-auto.gguf")
            for t, w in ref.items():
                assert np.abs(got[t][1] - w).max() <= 2**-11 * np.abs(w).max(), t
    from llm4all.export.command import main as export

    with pytest.raises(UserError, match="another stage's llm4all.json"):  # never overwrites a stage
        export(str(tmp_path / "g16"), out=tmp_path / "g16")
    assert not list((tmp_path / "g16").glob("*.gguf"))


def test_explicit_types_reuse_codes_when_they_fit(models, tmp_path):
    from llm4all.compress.command import main as compress

    packed = tmp_path / "sym4"
    compress(str(models["untied"]), out=packed, method=SYM4)
    ref = packed_weights(packed)
    for qtype in ("q8_0", "q5_0", "f32"):  # symmetric 4-bit codes fit all of these exactly
        r = export_gguf(packed, tmp_path / f"{qtype}.gguf", type=qtype)
        got = dequantized(tmp_path / f"{qtype}.gguf")
        assert all(np.array_equal(got[n][1], ref[n]) for n in ref if n.startswith("blk.")), qtype
        assert not any("blk" in note for note in r["not_exact"]), r["not_exact"]
    asym = tmp_path / "asym4"
    compress(str(models["untied"]), out=asym, method={"name": "rtn", "bits": 4, "group_size": 32})
    r = export_gguf(asym, tmp_path / "asym-q4_0.gguf", type="q4_0")  # asymmetric codes do not fit Q4_0
    assert not r["lossless"]
    assert any("does not fit Q4_0: re-rounded" in note for note in r["not_exact"])


def test_gguf_exact_scales(models):
    from llm4all.compress.quantize.rtn import gguf_scale, rtn, rtn_quantize

    W = torch.randn(64, 256)
    plain, exact = rtn_quantize(W, 4, 32, symmetric=False), rtn_quantize(W, 4, 32, False, gguf_exact=True)
    s = exact.scales.float()
    assert torch.equal(gguf_scale(s), s)  # already 7 significant bits
    m = -(exact.zeros.float() * s)
    assert torch.equal(m.half().float(), m)  # Q4_1's minimum is a float16 number
    assert not torch.equal((-(plain.zeros.float() * plain.scales.float())).half().float(),
                           -(plain.zeros.float() * plain.scales.float()))
    err = lambda q: (q.dequantize() - W).pow(2).mean().item()  # noqa: E731
    assert err(exact) < 1.01 * err(plain)  # the coarser scale costs < 1 % squared error
    with pytest.raises(UserError, match="asymmetric 8-bit"):
        rtn(bits=8, group_size=None, symmetric=False, gguf_exact=True)


# ---- the real model (slow): SmolLM2-135M GPTQ int4, the quickstart's setting -------------------

class SmolGPTQ:
    """SmolLM2-135M compressed with GPTQ int4 (groups of 64, asymmetric) on demo shards, exported."""

    def __init__(self, root: Path):
        from llm4all.compress.command import main as compress
        from llm4all.data.shards import TokenShards
        from llm4all.data.tokenize import main as tokenize

        tokenize([Path(__file__).parents[1] / "data" / "demo"], out=root / "shards", val_fraction=0.1,
                 workers=1, max_docs=400)
        self.packed = root / "gptq4"
        compress("smollm2-135m", out=self.packed, method={"name": "gptq", "bits": 4, "group_size": 64},
                 calib=root / "shards", calib_tokens=4096, seq_len=128)
        self.gguf = Path(export_gguf(self.packed, root / "gptq4.gguf")["out"])
        self.tokens = np.asarray(TokenShards(root / "shards").tokens("validation", 1024), dtype=np.int64)

    def packed_ppl(self) -> dict:
        from llm4all.evaluate.perplexity import perplexity
        from llm4all.models.load import load

        net, _ = load(self.packed)
        return perplexity(net, self.tokens, context=512)


@pytest.fixture(scope="module")
def smol_gptq(tmp_path_factory) -> SmolGPTQ:
    return SmolGPTQ(tmp_path_factory.mktemp("smol-gptq"))


@pytest.mark.slow
def test_smollm2_gptq_gguf_is_the_packed_model(smol_gptq, monkeypatch):
    """transformers' GGUF loader reads back exactly the packed model: same weights, same perplexity."""
    monkeypatch.setenv("LLM4ALL_QKERNEL", "0")
    from llm4all.evaluate.perplexity import perplexity

    mapping = json.loads((smol_gptq.packed / "llm4all_quant.json").read_text())["gguf_type"]
    assert mapping["type"] == "q5_0" and mapping["exact"]
    ref, got = packed_weights(smol_gptq.packed), dequantized(smol_gptq.gguf)
    assert all(np.array_equal(got[n][1], w) for n, w in ref.items())
    back, _ = hf_gguf(smol_gptq.gguf)
    ppl, want = perplexity(back, smol_gptq.tokens, context=512)["ppl"], smol_gptq.packed_ppl()["ppl"]
    assert abs(ppl / want - 1) < 1e-4, (ppl, want)


@pytest.mark.slow
def test_smollm2_gptq_llama_cpp_perplexity_within_1_percent(smol_gptq):
    """The issue's acceptance: llama.cpp's perplexity of the exported GPTQ model is within 1 % of
    llm4all's perplexity of the packed model on the same tokens."""
    from llm4all.evaluate.llamacpp import llama_cpp_perplexity

    ours = llama_cpp_perplexity(smol_gptq.gguf, smol_gptq.tokens, context=512)
    ref = smol_gptq.packed_ppl()
    assert ours["tokens"] == ref["tokens"] == 1023
    assert abs(ours["ppl"] / ref["ppl"] - 1) < 0.01, (ours["ppl"], ref["ppl"])
