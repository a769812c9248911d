"""Feature-based and relation-based KD on hidden states and attention projections.

Feature KD (FitNets, Romero et al. 2015; TinyBERT, Jiao et al. 2020): the student's hidden
states at chosen layers go through a learned linear projection to the teacher's width and are
matched to the teacher's hidden states at mapped layers, by MSE or cosine distance.

Relation KD transfers relations between positions, which do not depend on the hidden sizes:

- MiniLM self-attention relations (Wang et al. 2020, "MiniLM"; Wang et al. 2021, "MiniLMv2"):
  for the queries, keys and values of one layer, each split into R "relation heads",
  rel = softmax(X·Xᵀ / √d_r) over positions, and the loss is Σ_{X∈{Q,K,V}} KL(rel_T ‖ rel_S)
  averaged over rows. MiniLMv2 splits the concatenated projections into the same number R of
  relation heads for teacher and student, so the attention head counts need not agree.
- Gram relations of hidden states (similarity-preserving KD, Tung & Mori 2019): G = Ĥ·Ĥᵀ over
  the positions of a sequence with Ĥ the L2-normalised rows, matched by MSE. G is invariant to
  any orthogonal rotation (and rescaling) of the hidden dimension.

The functions take tensors, so any architecture works; ``capture_qkv`` collects the q/k/v
projections of a Llama-style layer with forward hooks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from llm4all.distill.losses import kl
from llm4all.errors import UserError

LayerMap = Sequence[tuple[int, int]]


def default_layer_map(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Uniform (student layer, teacher layer) pairs, 1-based as in HF ``hidden_states`` (0 = embeddings).

    Student layer i maps to teacher layer round(i·n_teacher / n_student), so the last maps to the
    last (the "uniform" strategy of TinyBERT, Jiao et al. 2020): 3 of 30 -> (1,10), (2,20), (3,30).
    """
    if n_student < 1 or n_teacher < 1:
        raise UserError(f"layer counts must be positive, got student {n_student}, teacher {n_teacher}")
    return [(i, max(1, round(i * n_teacher / n_student))) for i in range(1, n_student + 1)]


