"""The shared de-quantisation buffer works in and out of inference mode."""

from __future__ import annotations

import torch

from llm4all.models.packed.qlinear import QuantLinear


def test_scratch_buffer_survives_a_switch_out_of_inference_mode(monkeypatch):
    """A buffer made under inference_mode (as perplexity runs) cannot be written under no_grad;
    scratch keeps one per mode, so a packed Linear runs in both, in either order."""
    monkeypatch.setenv("LLM4ALL_QKERNEL", "0")  # the de-quantising path that uses the buffer
    codes = torch.randint(0, 16, (8, 32), dtype=torch.uint8)
    m = QuantLinear.from_codes(codes, torch.rand(8, 1).half() + 0.1, None, 4, 32)
    x = torch.randn(2, 32)
    with torch.inference_mode():
        a = m(x)
    with torch.no_grad():
        b = m(x)
    assert torch.equal(a, b)
    assert torch.allclose(b, x @ m.dense_weight().T)
