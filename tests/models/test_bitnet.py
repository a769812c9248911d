"""BitNet b1.58: absmean ternary weights, 8-bit activations, STE training, packed inference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llm4all.compress.quantize.gptq import single_thread
from llm4all.models.bitnet import (
    BitLinear,
    absmax_int8,
    absmean_ternary,
    bitnet_convert,
    ternarize,
)
from llm4all.models.packed.int8 import TernaryLinear


def test_absmean_ternary_hand_computed():
    W = torch.tensor([[0.5, -1.0], [0.1, 0.0]])
    q, gamma = absmean_ternary(W)
    assert gamma.item() == torch.tensor(0.4).item()  # mean |W| = 1.6 / 4
    assert q.tolist() == [[1.0, -1.0], [0.0, 0.0]]  # W/γ = 1.25, -2.5, 0.25, 0


def test_absmax_int8_per_token():
    x = torch.tensor([[1.0, -0.5, 0.001], [254.0, 1.0, -127.0]])
    xq = absmax_int8(x)
    assert torch.allclose(xq[0], torch.tensor([1.0, -64 / 127, 0.0]))
    assert torch.allclose(xq[1], torch.tensor([254.0, 0.0, -128.0]))  # step 2: 1.0 -> 0


def test_straight_through_gradient():
    torch.manual_seed(0)
    bit = BitLinear(8, 3)
    x = torch.randn(5, 8)
    bit(x).sum().backward()
    # STE: d/dW of sum(x_q · W_qᵀ) taken as if W_q were W -> Σ_t x_q[t] for every output row
    assert torch.allclose(bit.weight.grad, absmax_int8(x).sum(0).expand(3, 8), atol=1e-6)


def _tiny_llama(hidden=32):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


@pytest.mark.slow
def test_bitnet_model_trains_and_ternarizes():
    with single_thread():  # tiny ops: two contended threads made this 60 s instead of 2 s
        _train_and_ternarize()


def _train_and_ternarize():
    model = bitnet_convert(_tiny_llama())
    bits = [m for m in model.modules() if isinstance(m, BitLinear)]
    assert len(bits) == 14 and not isinstance(model.lm_head, BitLinear)
    pattern = torch.arange(16).repeat(2)[None].repeat(8, 1) % 32  # a learnable periodic sequence
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(input_ids=pattern, labels=pattern).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    model.eval()
    with torch.no_grad():
        before = model(input_ids=pattern[:1]).logits
        ternarize(model)
        after = model(input_ids=pattern[:1]).logits
    assert sum(isinstance(m, TernaryLinear) for m in model.modules()) == 14
    assert torch.allclose(before, after, atol=1e-3)  # packed int8 path == the training forward


def test_ternary_linear_matches_bitlinear():
    torch.manual_seed(1)
    lin = nn.Linear(16, 6)
    bit = BitLinear(16, 6)
    bit.load_state_dict(lin.state_dict())
    q, gamma = absmean_ternary(lin.weight.detach())
    tern = TernaryLinear.from_ternary(q, float(gamma), lin.bias)
    x = torch.randn(4, 16)
    assert torch.allclose(tern(x), bit(x), atol=1e-5)
    assert tern.qweight.numel() == 6 * 4  # 2 bits per weight
