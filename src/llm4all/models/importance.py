"""How much each part of a teacher matters, measured on calibration tokens: layers, heads, channels.

A student keeps what matters most. Three measurements, each from one forward pass of the
teacher over calibration windows (no gradients):

* **Block influence** (ShortGPT, Men et al. 2024, eq. 2): BI_i = 1 − E_t[cos(x_i,t, x_i+1,t)],
  one minus the mean cosine similarity between the residual stream entering and leaving layer i
  over all tokens t. A layer that barely turns the stream has low BI and is removed first.
* **Angular distance of a block** (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the
  Deeper Layers", eq. 7): d(x_ℓ, x_ℓ+n) = arccos(cos(x_ℓ, x_ℓ+n)) / π, averaged over tokens;
  the block of n consecutive layers with the smallest distance is the one to drop.
* **Activation importance of heads and MLP channels** (Minitron, Muralidharan et al. 2024,
  sec. 2.2): a head's score is the L2 norm of its attention output (before o_proj), an MLP
  channel's the magnitude of its activation act(x·W_gate)·(x·W_up); both averaged over the
  batch after an L2 norm over the sequence (their best aggregation for width, Table 11).

``select_layers_by_importance`` turns the layer scores into the teacher layers a student keeps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from llm4all.errors import UserError
from llm4all.models.device import model_device
from llm4all.models.layers import decoder_layers

LayerMethod = Literal["block_influence", "angular"]
LAYER_METHODS = ("block_influence", "angular")


@torch.no_grad()
def residual_stream(model: nn.Module, ids: torch.Tensor, batch_size: int = 8) -> list[torch.Tensor]:
    """The residual stream at every layer boundary: L + 1 tensors (N, H) over all N tokens of ``ids``.

    Entry i is the input of decoder layer i (entry 0 the embeddings), entry L the last layer's
    output before the final norm; fp32 on the CPU. One forward pass per batch, read by hooks.
    """
    layers = decoder_layers(model)
    states: list[list[torch.Tensor]] = [[] for _ in range(len(layers) + 1)]

    def keep(i: int, x: torch.Tensor) -> None:
        states[i].append(x.reshape(-1, x.shape[-1]).float().cpu())

    def entry(module, args, kwargs):  # the input of layer 0: the embeddings
        keep(0, kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])

    handles = [layers[0].register_forward_pre_hook(entry, with_kwargs=True)]
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(
            lambda mod, args, output, i=i: keep(i + 1, output[0] if isinstance(output, tuple) else output)))
    try:
        for start in range(0, ids.shape[0], batch_size):
            model(input_ids=ids[start:start + batch_size].to(model_device(model)))
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(s) for s in states]


def _mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).mean().item()


def block_influence(stream: list[torch.Tensor]) -> list[float]:
    """BI of every layer (ShortGPT eq. 2) from ``residual_stream`` output: L values."""
    return [1.0 - _mean_cosine(stream[i], stream[i + 1]) for i in range(len(stream) - 1)]


def angular_distance(stream: list[torch.Tensor], n: int) -> list[float]:
    """d(x_ℓ, x_ℓ+n) for ℓ = 0 .. L − n (Gromov et al. 2024, eq. 7), in [0, 1]."""
    out = []
    for start in range(len(stream) - n):
        a, b = stream[start].double(), stream[start + n].double()
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        out.append((torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi).mean().item())
    return out


def select_layers_by_importance(stream: list[torch.Tensor], keep: int,
                                method: LayerMethod = "block_influence") -> list[int]:
    """The ``keep`` teacher layers a student keeps, in order.

    ``block_influence``: the layers with the highest BI. ``angular``: drop the contiguous block of
    L − keep layers whose ends are closest in angle (the last layer is never in it, as in the
    paper, whose optimal blocks end before the final layer).
    """
    n_layers = len(stream) - 1
    if not 1 <= keep <= n_layers:
        raise UserError(f"keep {keep} layers: must be in 1..{n_layers} (the teacher's depth)")
    if method not in LAYER_METHODS:
        raise UserError(f"layer importance {method!r}: valid: {', '.join(LAYER_METHODS)}")
    if keep == n_layers:
        return list(range(n_layers))
    if method == "block_influence":
        bi = block_influence(stream)
        return sorted(sorted(range(n_layers), key=lambda i: -bi[i])[:keep])
    drop = n_layers - keep
    distance = angular_distance(stream, drop)[: n_layers - drop]  # blocks that end before the last layer
    start = min(range(len(distance)), key=distance.__getitem__)
    return [i for i in range(n_layers) if not start <= i < start + drop]


@contextmanager
def _capture_inputs(modules: dict[str, nn.Module]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the input of each module (a forward pre-hook) while the context is open."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: seen[name].append(args[0].detach()))
               for name, m in modules.items()]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def width_importance(model: nn.Module, ids: torch.Tensor, batch_size: int = 8) -> dict[int, dict]:
    """Minitron activation importance per decoder layer: ``{i: {"heads": (H,), "channels": (I,)}}``.

    A head's score: its slice of o_proj's input (the attention output of that head), L2 norm over
    the sequence, mean over the batch. A channel's: |act(x W_gate) · (x W_up)| — down_proj's input
    — L2 norm over the sequence, mean over the batch (Muralidharan et al. 2024, sec. 2.2).
    """
    layers = decoder_layers(model)
    cfg = model.config
    heads = cfg.num_attention_heads
    watch = {f"{i}.o": layer.self_attn.o_proj for i, layer in enumerate(layers)}
    watch.update({f"{i}.down": layer.mlp.down_proj for i, layer in enumerate(layers)})
    with _capture_inputs(watch) as seen:
        for start in range(0, ids.shape[0], batch_size):
            model(input_ids=ids[start:start + batch_size].to(model_device(model)))
    out = {}
    for i in range(len(layers)):
        o = torch.cat(seen[f"{i}.o"]).float()  # (B, T, H·d)
        per_head = o.reshape(*o.shape[:2], heads, -1).norm(dim=-1)  # (B, T, heads)
        down = torch.cat(seen[f"{i}.down"]).float()  # (B, T, I)
        out[i] = {"heads": per_head.norm(dim=1).mean(0), "channels": down.abs().norm(dim=1).mean(0)}
    return out
