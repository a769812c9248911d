"""Structured pruning: remove attention heads, FFN channels and whole layers; matrices shrink.

Scores come from one calibration pass (the model's own activations):

* FFN channel c of a layer: ‖X_c‖₂ · ‖W_down[:, c]‖₂, the Wanda score (Sun et al. 2024) summed
  over the column of ``down_proj`` that channel c feeds — how much the output moves if the
  channel is removed (the same magnitude × activation criterion FLAP and LLM-Pruner use for
  structured groups: An et al. 2024; Ma et al. 2023).
* Query head h: ‖X_h‖_F · ‖W_o[:, h]‖_F over the head's ``head_dim`` input columns of
  ``o_proj``. The same number of query heads is removed from every key/value group so grouped
  attention stays regular (each layer's ``num_key_value_groups`` drops; k/v are kept).
* Layer l: Block Influence BI_l = 1 − E_t[cos(x_l,t, x_{l+1},t)] (Men et al. 2024, "ShortGPT",
  eq. 1); the ``layers`` layers with the lowest BI are dropped.

``heads`` and ``ffn`` are fractions removed in every layer. The pruned model's quality
usually needs recovery training (Xia et al. 2023, "Sheared LLaMA"): run ``llm4all train`` (or
``llm4all distill`` with the original as teacher) on the saved checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from llm4all.catalog import PRUNERS
from llm4all.compress.method import InputStats, Method, check_range
from llm4all.errors import UserError
from llm4all.models.layers import decoder_layers


def _shrunk(linear: nn.Linear, rows: torch.Tensor | None = None,
            cols: torch.Tensor | None = None) -> nn.Linear:
    W = linear.weight.detach()
    W = W[rows] if rows is not None else W
    W = W[:, cols] if cols is not None else W
    out = nn.Linear(W.shape[1], W.shape[0], bias=linear.bias is not None)
    with torch.no_grad():
        out.weight.copy_(W)
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach()[rows] if rows is not None else linear.bias)
    out.llm4all_resized = True
    return out


def ffn_scores(down: nn.Linear, sumsq: torch.Tensor) -> torch.Tensor:
    """(intermediate,) ‖X_c‖₂ · ‖W_down[:, c]‖₂."""
    return sumsq.sqrt() * down.weight.detach().float().norm(dim=0)


def head_scores(o_proj: nn.Linear, sumsq: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(heads,) ‖X_h‖_F · ‖W_o[:, h]‖_F."""
    x = sumsq.view(-1, head_dim).sum(1).sqrt()
    w = o_proj.weight.detach().float().pow(2).sum(0).view(-1, head_dim).sum(1).sqrt()
    return x * w


def prune_ffn(mlp: nn.Module, keep: torch.Tensor) -> None:
    keep = torch.sort(keep).values
    mlp.gate_proj = _shrunk(mlp.gate_proj, rows=keep)
    mlp.up_proj = _shrunk(mlp.up_proj, rows=keep)
    mlp.down_proj = _shrunk(mlp.down_proj, cols=keep)


def prune_heads(attn: nn.Module, scores: torch.Tensor, remove_per_group: int) -> int:
    """Drop the lowest-scoring ``remove_per_group`` query heads of every kv group; returns new n_rep."""
    n_rep, d = attn.num_key_value_groups, attn.head_dim
    grouped = scores.view(-1, n_rep)  # (kv_heads, n_rep)
    keep_local = torch.sort(torch.topk(grouped, n_rep - remove_per_group, dim=1).indices, dim=1).values
    heads = (keep_local + torch.arange(grouped.shape[0])[:, None] * n_rep).flatten()
    cols = (heads[:, None] * d + torch.arange(d)[None, :]).flatten()
    attn.q_proj = _shrunk(attn.q_proj, rows=cols)
    attn.o_proj = _shrunk(attn.o_proj, cols=cols)
    attn.num_key_value_groups = n_rep - remove_per_group
    return attn.num_key_value_groups


