"""KV-cache quantisation (KIVI): codes, the residual, bytes, and generation/serving through it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llm4all.errors import UserError
from llm4all.models import kvcache
from llm4all.models.kvcache import KiviLayer, bytes_per_value, cache_bytes, kv_cache
from tinybpe import build_bpe_llama

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:  # head_dim 32: one KIVI group per head
    return build_bpe_llama(tmp_path_factory.mktemp("kv") / "bpe", hidden=128, intermediate=256)


@pytest.fixture(scope="module")
def net(model_dir):
    from llm4all.models.load import load

    return load(str(model_dir))


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dim", [-2, -1])
def test_quantize_round_trip_is_within_half_a_step(bits, dim):
    x = torch.randn(2, 3, 64, 32) * torch.linspace(0.1, 10, 32)  # channels of very different range
    codes, scale, lo = kvcache.quantize(x, bits, dim=dim, group_size=32)
    assert codes.dtype == torch.uint8 and codes.numel() == x.numel() * bits // 8
    y = kvcache.dequantize(codes, scale, lo, bits, dim, torch.float32)
    assert y.shape == x.shape
    err = (y - x).abs().movedim(dim, -1)  # codes, scales and minima have the grouped dim last
    half_step = scale.float().expand(*scale.shape[:-1], 32).flatten(-2) / 2
    assert (err <= half_step + 1e-2 * x.abs().movedim(dim, -1)).all()  # + fp16 rounding of scale, min


def test_keys_per_channel_beat_per_token_on_an_outlier_channel():
    """KIVI's observation (fig. 2): an outlier key channel ruins per-token groups, not per-channel ones."""
    k = torch.randn(1, 1, 32, 32)
    k[..., 5] *= 50
    per_channel = kvcache.dequantize(*kvcache.quantize(k, 4, -2, 32), 4, -2, torch.float32)
    per_token = kvcache.dequantize(*kvcache.quantize(k, 4, -1, 32), 4, -1, torch.float32)
    normal = [c for c in range(32) if c != 5]
    assert (per_channel - k)[..., normal].abs().mean() < (per_token - k)[..., normal].abs().mean() / 5


def test_residual_is_exact_and_blocks_are_never_requantised():
    layer = KiviLayer(bits=4, group_size=32, residual=64)
    keys = torch.randn(1, 2, 200, 32)
    values = torch.randn(1, 2, 200, 32)
    k, v = layer.update(keys[..., :100, :], values[..., :100, :])
    assert torch.equal(k, keys[..., :100, :])  # the forward that made them sees them exact
    assert layer.n_quantized == 64 and layer.keys.shape[-2] == 36 and layer.get_seq_length() == 100
    first_block = [t.clone() for t in layer.quantized[0]]
    for t in range(100, 200):
        k, v = layer.update(keys[..., t : t + 1, :], values[..., t : t + 1, :])
    assert layer.get_seq_length() == 200 and layer.n_quantized == 192 and len(layer.quantized) == 3
    assert all(torch.equal(a, b) for a, b in zip(first_block, layer.quantized[0], strict=True))
    assert torch.equal(k[..., 192:, :], keys[..., 192:, :])  # the residual: exact
    assert 0 < (k[..., :192, :] - keys[..., :192, :]).abs().max() < 0.5


def test_bytes_held_match_the_planners_formula():
    layer = KiviLayer(bits=4, group_size=32, residual=32)
    layer.update(torch.randn(1, 3, 128, 64), torch.randn(1, 3, 128, 64))
    cache = type("C", (), {"layers": [layer]})()
    assert layer.keys.shape[-2] == 0  # 128 tokens: four full blocks, nothing left in full precision
    assert cache_bytes(cache) == 2 * 3 * 64 * 128 * bytes_per_value("int4", 32)
    assert bytes_per_value("int4") == 0.625 and bytes_per_value("int8") == 1.125
    assert bytes_per_value("fp16") == 2


def test_planner_kv_dtype_counts_the_scales():
    from llm4all.plan.arch import Arch
    from llm4all.plan.memory import Setup, breakdown

    arch = Arch(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536, vocab=49152)
    int4 = breakdown(arch, Setup(mode="inference", seq=1000, kv_dtype="int4"))["kv_cache"]
    fp16 = breakdown(arch, Setup(mode="inference", seq=1000, kv_dtype="fp16"))["kv_cache"]
    assert int4 == 2 * 30 * 3 * 64 * 1000 * 0.625 and fp16 / int4 == 3.2
    from llm4all.plan.memory import kv_bytes_per_value

    for kv in ("fp32", "fp16", "bf16", "int8", "int4"):  # the planner counts what the cache holds
        assert kv_bytes_per_value(kv, 16) == bytes_per_value(kv, 16)


