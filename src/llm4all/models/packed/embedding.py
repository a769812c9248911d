"""Compact token embeddings and output head for quantised checkpoints.

With 4-bit Linears, SmolLM2-135M's 49,152 × 576 embedding matrix is the largest tensor in a
model: 108 MiB in fp32 against 55 MiB for all packed Linears. A quantised checkpoint therefore
keeps it in its stored form: float16 (2 bytes per weight, the values written on disk) or int8
rows with one float16 absmax scale per row (``--embeddings int8``: 1 byte per weight; the
per-row absmax scheme of Dettmers et al. 2022, section 2, applied to embedding rows).

* ``PackedEmbedding`` looks rows up and de-quantises only the rows asked for, returning
  activations in the model's dtype (fp32 by default), so the residual stream keeps its dtype.
* As an output head (``role="head"``: an untied ``lm_head``), or through ``TiedHead`` (a tied
  one, sharing the embedding's storage), logits are computed ``CHUNK`` vocabulary rows at a
  time: each chunk is de-quantised into a transient (CHUNK, hidden) matrix and multiplied, so
  no full-precision copy of the matrix is ever resident.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llm4all.models.packed.kernels import INT8_KERNEL_K, kernels_enabled

CHUNK = 4096  # vocabulary rows de-quantised at a time by the head (a 9 MiB fp32 matrix for 576 columns)
KINDS = ("float16", "int8")
DECODE_ROWS = 16  # up to this many rows, an int8 head runs PyTorch's int8 weight-only kernel
_HAS_INT8_KERNEL = hasattr(torch.ops.aten, "_weight_int8pack_mm")


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax int8 per row: weight ≈ q · s, q ∈ [−127, 127]; returns (q int8 (V, H), s float16 (V,))."""
    w = weight.detach().float()
    scale = (w.abs().amax(1) / 127.0).clamp(min=1e-8).half()
    q = torch.round(w / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def embedding_spec(num_embeddings: int, embedding_dim: int, kind: str, role: str) -> dict:
    """The llm4all_quant.json entry of a packed embedding (in/out features: its shape as a head)."""
    return {"kind": "embedding", "dtype": kind, "role": role, "num_embeddings": num_embeddings,
            "embedding_dim": embedding_dim, "in_features": embedding_dim, "out_features": num_embeddings}


class PackedEmbedding(nn.Module):
    """Embedding rows stored in float16 or int8 (+ float16 row scales), de-quantised on use."""

    def __init__(self, num_embeddings: int, embedding_dim: int, kind: str = "float16",
                 dtype: torch.dtype = torch.float32, role: str = "embedding"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"embedding kind must be one of {KINDS}, got {kind!r}")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.kind, self.role = kind, role
        self.dtype = dtype  # dtype of the activations it returns
        if kind == "float16":
            self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.float16))
        else:
            self.register_buffer("qweight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
            self.register_buffer("scales", torch.zeros(num_embeddings, dtype=torch.float16))

    @classmethod
    def from_weight(cls, weight: torch.Tensor, kind: str, dtype: torch.dtype = torch.float32,
                    role: str = "embedding") -> PackedEmbedding:
        m = cls(*weight.shape, kind=kind, dtype=dtype, role=role)
        if kind == "float16":
            m.weight = weight.detach().half()
        else:
            m.qweight, m.scales = quantize_rows(weight)
        return m

    def spec(self) -> dict:
        return embedding_spec(self.num_embeddings, self.embedding_dim, self.kind, self.role)

    def rows(self, start: int, end: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows start:end de-quantised to ``dtype`` ((end − start, H), a new tensor)."""
        if self.kind == "float16":
            return self.weight[start:end].to(dtype)
        return self.qweight[start:end].to(dtype) * self.scales[start:end, None].to(dtype)

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.rows(0, self.num_embeddings, dtype)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if self.kind == "float16":
            return F.embedding(ids, self.weight).to(self.dtype)
        scale = F.embedding(ids, self.scales[:, None]).to(self.dtype)  # (…, 1)
        return F.embedding(ids, self.qweight).to(self.dtype) * scale

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits hidden @ Wᵀ ((…, H) -> (…, V)), CHUNK rows of W de-quantised at a time.

        Decoding on CPU (a few rows, no autograd) reads the stored matrix directly instead:
        a float16 matrix-vector product for one row (2.1 ms against 5.5 ms chunked for
        SmolLM2's 49,152 × 576 head on this machine), PyTorch's int8 weight-only kernel with
        bf16 activations for up to ``DECODE_ROWS`` rows of an int8 matrix.
        """
        h = hidden.reshape(-1, self.embedding_dim)  # (N, H)
        decoding = h.device.type == "cpu" and not (torch.is_grad_enabled() and h.requires_grad)
        if decoding and kernels_enabled():
            if self.kind == "float16" and h.shape[0] == 1:
                return F.linear(h.half(), self.weight).to(hidden.dtype).view(*hidden.shape[:-1], -1)
            if (self.kind == "int8" and h.shape[0] <= DECODE_ROWS and _HAS_INT8_KERNEL
                    and self.embedding_dim % INT8_KERNEL_K == 0):
                out = torch.ops.aten._weight_int8pack_mm(h.to(torch.bfloat16), self.qweight,
                                                         self.scales.to(torch.bfloat16))
                return out.to(hidden.dtype).view(*hidden.shape[:-1], self.num_embeddings)
        out = torch.empty(h.shape[0], self.num_embeddings, dtype=hidden.dtype, device=h.device)
        for start in range(0, self.num_embeddings, CHUNK):
            end = min(start + CHUNK, self.num_embeddings)
            out[:, start:end] = h @ self.rows(start, end, hidden.dtype).T
        return out.view(*hidden.shape[:-1], self.num_embeddings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x) if self.role == "head" else self.lookup(x)


class TiedHead(nn.Module):
    """The output head of a tied model: logits from the input embedding's packed rows (no state)."""

    def __init__(self, embedding: PackedEmbedding):
        super().__init__()
        object.__setattr__(self, "embedding", embedding)  # not a child: its buffers stay under embed_tokens

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.embedding.dense_weight(dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.embedding.project(hidden)


def pack_embeddings(model: nn.Module, kind: str, dtype: torch.dtype = torch.float32) -> None:
    """Swap ``model``'s input embedding (and output head) for packed ones, in place."""
    emb = PackedEmbedding.from_weight(model.get_input_embeddings().weight, kind, dtype)
    head = model.get_output_embeddings()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    model.set_input_embeddings(emb)
    if head is not None:
        model.lm_head = TiedHead(emb) if tied else PackedEmbedding.from_weight(head.weight, kind, dtype,
                                                                               "head")
