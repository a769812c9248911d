"""QLoRA on llm4all's own packed 4-bit Linears: a frozen int4 base with trainable LoRA adapters.

LoRA (Hu et al. 2022, section 4.1): y = W x + (alpha / r) · B A x with A (r, in) drawn like a
Linear's weight, B (out, r) = 0 (the adapted model starts as the base), W frozen. QLoRA
(Dettmers et al. 2023, section 3) stores W in 4 bits and de-quantises it on the fly in the
forward and the backward pass, so no 16- or 32-bit copy of the base is ever resident; the
gradient flows through W to the layer's input but W gets none.

Here W is ``QuantLinear``: round-to-nearest 4-bit codes in groups of ``GROUP`` columns with a
float16 scale and a uint8 zero point each (4.375 bits per weight), the layout ``compress``
writes, rather than QLoRA's NF4 with double quantisation (4.127 bits). The de-quantised matrix
lives only inside one layer's forward or backward (``_ThroughPacked``). Every other parameter
(embeddings, norms, the head) is frozen, as in ``peft``'s LoRA. ``merge`` folds the adapters
into the de-quantised base, W' = deq(W) + (alpha / r) · B A: the merged model is what the
adapters were trained against (``compress`` can quantise it again).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llm4all.errors import UserError
from llm4all.models.layers import decoder_layers
from llm4all.models.packed.qlinear import QuantLinear
from llm4all.models.packed.rtn import rtn_quantize, to_module

BITS, GROUP = 4, 64  # the frozen base: 4-bit codes, a scale and a zero point per 64 input columns
BASES = ("int4",)


class _ThroughPacked(torch.autograd.Function):
    """``F.linear(x, deq(W), b)`` whose backward de-quantises W again instead of saving it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:
        ctx.layer, ctx.dtype = layer, x.dtype
        bias = None if layer.bias is None else layer.bias.to(x.dtype)
        return F.linear(x, layer.dense_weight(x.dtype), bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w = ctx.layer.dense_weight(grad.dtype)  # (out, in), transient
        return (grad @ w).to(ctx.dtype), None


class LoRALinear(nn.Module):
    """A frozen packed base plus trainable ``lora_A`` (r, in) and ``lora_B`` (out, r)."""

    def __init__(self, base: QuantLinear, rank: int, alpha: float):
        super().__init__()
        self.base, self.rank, self.scale = base, rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.qweight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.qweight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own initialisation

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _ThroughPacked.apply(x, self.base)
        return y + F.linear(F.linear(x, self.lora_A.to(y.dtype)), self.lora_B.to(y.dtype)) * self.scale

    def merged(self) -> nn.Linear:
        """The plain Linear W' = deq(W) + scale · B A (float32), with the base's bias."""
        weight = self.base.dense_weight(torch.float32) + self.scale * (self.lora_B.detach().float()
                                                                       @ self.lora_A.detach().float())
        out = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None,
                        device=weight.device)
        out.weight.data.copy_(weight)
        if self.base.bias is not None:
            out.bias.data.copy_(self.base.bias)
        return out


def add_qlora(net: nn.Module, targets: list[str], rank: int, alpha: float, base: str = "int4") -> nn.Module:
    """Quantise every decoder Linear named in ``targets`` to a packed ``base`` and put LoRA on it;
    everything else is frozen. Returns ``net`` (changed in place)."""
    if base not in BASES:
        raise UserError(f"--lora-base {base!r}: valid bases are {', '.join(BASES)} (or none)")
    net.requires_grad_(False)
    for layer in decoder_layers(net):
        for name, module in list(layer.named_modules()):
            if name.rsplit(".", 1)[-1] not in targets or not isinstance(module, nn.Linear):
                continue
            if module.in_features % GROUP:
                raise UserError(f"--lora-base {base}: {name} has {module.in_features} input columns, "
                                f"not a multiple of the {GROUP}-column groups")
            packed = to_module(rtn_quantize(module.weight.detach(), BITS, GROUP, symmetric=False), module)
            layer.set_submodule(name, LoRALinear(packed.to(module.weight.device), rank, alpha))
    if not any(isinstance(m, LoRALinear) for m in net.modules()):
        raise UserError(f"--lora-base {base}: the model has no Linear named {', '.join(targets)}")
    return net


def merge(net: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` by its merged plain Linear (in place); returns ``net``."""
    for name, module in list(net.named_modules()):
        if isinstance(module, LoRALinear):
            net.set_submodule(name, module.merged())
    return net


def has_qlora(net: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in net.modules())
