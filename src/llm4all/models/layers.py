"""Where the parts of a Hugging Face causal LM are: its decoder layer stack and their Linears."""

from __future__ import annotations

from torch import nn

from llm4all.errors import UserError


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer stack of an HF causal LM (``model.model.layers``)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UserError(f"{type(model).__name__}: no decoder layer stack at model.model.layers; "
                        "llm4all supports Llama-style models here")
    return layers


def linears(layer: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, module) of every nn.Linear inside ``layer``."""
    return [(n, m) for n, m in layer.named_modules() if isinstance(m, nn.Linear)]


def decoder_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(full name, module) of every Linear in the decoder layers (not the embeddings or the head)."""
    return [(f"model.layers.{i}.{n}", m) for i, layer in enumerate(decoder_layers(model))
            for n, m in linears(layer)]
