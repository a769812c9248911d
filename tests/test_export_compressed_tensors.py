"""export --format hf of a packed checkpoint: compressed-tensors that transformers loads exactly.

Every test loads the export through transformers with the compressed-tensors package
(a dev dependency: a missing package or a failed load fails the test, it never skips).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from llm4all.compress.command import main as compress
from llm4all.errors import UserError
from llm4all.export.compressed_tensors import pack_int32, plan, unpack_int32
from llm4all.export.hf import export_hf, sha256
from llm4all.models.load import load
from tinymodels import build_tiny_model

IDS = list(range(4, 60))


@pytest.fixture(autouse=True)
def exact_packed_path(monkeypatch):
    """llm4all's packed model on its exact path (the CPU kernels round activations through bf16)."""
    monkeypatch.setenv("LLM4ALL_QKERNEL", "0")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A 2-layer Llama, hidden 128 (groups of 32, 64 and 128 divide every input dimension)."""
    return build_tiny_model(tmp_path_factory.mktemp("ct") / "tiny", hidden=128)


@pytest.fixture(scope="module")
def tiny_untied(tiny, tmp_path_factory) -> Path:
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("ct") / "untied"
    model = AutoModelForCausalLM.from_pretrained(tiny)
    model.config.tie_word_embeddings = False
    torch.manual_seed(1)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.05)
    model.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny / f, out / f)
    return out


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0].float()  # (T, V)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def from_pretrained(path: Path, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


def compress_and_export(source: Path, tmp_path: Path, method: dict, dtype: str = "bfloat16",
                        **options) -> tuple[Path, dict]:
    compress(str(source), out=tmp_path / "packed", method=method, **options)
    return tmp_path / "packed", export_hf(tmp_path / "packed", tmp_path / "ct", dtype=dtype)


def test_pack_int32_is_compressed_tensors_pack_to_int32():
    """Our packing (unsigned codes) is bit for bit the library's (signed values + 2^(b−1))."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    gen = torch.Generator().manual_seed(0)
    for bits, cols in [(4, 64), (4, 40), (8, 48), (8, 36)]:
        codes = torch.randint(0, 2**bits, (6, cols), generator=gen)
        signed = (codes - 2 ** (bits - 1)).to(torch.int8)
        assert torch.equal(pack_int32(codes, bits), pack_to_int32(signed, bits))
        assert torch.equal(pack_int32(codes.T, bits).T, pack_to_int32(signed, bits, packed_dim=0))
        assert torch.equal(unpack_int32(pack_int32(codes, bits), bits, cols), codes)
    word = pack_int32(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 15]]), 4)  # value k at bits 4k..4k+3
    assert word.item() == 0xF7654321 - 2**32


@pytest.mark.parametrize("method", [
    {"name": "rtn", "bits": 4, "group_size": 32, "symmetric": True},
    {"name": "rtn", "bits": 4, "group_size": 64, "symmetric": True},
    {"name": "rtn", "bits": 4, "group_size": 128, "symmetric": True},
    {"name": "rtn", "bits": 4, "group_size": 64, "symmetric": False},
    {"name": "rtn", "bits": 4, "group_size": -1, "symmetric": False},
    {"name": "int8", "symmetric": True},
    {"name": "rtn", "bits": 8, "group_size": 32, "symmetric": False},
], ids=["sym4-g32", "sym4-g64", "sym4-g128", "asym4-g64", "asym4-channel", "int8-channel", "asym8-g32"])
def test_transformers_loads_the_export_with_the_packed_logits(tiny, tmp_path, method):
    packed_dir, result = compress_and_export(tiny, tmp_path, method)
    assert result["format"] == "compressed-tensors" and result["quantized_linears"] == 14
    packed, _ = load(packed_dir)
    hf = from_pretrained(tmp_path / "ct", dtype=torch.float32)
    assert relative(logits(hf), logits(packed)) < 1e-3
    q_proj = hf.model.layers[0].self_attn.q_proj
    assert q_proj.quantization_scheme.weights.num_bits == method.get("bits", 8)
    # de-quantised by compressed-tensors on the first forward: the very weights llm4all computes with
    assert torch.equal(q_proj.weight, packed.model.layers[0].self_attn.q_proj.dense_weight())
    # as a user loads it (the dtype config.json names: float16): close, in half precision
    half = from_pretrained(tmp_path / "ct")
    assert half.dtype == torch.float16 and relative(logits(half), logits(packed)) < 2e-2


