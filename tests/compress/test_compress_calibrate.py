"""Calibration driver: Hessian accumulation, Linear groups, one-pass true-sequential order, fast GPTQ loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from llm4all.compress.calibrate import Accumulator, compress_layers, layer0_inputs, linear_groups
from llm4all.compress.method import Method
from llm4all.compress.quantize.gptq import gptq, gptq_quantize, layer_error
from llm4all.compress.quantize.rtn import quant_params, quantize_codes
from llm4all.models.load import load
from llm4all.threads import busy_cores, free_cores, thread_limit
from tinymodels import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("calib") / "model", hidden=64, layers=2)


def _ids(n=4, t=32, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(4, 64, size=(n, t)))


def test_accumulator_is_two_over_n_xtx_in_pieces():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 24, generator=g) * torch.linspace(0.1, 30, 24)  # columns of very different scale
    acc = Accumulator(24, hessian=True)
    acc.add(x[:2])
    acc.add(x[2:].bfloat16())  # a bf16 input is summed in fp32 like any other
    flat = torch.cat([x[:2].reshape(-1, 24), x[2:].bfloat16().float().reshape(-1, 24)]).double()
    stats = acc.result()
    assert stats.tokens == 150
    assert torch.allclose(stats.hessian.double(), 2 * flat.T @ flat / 150, rtol=1e-5, atol=1e-4)
    assert torch.equal(stats.hessian, stats.hessian.T)
    assert torch.allclose(stats.sumsq.double(), (flat**2).sum(0), rtol=1e-5)
    inputs = Accumulator(24, hessian=False)
    inputs.add(x[:2])
    inputs.add(x[2:].bfloat16())
    assert inputs.result().hessian is None
    assert torch.allclose(inputs.result().sumsq.double(), (flat**2).sum(0), rtol=1e-5)
    assert torch.equal(inputs.result().absmax, flat.abs().amax(0).float())


def test_thread_choice(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr("llm4all.threads.busy_cores", lambda: 0.95)
    assert free_cores(3) == 3 and free_cores(0) == 1  # another process holds a whole core
    monkeypatch.setattr("llm4all.threads.busy_cores", lambda: 0.7)
    assert free_cores(0) == 2
    monkeypatch.setattr("llm4all.threads.busy_cores", lambda: 1.9)
    assert free_cores(0) == 1
    before = torch.get_num_threads()
    with thread_limit(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_busy_cores_is_a_fraction_of_the_machine():
    assert 0.0 <= busy_cores(0.05) <= (__import__("os").cpu_count() or 1)


def test_linear_groups_follow_call_order_and_shared_inputs(tiny):
    model, _ = load(tiny)
    hidden, kwargs = layer0_inputs(model, _ids(1, 8))
    groups = linear_groups(model.model.layers[0], hidden, kwargs)
    assert groups == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                      ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]


def _recording(store: dict, change: bool) -> Method:
    """A method that records each Linear's statistics and keeps (or 2-bit rounds) its weight."""
    def compress(name, linear, stats):
        store[name] = stats
        if not change:
            return linear
        out = nn.Linear(linear.in_features, linear.out_features, bias=False)
        with torch.no_grad():
            out.weight.copy_(torch.round(linear.weight * 4) / 4)
        return out
    return Method("record", {}, compress, stats="hessian")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantized_order_equals_original_when_nothing_changes(tiny, dtype):
    """With weights left as they are, the one-pass hook order sees exactly the original activations."""
    seen = {}
    for sequential in ("quantized", "original"):
        model, _ = load(tiny)
        store = seen[sequential] = {}
        compress_layers(model, _recording(store, change=False), _ids(), dtype=dtype, sequential=sequential,
                        batch_size=1)
    assert seen["quantized"].keys() == seen["original"].keys() and len(seen["original"]) == 14
    for name, s in seen["original"].items():
        assert torch.allclose(seen["quantized"][name].hessian, s.hessian, rtol=1e-4, atol=1e-6), name


