"""Model-based signals: token entropy, perplexity under a reference LM, and Ask-LLM.

All three are batched (``fn(texts, **options) -> {column: array}``), run offline on a
registered model name or an HF directory (``llm4all.models.load``), load each (model, dtype)
once per process, and show a rich progress bar for 64 documents or more.

- ``token_entropy``: Shannon entropy (bits/token) of the document's token-id histogram under
  a real tokenizer (Shannon 1948, eq. 4), with the token count.
- ``perplexity``: exp of the mean next-token negative log-likelihood of the document's first
  ``max_tokens`` tokens, the first token conditioning only (no BOS is added, as
  ``model(ids, labels=ids).loss``). Documents are length-sorted, right-padded with an
  attention mask and batched; hidden states go through the output head in chunks and the
  cross-entropy is summed in fp32/fp64 (the idea of ``evaluate.perplexity.window_nll``). A
  document with fewer than 2 tokens has nothing to predict: nll 0, ppl 1, ppl_tokens 0.
- ``ask_llm``: Sachdeva et al. 2024, "How to Train Data-Efficient LLMs" (arXiv:2402.09668),
  sec. 3 / fig. 3: an instruction model is asked whether the text is informative for
  pre-training; the score is the probability of answering yes.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import numpy as np

from llm4all.curate.signals.compute import signal
from llm4all.curate.signals.entropy import shannon_entropy
from llm4all.errors import UserError

PROGRESS_MIN_DOCS = 64  # below this many documents no progress bar is drawn

# Sachdeva et al. 2024, fig. 3 (as transcribed in nano-askllm, susumuota/nano-askllm,
# nano_askllm/askllm.py, which cites page 4 of arXiv:2402.09668). {text} goes between the ###.
ASK_LLM_PROMPT = (
    "###\n{text}\n###\n\n"
    "Does the previous paragraph demarcated within ### and ### contain informative signal for "
    "pre-training a large-language model? An informative datapoint should be well-formatted, "
    "contain some usable knowledge of the world, and strictly NOT have any harmful, racist, "
    "sexist, etc. content.\n\n"
    "OPTIONS:\n- yes\n- no"
)
YES_WORDS = ("yes", "Yes")  # answers counted as yes; their first tokens are the candidates
NO_WORDS = ("no", "No")


@functools.lru_cache(maxsize=4)
def cached_model(model: str, dtype: str):
    """``(model, tokenizer)`` loaded once per process per (model, dtype), on the device that
    ``LLM4ALL_DEVICE`` names (``curate --device`` sets it for its workers), else auto."""
    from llm4all.models.device import resolve_device
    from llm4all.models.load import load

    return load(model, dtype=dtype, device=str(resolve_device()))


@functools.lru_cache(maxsize=4)
def cached_tokenizer(model: str):
    from llm4all.models.load import load_tokenizer

    return load_tokenizer(model)


@contextlib.contextmanager
def progress(total: int, label: str) -> Iterator:
    """Yield ``advance(n)``; draws a transient rich bar when ``total >= PROGRESS_MIN_DOCS``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("docs"),
               TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=total < PROGRESS_MIN_DOCS) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.update(task, advance=n)


def _encode(tokenizer, texts: list[str], max_tokens: int | None = None) -> list[list[int]]:
    # lone surrogates (possible in Python str, never valid UTF-8) become U+FFFD for the tokenizer
    clean = [t.encode("utf-8", "replace").decode("utf-8") for t in texts]
    ids = tokenizer(clean, add_special_tokens=False)["input_ids"]
    return [x[:max_tokens] for x in ids] if max_tokens else ids