@torch.no_grad()
def measure(model: nn.Module, ids: torch.Tensor, batch_size: int = 8) -> tuple[dict, torch.Tensor]:
    """Input Σx² of every o_proj/down_proj and each layer's Block Influence, from one pass."""
    layers = decoder_layers(model)
    sumsq: dict[str, torch.Tensor] = {}
    bi = torch.zeros(len(layers))
    handles = []
    for i, layer in enumerate(layers):
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            def pre(module, args, key=f"{i}.{name}"):
                x = args[0].float().reshape(-1, args[0].shape[-1])
                sumsq[key] = sumsq.get(key, 0) + (x * x).sum(0)
            handles.append(layer.get_submodule(name).register_forward_pre_hook(pre))

        def post(module, args, kwargs, out, i=i):
            x_in = (args[0] if args else kwargs["hidden_states"]).float()
            x_out = (out[0] if isinstance(out, tuple) else out).float()
            bi[i] += (1 - torch.nn.functional.cosine_similarity(x_in, x_out, dim=-1)).sum()
        handles.append(layer.register_forward_hook(post, with_kwargs=True))
    try:
        for s in range(0, len(ids), batch_size):
            model(input_ids=ids[s : s + batch_size], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return sumsq, bi / ids.numel()


@PRUNERS.register("structured")
def structured(heads: float = 0.0, ffn: float = 0.0, layers: int = 0) -> Method:
    """Remove query heads, FFN channels (fractions per layer) and whole layers by measured influence."""
    check_range("heads", heads, 0.0, 1.0, "structured")
    check_range("ffn", ffn, 0.0, 1.0, "structured")
    if layers < 0:
        raise UserError(f"structured: layers must be ≥ 0, got {layers}")

    def transform(model: nn.Module, ids: torch.Tensor) -> dict:
        import time

        start = time.perf_counter()
        stack = decoder_layers(model)
        if layers >= len(stack):
            raise UserError(f"structured: layers={layers} would remove all {len(stack)} layers")
        sumsq, bi = measure(model, ids)
        attributes = {}
        for i, layer in enumerate(stack):
            if ffn:
                score = ffn_scores(layer.mlp.down_proj, sumsq[f"{i}.mlp.down_proj"])
                n_keep = score.numel() - int(score.numel() * ffn)
                prune_ffn(layer.mlp, torch.topk(score, n_keep).indices)
            n_rep = layer.self_attn.num_key_value_groups
            remove = int(round(heads * n_rep))
            if remove >= n_rep:
                raise UserError(f"structured: heads={heads} removes all {n_rep} query heads of a kv group")
            if remove:
                score = head_scores(layer.self_attn.o_proj, sumsq[f"{i}.self_attn.o_proj"],
                                    layer.self_attn.head_dim)
                prune_heads(layer.self_attn, score, remove)
        dropped = sorted(torch.topk(bi, layers, largest=False).indices.tolist()) if layers else []
        kept = [layer for i, layer in enumerate(stack) if i not in dropped]
        model.model.layers = nn.ModuleList(kept)
        model.config.num_hidden_layers = len(kept)
        n_rep = model.config.num_attention_heads // model.config.num_key_value_heads
        for i, layer in enumerate(kept):
            layer.self_attn.layer_idx = i
            if layer.self_attn.num_key_value_groups != n_rep:
                groups = layer.self_attn.num_key_value_groups
                attributes[f"model.layers.{i}.self_attn"] = {"num_key_value_groups": groups}
        return {"seconds": round(time.perf_counter() - start, 2), "calibration_tokens": int(ids.numel()),
                "dropped_layers": dropped, "block_influence": [round(float(b), 5) for b in bi],
                "attributes": attributes}

    def compress(name: str, linear: nn.Linear, stats: InputStats | None) -> nn.Module:
        return linear

    return Method("structured", {"heads": heads, "ffn": ffn, "layers": layers}, compress,
                  stats="input", transform=transform)
