"""De-quantise a loaded compressed model back into plain ``nn.Linear`` / ``nn.Embedding`` modules.

Exporters (HF safetensors, GGUF) write standard tensor names and shapes; llama.cpp and
transformers know nothing of ``qweight`` codes or U·V factors. ``densify`` swaps every packed
module for the dense module computing the same thing — the de-quantised (fake-quantised)
weight, the pruned weight, U·V — so an exported GPTQ model carries GPTQ's rounding (and a GGUF
q4_0 export re-quantises those values). Structured pruning is refused: its per-layer head
counts and channel widths have no place in a Llama ``config.json``.
"""

from __future__ import annotations

import torch
from torch import nn

from llm4all.errors import UserError


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out


@torch.no_grad()
def densify(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Replace packed Linears, embeddings and heads of ``model`` by dense ones in ``dtype``, in place."""
    from llm4all.models.packed.embedding import PackedEmbedding, TiedHead

    resized = [n for n, m in model.named_modules() if getattr(m, "llm4all_resized", False)]
    if resized:
        raise UserError(f"{resized[0]}: a structurally pruned model has per-layer shapes that a Llama "
                        "config cannot describe; it cannot be exported to HF or GGUF")
    for name, m in list(model.named_modules()):
        if isinstance(m, PackedEmbedding) and m.role == "embedding":
            model.set_submodule(name, nn.Embedding.from_pretrained(m.dense_weight(dtype), freeze=False))
        elif isinstance(m, PackedEmbedding):  # an untied output head
            model.set_submodule(name, _linear(m.dense_weight(dtype), None))
        elif hasattr(m, "dense_weight") and not isinstance(m, TiedHead):
            model.set_submodule(name, _linear(m.dense_weight(dtype), m.bias))
    if isinstance(model.get_output_embeddings(), TiedHead):
        emb = model.get_input_embeddings().weight
        model.lm_head = nn.Linear(emb.shape[1], emb.shape[0], bias=False)
        model.lm_head.weight = emb
    return model.to(dtype)