class FeatureProjector(nn.Module):
    """One learned ``Linear(student_dim, teacher_dim)`` per mapped (student, teacher) layer pair."""

    def __init__(self, student_dim: int, teacher_dim: int, layer_map: LayerMap):
        super().__init__()
        if not layer_map:
            raise UserError("layer_map is empty: map at least one (student layer, teacher layer) pair")
        self.layer_map = [(int(s), int(t)) for s, t in layer_map]
        self.proj = nn.ModuleList(nn.Linear(student_dim, teacher_dim) for _ in self.layer_map)

    def forward(self, student_hiddens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Projected student hidden states, one (B, T, teacher_dim) per pair."""
        return [p(student_hiddens[s]) for p, (s, _) in zip(self.proj, self.layer_map, strict=True)]


def feature_loss(student_hiddens: Sequence[torch.Tensor], teacher_hiddens: Sequence[torch.Tensor],
                 projector: FeatureProjector, kind: Literal["mse", "cosine"] = "mse",
                 layer_map: LayerMap | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over mapped pairs of MSE(proj(h_s), h_t) or 1 − cos(proj(h_s), h_t), computed in fp32.

    ``*_hiddens``: per-layer (B, T, d) tensors indexed like HF ``output_hidden_states``;
    ``layer_map`` defaults to the projector's; ``mask`` (B, T) bool keeps positions.
    """
    if kind not in ("mse", "cosine"):
        raise UserError(f"unknown feature loss kind {kind!r}; valid: cosine, mse")
    layer_map = projector.layer_map if layer_map is None else [tuple(p) for p in layer_map]
    if list(layer_map) != projector.layer_map:
        raise UserError(f"layer_map {layer_map} differs from the projector's {projector.layer_map}")
    for s, t in layer_map:
        if not (0 <= s < len(student_hiddens) and 0 <= t < len(teacher_hiddens)):
            raise UserError(f"layer pair ({s}, {t}) out of range: student has {len(student_hiddens)} "
                            f"hidden states, teacher {len(teacher_hiddens)}")
    losses = []
    for proj, (_, t) in zip(projector(student_hiddens), layer_map, strict=True):
        hs, ht = proj.float(), teacher_hiddens[t].float()
        if kind == "mse":
            per_pos = (hs - ht).pow(2).mean(-1)  # (B, T)
        else:
            per_pos = 1.0 - F.cosine_similarity(hs, ht, dim=-1, eps=1e-8)
        losses.append(_masked_mean(per_pos, mask))
    return torch.stack(losses).mean()


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


# ---- relation KD --------------------------------------------------------------------------

def relation_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, d) concatenated projections -> (B, R, T, d/R) relation heads."""
    B, T, d = x.shape
    if d % n_heads:
        raise UserError(f"{n_heads} relation heads do not divide the projection width {d}")
    return x.reshape(B, T, n_heads, d // n_heads).transpose(1, 2)


def self_relation(x: torch.Tensor, n_heads: int, mask: torch.Tensor | None = None,
                  causal: bool = False) -> torch.Tensor:
    """log softmax(X·Xᵀ / √d_r) per relation head: (B, T, d) -> (B, R, T, T) log-probabilities."""
    h = relation_heads(x.float(), n_heads)
    scores = h @ h.transpose(-1, -2) / math.sqrt(h.shape[-1])  # (B, R, T, T)
    T = x.shape[1]
    low = torch.finfo(scores.dtype).min  # not -inf: a row with every key masked stays finite
    if causal:
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=x.device).tril(), low)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :].bool(), low)
    return torch.log_softmax(scores, dim=-1)


def attention_relation_loss(student_qkv: Sequence[torch.Tensor], teacher_qkv: Sequence[torch.Tensor], *,
                            n_relation_heads: int, mask: torch.Tensor | None = None,
                            causal: bool = False) -> torch.Tensor:
    """MiniLM/MiniLMv2 self-attention relation transfer: Σ over Q, K, V of the mean row KL(teacher ‖ student).

    ``*_qkv``: (q, k, v) projections (B, T, d), each width divisible by ``n_relation_heads``;
    widths may differ between teacher and student and between q and k/v (grouped-query
    attention). ``mask`` (B, T) bool drops padded keys and rows; ``causal`` relates each
    position only to itself and earlier ones (MiniLM, an encoder, relates all pairs).
    """
    if len(student_qkv) != len(teacher_qkv):
        raise UserError(f"{len(student_qkv)} student and {len(teacher_qkv)} teacher relation inputs")
    widths = [x.shape[-1] for x in (*student_qkv, *teacher_qkv)]
    g = math.gcd(*widths)
    if n_relation_heads < 1 or g % n_relation_heads:
        valid = [r for r in range(1, g + 1) if g % r == 0]
        raise UserError(f"{n_relation_heads} relation heads do not divide every projection width "
                        f"{sorted(set(widths))}; valid: {', '.join(map(str, valid))}")
    total = 0.0
    for xs, xt in zip(student_qkv, teacher_qkv, strict=True):
        if xs.shape[:2] != xt.shape[:2]:
            raise UserError(f"student {tuple(xs.shape)} and teacher {tuple(xt.shape)} "
                            "differ in batch/positions")
        logq = self_relation(xs, n_relation_heads, mask, causal)
        logp = self_relation(xt, n_relation_heads, mask, causal)
        rows = kl(logp, logq)  # (B, R, T)
        row_mask = None if mask is None else mask[:, None, :].expand_as(rows)
        total = total + _masked_mean(rows, row_mask)
    return total


def gram_relation(h: torch.Tensor) -> torch.Tensor:
    """Ĥ·Ĥᵀ over positions with L2-normalised rows: (B, T, d) -> (B, T, T) cosine similarities."""
    hn = F.normalize(h.float(), dim=-1, eps=1e-8)
    return hn @ hn.transpose(-1, -2)


def gram_relation_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between the position Gram matrices of student and teacher hidden states (Tung & Mori 2019)."""
    if student_hidden.shape[:2] != teacher_hidden.shape[:2]:
        raise UserError(f"student {tuple(student_hidden.shape)} and teacher {tuple(teacher_hidden.shape)} "
                        "differ in batch/positions")
    sq = (gram_relation(student_hidden) - gram_relation(teacher_hidden)).pow(2)  # (B, T, T)
    pair_mask = None if mask is None else mask[:, :, None] & mask[:, None, :]
    return _masked_mean(sq, pair_mask)


@contextlib.contextmanager
def capture_qkv(model: nn.Module, layer_index: int) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of ``q_proj``, ``k_proj``, ``v_proj`` of one Llama-style decoder layer.

    Yields a dict that holds ``"q"``, ``"k"``, ``"v"`` (B, T, width) after each forward; the hooks
    are removed on exit. ``layer_index`` counts from 0; negative counts from the end.
    """
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    layers = getattr(base, "layers", None)
    if layers is None:
        raise UserError(f"{type(model).__name__}: no decoder `layers` to hook (Llama-style model expected)")
    if not -len(layers) <= layer_index < len(layers):
        raise UserError(f"layer {layer_index} out of range for a model with {len(layers)} layers")
    attn = layers[layer_index].self_attn
    out: dict[str, torch.Tensor] = {}
    handles = []
    for key in ("q", "k", "v"):
        proj = getattr(attn, f"{key}_proj", None)
        if proj is None:
            raise UserError(f"{type(attn).__name__} has no {key}_proj (Llama-style attention expected)")
        handles.append(proj.register_forward_hook(lambda _m, _i, y, key=key: out.__setitem__(key, y)))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()
