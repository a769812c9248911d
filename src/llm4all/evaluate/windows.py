"""The strided windows a perplexity is computed over (shared by the torch and llama.cpp engines)."""

from __future__ import annotations

from llm4all.errors import UserError


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_targets) for each window; targets are the window's last n_targets tokens.

    The first window scores tokens 1..context-1; each later window ends ``stride`` tokens
    further on (at most ``context - 1``, so a window always holds the token before its first
    target) and is ``context`` tokens long where the stream allows. Every token index
    1..n_tokens-1 is a target exactly once (token 0 has no left context).
    """
    if not 0 < stride <= context:
        raise UserError(f"stride must be in [1, context={context}], got {stride}")
    if context < 2:
        raise UserError(f"context must be at least 2 tokens, got {context}")
    step = min(stride, context - 1)
    out, first = [], 1  # first: the next token to score
    end = min(context, n_tokens)
    while first < n_tokens:
        begin = max(0, end - context)
        out.append((begin, end, end - first))
        first, end = end, min(end + step, n_tokens)
    return out
