"""CPU weight-only kernels behind QuantLinear and the packed head: same maths, same checkpoints."""

import pytest
import torch

from llm4all.models.packed import kernels
from llm4all.models.packed.embedding import PackedEmbedding
from llm4all.models.packed.kernels import from_kernel_layout, to_kernel_layout
from llm4all.models.packed.qlinear import QuantLinear

pytestmark = pytest.mark.skipif(not kernels.HAS_KERNELS, reason="this torch has no CPU weight-only kernels")


def _layer(bits, group_size, symmetric, n=128, k=576, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (n, k), generator=g)
    scales = (torch.rand(n, k // group_size, generator=g) * 0.02 + 1e-3).half()
    zeros = None if symmetric else torch.randint(0, 2**bits, (n, k // group_size), generator=g).byte()
    return QuantLinear.from_codes(codes, scales, zeros, bits, group_size)


def test_layout_is_torchs_int4_packing():
    codes = torch.randint(0, 16, (192, 96), dtype=torch.int32)
    packed = to_kernel_layout(codes)
    assert torch.equal(packed, torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2))
    assert torch.equal(from_kernel_layout(packed, 192, 96), codes.to(torch.uint8))


@pytest.mark.parametrize("bits,group_size,symmetric,kernel", [
    (4, 64, False, "int4"), (4, 64, True, "int4"), (3, 64, False, "int4"),
    (4, 576, False, "int4"),  # per channel: run as groups of 64 with repeated scales
    (4, 192, True, "int4"), (8, 576, True, "int8"), (8, 576, False, "int8"),
    (8, 64, False, None),  # group-wise 8-bit: no kernel, the de-quantising path
])
def test_kernel_matches_dense_and_keeps_the_checkpoint(bits, group_size, symmetric, kernel):
    m = _layer(bits, group_size, symmetric)
    saved = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(3, 5, 576)
    exact = torch.nn.functional.linear(x, m.dense_weight())
    with torch.no_grad():
        y = m(x)
    assert m._kernel == kernel
    assert y.shape == exact.shape and y.dtype == x.dtype
    # bf16 activations and scales: a few parts in a thousand of the output's scale
    assert (y - exact).abs().max() <= 1e-2 * exact.abs().max()
    # the in-place re-layout is invisible: same codes, same state_dict, same dense weight
    assert all(torch.equal(saved[k], v) for k, v in m.state_dict().items())
    assert torch.equal(m.codes(), _layer(bits, group_size, symmetric).codes())
    fresh = _layer(bits, group_size, symmetric, seed=1)
    with torch.no_grad():
        fresh(x)
    fresh.load_state_dict(saved)  # a kernel-ordered layer takes a checkpoint in llm4all's order
    assert fresh._kernel is None and torch.equal(fresh.qweight, saved["qweight"])
    with torch.no_grad():
        assert torch.equal(fresh(x), y)


def test_autograd_and_opt_out_use_the_exact_path(monkeypatch):
    m = _layer(4, 64, False)
    x = torch.randn(4, 576, requires_grad=True)
    exact = torch.nn.functional.linear(x, m.dense_weight())
    y = m(x)
    assert m._kernel is None and torch.allclose(y, exact, atol=1e-5)
    y.sum().backward()
    assert x.grad is not None
    monkeypatch.setenv("LLM4ALL_QKERNEL", "0")
    with torch.no_grad():
        assert torch.allclose(m(x), exact, atol=1e-5)
    assert m._kernel is None


@pytest.mark.parametrize("kind,rows", [("float16", 1), ("int8", 1), ("int8", 9), ("float16", 40)])
def test_packed_head_decode_paths(kind, rows):
    w = torch.randn(1000, 64) * 0.05
    head = PackedEmbedding.from_weight(w, kind, role="head")
    h = torch.randn(rows, 64)
    exact = h @ head.dense_weight().T
    with torch.no_grad():
        y = head(h)
    assert y.shape == exact.shape and y.dtype == torch.float32
    assert (y - exact).abs().max() <= 1e-2 * exact.abs().max()


def test_shapes_the_kernels_refuse_take_the_exact_path():
    # int8 kernel: in_features must be a multiple of 16 (torch 2.13 segfaults otherwise)
    m = _layer(8, 40, True, n=64, k=40)
    x = torch.randn(2, 40)
    with torch.no_grad():
        y = m(x)
    assert m._kernel is None and torch.allclose(y, torch.nn.functional.linear(x, m.dense_weight()), atol=1e-5)
    # int4 kernel: out_features must be a multiple of 64
    m = _layer(4, 32, False, n=48, k=64)
    with torch.no_grad():
        m(torch.randn(2, 64))
    assert m._kernel is None
    head = PackedEmbedding.from_weight(torch.randn(100, 24), "int8", role="head")
    h = torch.randn(1, 24)
    with torch.no_grad():
        assert torch.allclose(head(h), h @ head.dense_weight().T, atol=1e-5)


def test_tensors_at_odd_file_offsets_are_copied_to_aligned_memory(tmp_path):
    """safetensors places an int8 matrix after 3 float16 values 8-byte aligned at best; the int8
    kernel crashed the process on such a matrix (the quickstart's student), so loads realign."""
    from safetensors.torch import load_file, save_file

    q = torch.randint(-127, 128, (64, 32), dtype=torch.int8)
    save_file({"a": torch.ones(3, dtype=torch.float16), "b": q}, tmp_path / "t.safetensors")
    b = load_file(tmp_path / "t.safetensors")["b"]
    assert b.data_ptr() % kernels.ALIGNMENT != 0  # the hazard is real in this layout
    fixed = kernels.aligned(b)
    assert fixed.data_ptr() % kernels.ALIGNMENT == 0 and torch.equal(fixed, q)
    assert kernels.aligned(fixed) is fixed  # aligned tensors are not copied


def test_loaded_packed_checkpoints_are_aligned_for_the_kernels(tiny_model, tmp_path):
    from torch import nn

    from llm4all.compress.quantize.rtn import rtn_quantize, to_module
    from llm4all.models.load import load
    from llm4all.models.packed import load_packed, save_packed
    from llm4all.models.packed.embedding import pack_embeddings

    model, tokenizer = load(tiny_model)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear) and name != "lm_head":
            model.set_submodule(name, to_module(rtn_quantize(m.weight, 8, None, symmetric=True), m))
    pack_embeddings(model, "int8")
    save_packed(model, tokenizer, tmp_path / "packed", {"method": {"name": "rtn"}})
    packed, _ = load_packed(tmp_path / "packed")
    tensors = [*packed.parameters(), *packed.buffers()]
    assert tensors and all(t.data_ptr() % kernels.ALIGNMENT == 0 for t in tensors if t.numel())
    ids = torch.randint(0, packed.config.vocab_size, (1, 9))
    with torch.no_grad():
        assert torch.isfinite(packed(ids).logits).all()
