"""The contract between a registered compression entry and the layer-by-layer driver.

A quantizer, pruner or factorizer entry (``llm4all ls quantizers``) is a function of its
options that returns a ``Method``: which calibration statistics it needs and how it turns
one ``nn.Linear`` (with those statistics) into its compressed replacement. The driver
(``calibrate.compress_layers``) walks the decoder layers, gathers the statistics, calls
``compress`` on every Linear (or ``compress_group`` on Linears sharing one input) and feeds
the next layer with the compressed layer's outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

#: statistics a method may ask for: nothing, the input Gram matrix, or column norms/absmax
STATS = ("none", "hessian", "input")


@dataclass
class InputStats:
    """Calibration statistics of one Linear's input X (N tokens × in features).

    ``hessian`` is H = 2/N · XᵀX (Frantar et al. 2023, eq. 1 up to the constant) in fp32,
    ``sumsq`` the per-column Σx² (Wanda's ‖X_j‖₂² , Sun et al. 2024) and ``absmax`` the
    per-column max |x| (LLM.int8() outlier features, Dettmers et al. 2022). Methods asking for
    ``"hessian"`` get ``hessian`` and ``sumsq`` (its diagonal), not ``absmax`` (None).
    """

    hessian: torch.Tensor | None
    sumsq: torch.Tensor
    absmax: torch.Tensor | None
    tokens: int


@dataclass
class Method:
    """A compression method configured with its options."""

    name: str
    options: dict
    compress: Callable[[str, nn.Linear, InputStats | None], nn.Module]
    stats: str = "none"
    #: optional: compress Linears that read the same input at once (GPTQ stacks their rows)
    compress_group: Callable[[list[str], list[nn.Linear], InputStats | None], list[nn.Module]] | None = None
    #: run a whole-model transform instead of the per-Linear driver (structured pruning)
    transform: Callable | None = None
    notes: list[str] = field(default_factory=list)


def check_range(name: str, value: float, low: float, high: float, where: str) -> None:
    from llm4all.errors import UserError

    if not low <= value < high:
        raise UserError(f"{where}: {name} must be in [{low}, {high}), got {value}")