def test_quantized_order_feeds_each_linear_the_compressed_upstream(tiny):
    """o_proj's statistics come from the attention of the rounded q/k/v (true-sequential);
    q/k/v of layer 0 read the embeddings, identical in both orders."""
    seen = {}
    for sequential in ("quantized", "original"):
        model, _ = load(tiny)
        store = seen[sequential] = {}
        compress_layers(model, _recording(store, change=True), _ids(), dtype=torch.float32,
                        sequential=sequential)
    q, o = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.o_proj"
    assert torch.allclose(seen["quantized"][q].hessian, seen["original"][q].hessian, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(seen["quantized"][o].hessian, seen["original"][o].hessian, rtol=1e-3)
    # and by hand: the attention output of the rounded layer-0 q/k/v
    model, _ = load(tiny)
    layer = model.model.layers[0]
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj"):
            w = getattr(layer.self_attn, name).weight
            w.copy_(torch.round(w * 4) / 4)
        hidden, kwargs = layer0_inputs(model, _ids())
        captured = []
        layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
        layer(hidden, **kwargs)
    x = captured[0].reshape(-1, captured[0].shape[-1]).double()
    hand = 2 * x.T @ x / x.shape[0]
    assert torch.allclose(seen["quantized"][o].hessian.double(), hand, rtol=1e-4, atol=1e-8)


def test_methods_compute_outside_the_bf16_autocast(tiny):
    """The calibration forward runs under bf16 autocast; a method's own products must not."""
    modes = []

    def compress(name, linear, stats):
        modes.append(torch.is_autocast_enabled("cpu") or (torch.ones(2, 2) @ torch.ones(2, 2)).dtype)
        return linear

    model, _ = load(tiny)
    compress_layers(model, Method("probe", {}, compress, stats="hessian"), _ids(), dtype=torch.bfloat16)
    assert modes == [torch.float32] * 14


def _gptq_reference(W, H, bits, gs, percdamp=0.01):
    """Algorithm 1 without lazy batches: quantise a column, update every later column at once."""
    W = W.double().clone()
    H = H.double().clone()
    H.diagonal().add_(percdamp * H.diagonal().mean())
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    codes, deq = torch.zeros_like(W), torch.zeros_like(W)
    for j in range(W.shape[1]):
        if j % gs == 0:
            scale, zero = (t.double() for t in quant_params(W[:, j : j + gs].float(), bits, False))
        codes[:, j] = quantize_codes(W[:, j], scale, zero, bits)
        deq[:, j] = (codes[:, j] - zero) * scale
        err = (W[:, j] - deq[:, j]) / U[j, j]
        W[:, j:] -= err[:, None] * U[j, j:][None, :]
    return codes, deq.float()


def test_blocked_column_loop_matches_the_unblocked_algorithm():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(1024, 96, generator=g) @ torch.randn(96, 96, generator=g)
    H, W = 2 * X.T @ X / 1024, torch.randn(40, 96, generator=g)
    fast = gptq_quantize(W, H, 4, 32, blocksize=64)  # two blocks, sub-blocks inside each
    codes, deq = _gptq_reference(W, H, 4, 32)
    assert (fast.codes.double() != codes).float().mean() < 0.002  # a rare tie flips in float32
    assert abs(layer_error(W, fast.dequantize(), H) / layer_error(W, deq, H) - 1) < 1e-3


def test_grouped_gptq_equals_gptq_per_linear():
    """q/k/v stacked through one column loop give each Linear the codes it gets alone."""
    g = torch.Generator().manual_seed(4)
    X = torch.randn(512, 64, generator=g) @ torch.randn(64, 64, generator=g)
    stats = Accumulator(64, hessian=True)
    stats.add(X)
    lins = [nn.Linear(64, n, bias=False) for n in (32, 16, 16)]
    method = gptq(bits=4, group_size=16)
    grouped = method.compress_group(["q", "k", "v"], lins, stats.result())
    for lin, packed in zip(lins, grouped, strict=True):
        alone = method.compress("x", lin, stats.result())
        assert torch.equal(packed.qweight, alone.qweight) and torch.equal(packed.scales, alone.scales)