def test_untied_head_and_int8_embeddings_are_written_dense(tiny_untied, tmp_path):
    from safetensors import safe_open

    method = {"name": "rtn", "bits": 4, "group_size": 32}
    packed_dir, _ = compress_and_export(tiny_untied, tmp_path, method, embeddings="int8")
    with safe_open(tmp_path / "ct" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("lm_head.weight").dtype == torch.float16
        assert f.get_tensor("model.layers.1.mlp.down_proj.weight_packed").shape == (128, 256 * 4 // 32)
        assert f.get_tensor("model.layers.1.mlp.down_proj.weight_zero_point").shape == (128 * 4 // 32, 8)
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= keys and not any("qweight" in k for k in keys)
    packed, _ = load(packed_dir)
    hf = from_pretrained(tmp_path / "ct", dtype=torch.float32)
    # int8 rows · float16 scale, rounded once to float16: a relative error of at most 2^-11 per weight
    assert relative(logits(hf), logits(packed)) < 1e-3


def test_config_is_what_compressed_tensors_and_vllm_read(tiny, tmp_path):
    from compressed_tensors.quantization import QuantizationConfig
    from transformers import AutoConfig

    compress_and_export(tiny, tmp_path, {"name": "rtn", "bits": 4, "group_size": 64, "symmetric": False})
    raw = json.loads((tmp_path / "ct" / "config.json").read_text())
    qc = QuantizationConfig.model_validate(raw["quantization_config"])
    assert qc.quant_method == "compressed-tensors" and qc.format == "pack-quantized"
    assert qc.quantization_status == "compressed" and qc.ignore == ["lm_head"]
    (scheme,) = qc.config_groups.values()
    assert scheme.targets == ["Linear"] and scheme.input_activations is None
    w = scheme.weights
    assert (w.num_bits, w.type, w.symmetric, w.strategy, w.group_size) == (4, "int", False, "group", 64)
    assert raw["dtype"] == "float16"
    assert AutoConfig.from_pretrained(tmp_path / "ct").quantization_config["format"] == "pack-quantized"
    meta = json.loads((tmp_path / "ct" / "llm4all.json").read_text())
    assert meta["command"] == "export" and meta["models"][0]["format"] == "compressed-tensors"
    assert meta["sha256"]["model.safetensors"] == sha256(tmp_path / "ct" / "model.safetensors")


def test_tensors_equal_compressed_tensors_own_compressor(tiny, tmp_path):
    """The library's PackedQuantizationCompressor, fed llm4all's de-quantised weights, writes our bytes."""
    from compressed_tensors.compressors import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors import safe_open

    packed_dir, _ = compress_and_export(tiny, tmp_path, {"name": "rtn", "bits": 4, "group_size": 32,
                                                         "symmetric": False})
    qc = QuantizationConfig.model_validate(json.loads((tmp_path / "ct" / "config.json").read_text())
                                           ["quantization_config"])
    (scheme,) = qc.config_groups.values()
    packed, _ = load(packed_dir)
    name = "model.layers.0.mlp.gate_proj"
    m = packed.get_submodule(name)
    state = {"weight": m.dense_weight(), "weight_scale": m.scales.float(),
             "weight_zero_point": (m.zeros.to(torch.int16) - 8).to(torch.int8)}
    reference = PackedQuantizationCompressor.compress(state, scheme)
    with safe_open(tmp_path / "ct" / "model.safetensors", "pt") as f:
        for leaf in ("weight_packed", "weight_zero_point", "weight_shape"):
            assert torch.equal(f.get_tensor(f"{name}.{leaf}"), reference[leaf]), leaf


def test_two_schemes_become_two_groups_targeting_module_names(tiny, tmp_path):
    """Attention in int4 g32, MLP in int8 per channel: one config group each, by module name."""
    from torch import nn

    from llm4all.compress.quantize.rtn import rtn_quantize, to_module
    from llm4all.models.packed import save_packed

    model, tokenizer = load(tiny)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear) and name != "lm_head":
            bits, group = (8, None) if ".mlp." in name else (4, 32)
            model.set_submodule(name, to_module(rtn_quantize(m.weight, bits, group, symmetric=True), m))
    save_packed(model, tokenizer, tmp_path / "packed", {"method": {"name": "rtn"}})
    export_hf(tmp_path / "packed", tmp_path / "ct")
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    by_bits = {g["weights"]["num_bits"]: g["targets"] for g in qc["config_groups"].values()}
    assert sorted(by_bits[8]) == sorted(f"model.layers.{i}.mlp.{p}_proj" for i in (0, 1)
                                        for p in ("gate", "up", "down"))
    assert len(by_bits[4]) == 8 and qc["format"] == "pack-quantized"
    packed, _ = load(tmp_path / "packed")
    hf = from_pretrained(tmp_path / "ct", dtype=torch.float32)
    assert relative(logits(hf), logits(packed)) < 1e-3
    assert hf.model.layers[1].mlp.up_proj.quantization_scheme.weights.strategy == "channel"


def test_w8a8_exports_int_quantized_with_dynamic_token_activations(tiny, tmp_path):
    packed_dir, result = compress_and_export(tiny, tmp_path, {"name": "w8a8"})
    assert result["scheme"].startswith("int-quantized")
    hf = from_pretrained(tmp_path / "ct", dtype=torch.float32)
    packed, _ = load(packed_dir)
    # activations re-rounded per token (compressed-tensors' scale absmax/127.5, llm4all's and
    # vLLM's absmax/127), so the logits agree to the activation rounding only; the weights exactly
    assert relative(logits(hf), logits(packed)) < 2e-2
    scheme = hf.model.layers[0].mlp.up_proj.quantization_scheme
    assert scheme.input_activations.strategy == "token" and scheme.input_activations.dynamic
    up_proj = packed.model.layers[0].mlp.up_proj
    assert torch.equal(hf.model.layers[0].mlp.up_proj.weight, up_proj.dense_weight())


def test_layouts_without_a_vllm_form_export_dense_with_a_note(tiny, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="llm4all"):
        packed_dir, result = compress_and_export(tiny, tmp_path, {"name": "rtn", "bits": 3, "group_size": 32},
                                                 dtype="float32")
    assert "3-bit codes" in caplog.text and result["format"] == "hf"
    assert "quantization_config" not in json.loads((tmp_path / "ct" / "config.json").read_text())
    packed, _ = load(packed_dir)
    assert relative(logits(from_pretrained(tmp_path / "ct", dtype=torch.float32)), logits(packed)) < 1e-3


def test_plan_per_kind():
    def linear(kind, **spec):
        return {"kind": kind, "in_features": 64, "out_features": 64, "bias": False, **spec}

    for spec, reason in [(linear("int", bits=2, group_size=32, symmetric=True), "2-bit codes"),
                         (linear("int8", outliers=3), "LLM.int8()"),
                         (linear("ternary"), "ternary"), (linear("lowrank", rank=8), "low-rank"),
                         (linear("sparse"), "unstructured sparsity")]:
        schemes, why = plan({"model.layers.0.mlp.up_proj": spec})
        assert schemes == {} and why.startswith("model.layers.0.mlp.up_proj: ") and reason in why
    schemes, why = plan({"a": linear("int", bits=4, group_size=64, symmetric=True),
                         "b": linear("int", bits=4, group_size=32, symmetric=False),
                         "model.embed_tokens": {"kind": "embedding", "dtype": "int8"}})
    assert why is None and schemes["a"].group_size is None and schemes["b"].group_size == 32
    with pytest.raises(UserError, match="structurally pruned"):
        plan({"model.layers.0.mlp.up_proj": linear("dense")})


def test_cli_export_of_a_packed_model(tiny, tmp_path, capsys):
    from llm4all.cli import main as cli

    compress(str(tiny), out=tmp_path / "packed", method={"name": "rtn", "bits": 4, "group_size": 32})
    capsys.readouterr()
    cli(["export", str(tmp_path / "packed"), "--format", "hf", "--out", str(tmp_path / "cli")])
    out = capsys.readouterr().out
    assert "compressed-tensors" in out and "pack-quantized" in out
    assert (tmp_path / "cli" / "model.safetensors").is_file()


# ---- the real model (slow): GPTQ int4 SmolLM2-135M ---------------------------------------------

def demo_shards(path: Path, tokenizer, n: int) -> Path:
    """``n`` tokens of the English demo corpus as a token-shard directory (calibration data)."""
    from llm4all.data.demo import iter_demo

    ids: list[int] = []
    for doc in iter_demo("en"):
        ids += tokenizer(doc["text"])["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= n:
            break
    path.mkdir(parents=True)
    np.array(ids[:n], dtype=np.uint16).tofile(path / "train-00000.bin")
    split = {"shards": [{"file": "train-00000.bin", "tokens": n}], "tokens": n}
    index = {"dtype": "uint16", "eos_id": tokenizer.eos_token_id, "splits": {"train": split}}
    (path / "index.json").write_text(json.dumps(index))
    return path


@pytest.mark.slow
def test_smollm2_gptq_int4_export_matches_the_packed_model(tmp_path):
    from llm4all.data.demo import iter_demo

    _, tokenizer = load("smollm2-135m")
    shards = demo_shards(tmp_path / "shards", tokenizer, 4096)
    compress("smollm2-135m", out=tmp_path / "packed", method={"name": "gptq", "bits": 4, "group_size": 64},
             calib=shards, calib_tokens=2048, seq_len=256)
    result = export_hf(tmp_path / "packed", tmp_path / "ct")
    assert result["format"] == "compressed-tensors" and result["quantized_linears"] == 30 * 7
    packed, _ = load(tmp_path / "packed")
    hf = from_pretrained(tmp_path / "ct", dtype=torch.float32)
    text = next(iter(iter_demo("en")))["text"]
    ids = torch.tensor([tokenizer(text)["input_ids"][:128]])
    with torch.no_grad():
        a, b = hf(ids).logits[0], packed(ids).logits[0]
    assert relative(a, b) < 1e-3 and torch.equal(a.argmax(-1), b.argmax(-1))
    # measured 2026-12-06: packed checkpoint 109.5 MiB, this export 108.7 MiB (4-bit zero points
    # instead of llm4all's bytes), the de-quantised float16 export 256.6 MiB (2 bytes per parameter)
    assert result["safetensors_bytes"] < 0.45 * 2 * 134_515_008
    assert result["safetensors_bytes"] <= (tmp_path / "packed" / "model.safetensors").stat().st_size