def _batches(ids: list[list[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``ids`` in batches of similar length (longest first: less padding)."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    for s in range(0, len(order), batch_size):
        yield order[s : s + batch_size]


def _right_padded(rows: list[list[int]], pad_id: int, device=None):
    """(B, T) input ids padded on the right with ``pad_id`` and the (B, T) attention mask, on ``device``."""
    import torch

    T = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[b, : len(r)] = 1
    return (ids, mask) if device is None else (ids.to(device), mask.to(device))


def _hidden(model, ids, mask):
    """(B, T, H) last hidden states of the model's decoder (the output head not applied)."""
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    return backbone(input_ids=ids, attention_mask=mask).last_hidden_state


def padded_nll(model, rows: list[list[int]], pad_id: int, chunk: int = 1024) -> np.ndarray:
    """Summed next-token NLL (nats, float64) of each row of token ids, batched with padding.

    Row b predicts its tokens 1..n_b-1 from the ones before; padding is never scored. Only
    ``chunk`` positions at a time go through the output head: memory is one (chunk, V) block.
    """
    import torch
    import torch.nn.functional as F

    from llm4all.models.device import model_device

    ids, mask = _right_padded(rows, pad_id, model_device(model))
    hidden = _hidden(model, ids, mask)  # (B, T, H)
    head = model.get_output_embeddings()
    lengths = mask.sum(1)  # (B,)
    positions = torch.arange(ids.shape[1] - 1, device=ids.device)
    scored = positions[None, :] < (lengths[:, None] - 1)  # (B, T-1)
    h = hidden[:, :-1][scored]  # (N, H): positions with a next token
    targets = ids[:, 1:][scored]  # (N,)
    row = torch.arange(len(rows), device=ids.device)[:, None].expand_as(scored)[scored]  # (N,) row of each
    sums = torch.zeros(len(rows), dtype=torch.float64, device=ids.device)
    for s in range(0, h.shape[0], chunk):
        logits = head(h[s : s + chunk]).float()  # (chunk, V), fp32 for the log-softmax
        nll = F.cross_entropy(logits, targets[s : s + chunk], reduction="none")
        sums.index_add_(0, row[s : s + chunk], nll.double())
    return sums.cpu().numpy()


@signal("token_entropy", ("token_entropy", "token_count"), batched=True)
def token_entropy(texts: list[str], tokenizer: str = "smollm2-135m") -> dict[str, np.ndarray]:
    """Shannon entropy of the token ids under a real tokenizer, bits/token (Shannon 1948)."""
    tok = cached_tokenizer(str(tokenizer))
    ids = _encode(tok, texts)
    return {"token_entropy": np.array([shannon_entropy(np.unique(x, return_counts=True)[1])
                                       for x in ids], dtype=np.float64),
            "token_count": np.array([len(x) for x in ids], dtype=np.float64)}


@signal("perplexity", ("ppl", "nll", "ppl_tokens"), batched=True)
def perplexity(texts: list[str], model: str = "smollm2-135m", dtype: str = "bfloat16",
               max_tokens: int = 512, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Perplexity of each document's first max_tokens tokens under a reference LM (Wenzek et al. 2020)."""
    import torch

    if max_tokens < 2 or batch_size < 1:
        raise UserError(f"perplexity: max_tokens must be >= 2 and batch_size >= 1, "
                        f"got {max_tokens} and {batch_size}")
    net, tok = cached_model(str(model), dtype)
    limit = getattr(net.config, "max_position_embeddings", None) or max_tokens
    ids = _encode(tok, texts, min(max_tokens, limit))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    sums = np.zeros(len(texts))
    with torch.inference_mode(), progress(len(texts), "perplexity") as advance:
        for batch in _batches(ids, batch_size):
            sums[batch] = padded_nll(net, [ids[i] for i in batch], pad)
            advance(len(batch))
    n = np.array([max(0, len(x) - 1) for x in ids], dtype=np.float64)
    nll = np.divide(sums, n, out=np.zeros_like(sums), where=n > 0)  # nats/token; 0 if nothing
    return {"ppl": np.exp(nll), "nll": nll, "ppl_tokens": n}


def as_user_turn(tokenizer, prompt: str, plain_suffix: str) -> str:
    """``prompt`` as one user turn of the tokenizer's chat template, ending with the assistant's
    header (``add_generation_prompt``); without a template, ``prompt + plain_suffix``."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True)
    return prompt + plain_suffix


def ask_llm_pieces(tokenizer) -> tuple[list[int], list[int], bool]:
    """Token ids before and after the document, and whether the prompt ends in whitespace.

    The Ask-LLM prompt is chat-formatted when the tokenizer has a template: the prompt is the
    user turn and the ids end with the assistant header (``add_generation_prompt``; for
    SmolLM2 ``<|im_start|>assistant\\n``). Without one: the plain prompt plus a newline.
    """
    sentinel = "\x00DOC\x00"
    rendered = as_user_turn(tokenizer, ASK_LLM_PROMPT.format(text=sentinel), "\n")
    head, tail = rendered.split(sentinel)
    head_ids, tail_ids = _encode(tokenizer, [head, tail])
    return head_ids, tail_ids, rendered[-1:].isspace()


def answer_tokens(tokenizer, after_space: bool) -> tuple[list[int], list[int]]:
    """First token ids of the yes and the no answers (bare words after whitespace, else ' yes')."""
    first = {w: _encode(tokenizer, [w if after_space else " " + w])[0][0]
             for w in YES_WORDS + NO_WORDS}
    yes = sorted({first[w] for w in YES_WORDS})
    no = sorted({first[w] for w in NO_WORDS})
    if set(yes) & set(no) or tokenizer.unk_token_id in yes + no:
        raise UserError("ask_llm: the model's tokenizer cannot tell 'yes' from 'no' "
                        f"(first tokens {yes} and {no}); use an instruction model")
    return yes, no


def yes_probability(logits, yes: list[int], no: list[int]):
    """P(yes) = softmax over the yes and no candidate tokens, summed over the yes ones.

    ``logits``: (B, V). Equal to P_vocab(yes) / (P_vocab(yes) + P_vocab(no)).
    """
    import torch

    p = torch.softmax(logits[:, yes + no].float(), dim=-1)  # (B, |yes| + |no|)
    return p[:, : len(yes)].sum(-1)


@signal("ask_llm", ("ask_llm",), batched=True)
def ask_llm(texts: list[str], model: str = "smollm2-135m", dtype: str = "bfloat16",
            max_tokens: int = 512, batch_size: int = 8) -> dict[str, np.ndarray]:
    """P(yes) from an instruction LM asked if the text informs pre-training (Sachdeva et al. 2024)."""
    import torch

    if max_tokens < 1 or batch_size < 1:
        raise UserError(f"ask_llm: max_tokens and batch_size must be >= 1, "
                        f"got {max_tokens} and {batch_size}")
    net, tok = cached_model(str(model), dtype)
    head, tail, after_space = ask_llm_pieces(tok)
    yes, no = answer_tokens(tok, after_space)
    limit = getattr(net.config, "max_position_embeddings", None)
    if limit:
        max_tokens = min(max_tokens, limit - len(head) - len(tail))
    if max_tokens < 1:
        raise UserError(f"ask_llm: the prompt alone fills the model's {limit} positions")
    rows = [head + x + tail for x in _encode(tok, texts, max_tokens)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    scores = np.zeros(len(texts))
    from llm4all.models.device import model_device

    device = model_device(net)
    with torch.inference_mode(), progress(len(texts), "ask_llm") as advance:
        for batch in _batches(rows, batch_size):
            ids, mask = _right_padded([rows[i] for i in batch], pad, device)
            hidden = _hidden(net, ids, mask)  # (B, T, H)
            last = hidden[torch.arange(len(batch), device=ids.device), mask.sum(1) - 1]  # (B, H): last token
            logits = net.get_output_embeddings()(last)  # (B, V): the answer's first token
            scores[batch] = yes_probability(logits, yes, no).double().cpu().numpy()
            advance(len(batch))
    return {"ask_llm": scores}
