"""What a small language model says about a prompt's tokens: the scores prompt compression ranks by.

Three measurements, all in nats under the small model M_s (natural log):

- ``mean_nll(model, rows, starts)``: the mean negative log-likelihood of each row's tokens from
  ``start`` on, every token predicted from all tokens before it in its row. With a row
  ``[BOS] + sentence`` it is the log-perplexity of the sentence (LLMLingua's coarse ranking,
  Jiang et al. 2023, sec. 4.1, Algorithm 1 line 3); with ``[BOS] + sentence + question`` scored
  over the question it is LongLLMLingua's r_k (Jiang et al. 2024, sec. 4.1, Eq. 2).
- ``TokenStream``: the surprisal -log p(s_{j,i} | s_{j,<i}, s~_{<j}) of each token of segment
  j given the tokens *kept* from the segments before it (LLMLingua's iterative token-level
  compression, sec. 4.2, Eq. 5), with a KV cache so each token is fed to the model about
  once, plus once more for the kept ones.
- ``bos_id(tokenizer)``: the token every row starts from (BOS, else EOS), as ``evaluate.tasks``
  conditions an empty context.

Rows are right-padded without an attention mask: with causal attention, padding after a row's
real tokens cannot change them (the same argument as ``evaluate.tasks.loglikelihoods``).
"""

from __future__ import annotations

from llm4all.errors import UserError


def bos_id(tokenizer) -> int:
    """The token a sequence is conditioned on when nothing comes before it."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def max_length(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048))


def mean_nll(model, rows: list[list[int]], starts: list[int], batch_tokens: int = 512) -> list[float]:
    """Mean NLL (nats) of ``row[start:]`` for each row, each token given every token before it.

    Rows go in batches of similar length (longest first, none under half the longest) of at
    most ``batch_tokens`` padded tokens, so one long sentence does not pad a whole batch. A row
    longer than the model's positions loses its oldest tokens (``start`` moves with them, at
    least to 1: the first token has nothing to be predicted from).
    """
    import torch

    from llm4all.models.device import model_device

    limit = max_length(model)
    cut = [max(0, len(r) - limit) for r in rows]
    rows = [r[c:] for r, c in zip(rows, cut, strict=True)]
    starts = [max(1, s - c) for s, c in zip(starts, cut, strict=True)]
    if any(s >= len(r) for r, s in zip(rows, starts, strict=True)):
        raise ValueError("every row needs at least one scored token after its first")
    device = model_device(model)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    head = model.get_output_embeddings()
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out = [0.0] * len(rows)
    with torch.inference_mode():
        b = 0
        while b < len(order):
            width = len(rows[order[b]])  # the longest row of the batch: the others are padded to it
            idx = [order[b]]
            while (b + len(idx) < len(order) and (len(idx) + 1) * width <= batch_tokens
                   and 2 * len(rows[order[b + len(idx)]]) >= width):  # at most half of a row is padding
                idx.append(order[b + len(idx)])
            b += len(idx)
            x = torch.zeros(len(idx), width, dtype=torch.long)
            for j, i in enumerate(idx):
                x[j, : len(rows[i])] = torch.tensor(rows[i])
            x = x.to(device)
            hidden = decoder(input_ids=x).last_hidden_state if decoder is not None else None  # (B, T, H)
            logits_all = model(input_ids=x).logits if decoder is None else None  # (B, T, V)
            for j, i in enumerate(idx):
                pos = slice(starts[i] - 1, len(rows[i]) - 1)  # positions whose next token is scored
                logits = head(hidden[j, pos]) if decoder is not None else logits_all[j, pos]
                target = x[j, starts[i] : len(rows[i])]
                out[i] = float(torch.nn.functional.cross_entropy(logits.float(), target, reduction="mean"))
    return out


class TokenStream:
    """Surprisal of each new segment given a fixed prefix and the tokens kept so far (ITPC, Eq. 5).

    ``nll(window)`` returns -log p of every window token given ``prefix + kept``; ``keep(ids)``
    appends the window's kept tokens to the conditioning. The KV cache always holds a prefix
    of the conditioning minus its last token, so that token's logits predict the window's first.
    When prefix + kept + window outgrow the model's positions, the oldest kept tokens leave
    the conditioning (the prefix stays; LLMLingua keeps its first tokens the same way) and the
    cache is rebuilt with fresh positions.
    """

    def __init__(self, model, prefix: list[int]):
        from transformers import DynamicCache

        if not prefix:
            raise ValueError("a token stream needs at least one prefix token (BOS)")
        self.model, self.prefix, self.kept = model, list(prefix), []
        self.limit = max_length(model)
        self._new_cache = lambda: DynamicCache(config=model.config)
        self.cache, self.fed = self._new_cache(), []  # fed: the tokens in the cache

    def conditioning(self, n_window: int) -> list[int]:
        room = self.limit - n_window - len(self.prefix)
        if room < 0:
            raise UserError(f"the prefix ({len(self.prefix)} tokens: instruction or question) and a "
                            f"{n_window}-token segment do not fit the model's {self.limit} positions")
        return self.prefix + (self.kept[len(self.kept) - room:] if len(self.kept) > room else self.kept)

    def nll(self, window: list[int]):
        """(n,) float tensor: -log p(window[i] | conditioning, window[:i]) in nats."""
        import torch

        from llm4all.evaluate.speculative import crop_to
        from llm4all.models.device import model_device

        context = self.conditioning(len(window))
        if self.fed != context[: len(self.fed)]:  # the conditioning slid: positions changed
            self.cache, self.fed = self._new_cache(), []
        if len(self.fed) >= len(context):  # the last conditioning token must be fed again
            crop_to(self.cache, len(context) - 1)
            self.fed = self.fed[: len(context) - 1]
        feed = context[len(self.fed):] + list(window)
        with torch.inference_mode():
            x = torch.tensor([feed], device=model_device(self.model))
            logits = self.model(input_ids=x, cache=self.cache, use_cache=True,
                                logits_to_keep=len(window) + 1).logits[0, :-1]  # (n, V)
            target = x[0, len(feed) - len(window):]
            nll = torch.nn.functional.cross_entropy(logits.float(), target, reduction="none")
        crop_to(self.cache, len(context))  # forget the window: only its kept tokens condition on
        self.fed = context
        return nll.cpu()

    def keep(self, ids: list[int]) -> None:
        self.kept += list(ids)