def test_int8_cache_tracks_the_fp32_cache_and_crops(net):
    model, _ = net
    ids = torch.randint(0, 320, (1, 150), generator=torch.Generator().manual_seed(0))
    logits = {}
    for kv in ("fp32", "int8", "int4", "bf16"):
        cache = kv_cache(model, kv, group_size=32, residual=32)
        with torch.no_grad():
            model(input_ids=ids[:, :100], cache=cache, use_cache=True)
            logits[kv] = model(input_ids=ids[:, 100:], cache=cache, use_cache=True).logits
        assert cache.get_seq_length() == 150
    ref = logits["fp32"]
    assert (logits["int8"] - ref).abs().max() < 0.02 * ref.abs().max()
    assert (logits["int8"] - ref).abs().max() < (logits["int4"] - ref).abs().max()
    assert (logits["bf16"] - ref).abs().max() < 0.05 * ref.abs().max()
    cache = kv_cache(model, "int8", group_size=32, residual=32)
    with torch.no_grad():
        model(input_ids=ids[:, :100], cache=cache, use_cache=True)
    blocks = list(cache.layers[0].quantized)
    kvcache.keep_first(cache, 70)  # into the third block: two kept as they are, 6 tokens de-quantised
    layer = cache.layers[0]
    assert cache.get_seq_length() == 70 and layer.n_quantized == 64 and layer.keys.shape[-2] == 6
    assert layer.quantized[0] is blocks[0] and layer.quantized[1] is blocks[1]
    kvcache.keep_first(cache, 20)  # into the first block: nothing quantised is left
    assert layer.n_quantized == 0 and layer.keys.shape[-2] == 20 and not layer.quantized
    with torch.no_grad():  # and it goes on: 30 more tokens make a full residual, flushed as a block
        model(input_ids=ids[:, 20:50], cache=cache, use_cache=True)
    assert layer.n_quantized == 32 and layer.keys.shape[-2] == 18


def test_kv_dtype_errors(net):
    model, _ = net
    with pytest.raises(UserError, match=r"--kv-dtype 'int3'.*int8, int4"):
        kv_cache(model, "int3")
    with pytest.raises(UserError, match="multiple of the group size"):
        kv_cache(model, "int8", group_size=32, residual=48)


def test_generate_with_a_quantised_cache_matches_fp32_while_the_residual_holds(model_dir):
    from llm4all.serve.backends import open_lm
    from llm4all.serve.generate import generate

    prompt = "the of and she was with they can not there is one all we would"
    out = {kv: generate(open_lm(str(model_dir), kv_dtype=kv), prompt, max_new_tokens=40).token_ids
           for kv in ("auto", "int8", "int4")}
    # fewer than 128 tokens in all: every key and value is still in the exact residual
    assert out["int8"] == out["auto"] == out["int4"]


def test_eval_kv_cache_cli(model_dir, tmp_path, capsys):
    from llm4all.cli import main

    data = tmp_path / "text.jsonl"
    data.write_text(json.dumps({"id": "a", "text": "the of and she was with they can not " * 60}) + "\n")
    assert main(["eval", "kv-cache", str(model_dir), "--data", str(data), "--max-tokens", "300",
                 "--residual", "32", "--kv-dtypes", "fp16", "int8", "int4",
                 "--out", str(tmp_path / "o")]) == 0
    result = json.loads((tmp_path / "o" / "kv_cache.json").read_text())
    rows = result["results"]
    assert list(rows) == ["fp32", "fp16", "int8", "int4"]
    assert rows["fp32"]["bytes_per_token"] > rows["fp16"]["bytes_per_token"] > rows["int8"]["bytes_per_token"]
    assert rows["int8"]["bytes_per_token"] > rows["int4"]["bytes_per_token"]
    assert abs(rows["int8"]["ppl_change"]) < 0.01 and rows["fp32"]["ppl_change"] == 0
    assert "KV cache on 300 tokens" in capsys.readouterr().out
    assert main(["eval", "kv-cache", str(model_dir), "--kv-dtypes", "int2"]) == 2


def test_eval_speed_measures_the_cache_it_decodes_with(net):
    from llm4all.evaluate.speed import decode_speed

    model, _ = net
    fp32 = decode_speed(model, new_tokens=8, batch=2, prompt=160, repeats=1)
    int4 = decode_speed(model, new_tokens=8, batch=2, prompt=160, repeats=1, kv_dtype="int4")
    assert fp32["kv_bytes_per_token"] == 2 * 2 * 2 * 32 * 4  # layers · (k, v) · kv_heads · head_dim · fp32
    assert int4["kv_bytes_per_token"] < fp32["kv_bytes_per_token"] / 2 and int4["kv_dtype"] == "int4"
