"""Choosing the next token from a model's logits: greedy, temperature, top-k and top-p.

The order is the one Hugging Face's ``generate`` uses: divide the logits by the temperature
(Ackley et al. 1985, the Boltzmann temperature; T < 1 sharpens, T > 1 flattens), keep the k
most likely tokens (top-k; Fan et al. 2018, "Hierarchical Neural Story Generation"), then the
nucleus: the smallest set of most likely tokens whose probability reaches p (top-p; Holtzman
et al. 2020, "The Curious Case of Neural Text Degeneration", eq. 2), renormalise and draw one
token with a seeded ``torch.Generator``. Temperature 0 means greedy (argmax), where top-k and
top-p change nothing. (llama.cpp's default chain applies the temperature after top-k/top-p;
with top-p < 1 the two orders keep different sets.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm4all.errors import UserError


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen."""

    temperature: float = 0.0
    """0 is greedy decoding; otherwise logits are divided by it before softmax."""
    top_k: int = 0
    """keep only the k most likely tokens (0: no limit)."""
    top_p: float = 1.0
    """keep the smallest set of most likely tokens whose probability reaches top_p (1: all)."""
    seed: int = 0
    """seed of the torch.Generator the tokens are drawn with."""

    def __post_init__(self):
        if self.temperature < 0:
            raise UserError(f"--temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0 (0 keeps every token), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1] (1 keeps every token), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """``logits`` (V,) with every token below the k-th largest set to -inf (ties kept)."""
    if k <= 0 or k >= logits.numel():
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """``logits`` (V,) outside the nucleus set to -inf (Holtzman et al. 2020, eq. 2).

    The nucleus V(p) is the smallest set of most likely tokens with sum P(x) >= p: tokens are
    taken in order of decreasing probability until the running sum reaches p, the token that
    crosses p included, and the most likely token always kept.
    """
    if p >= 1:
        return logits
    probs, order = torch.softmax(logits.float(), -1).sort(descending=True)
    before = probs.cumsum(-1) - probs  # probability mass of the tokens ranked above each token
    drop_sorted = before >= p  # a token is outside once the ones above it already reach p
    drop_sorted[0] = False
    drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def distribution(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The probabilities (V,) that ``sample`` draws from (renormalised after filtering)."""
    if sampling.greedy:
        return torch.nn.functional.one_hot(logits.argmax(), logits.numel()).float()
    scaled = logits.float() / sampling.temperature
    scaled = top_p_filter(top_k_filter(scaled, sampling.top_k), sampling.top_p)
    return torch.softmax(scaled, -1)


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """The next token id from ``logits`` (V,): argmax at temperature 0, else one draw."""
    if sampling.greedy:
        return int(logits.argmax())
    probs = distribution(logits, sampling)
    return int(torch.multinomial(probs, 1, generator=generator))


def new_generator(sampling: Sampling, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``sampling.seed``."""
    return torch.Generator(device=device).manual_seed(sampling.seed)
