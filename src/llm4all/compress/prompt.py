"""Prompt compression: drop the context tokens a small model finds least informative.

Two methods from the LLMLingua papers, run with any causal LM llm4all loads as the small model
M_s (by default SmolLM2-135M), plus a baseline:

``lingua`` -- LLMLingua (Jiang, Wu, Lin, Yang, Qiu, EMNLP 2023), coarse to fine:

1. *Budget controller* (sec. 4.1, Algorithm 1) over the context's sentences: rank them by their
   perplexity under M_s, highest first, and keep them in that order while the kept tokens are
   at most k·τ·L (the target times the granular control coefficient k = 2, sec. 5.1); the
   sentence that crosses the line is the last one kept. The instruction and the question are
   kept whole and outside the budget (the paper compresses them lightly, τ_ins = 0.85 and
   τ_que = 0.9; its released code keeps them whole).
2. *Iterative token-level compression* (sec. 4.2, Algorithm 2) of what is left: split it into
   segments of 100 tokens; score each segment's tokens by their surprisal -log p(s_{j,i} |
   s_{j,<i}, s~_{<j}) given the tokens *kept* from earlier segments (Eq. 5), and keep those
   above the segment's threshold γ_j, i.e. the τ·|s_j| most surprising (Eqs. 6-7), so that
   τ = target / kept tokens overall.

``longlingua`` -- LongLLMLingua (Jiang, Wu, Luo, Li, Lin, Yang, Qiu, ACL 2024), question-aware:

1. *Coarse* (sec. 4.1, Eq. 2): rank sentences by r_k = -1/N_c Σ_i log p(x_i^{que,restrict} |
   x_k^doc), the question followed by the restrictive statement "We can get the answer to this
   question in the given documents." scored after each sentence; lowest first, same budget rule.
   ``reorder`` puts the kept sentences in that order (sec. 4.2, Eq. 4; off by default: the
   paper used it on NaturalQuestions only).
2. *Fine* (sec. 4.1, Eq. 3): contrastive perplexity s_i = NLL(x_i | x_<i) - NLL(x_i | x^que,
   x_<i), the tokens the question makes more predictable (a conditional pointwise mutual
   information, App. A), in the same iterative segments (200 tokens, sec. 5), with a *dynamic
   ratio* per sentence (sec. 4.3, Eq. 5): τ_k = clip((1 - 2 I(r_k)/K') δτ + τ_doc, 0, 1) for
   the sentence of coarse rank I(r_k) among the K' kept, δτ = 0.3 (App. B.2). τ_doc is solved
   so the kept tokens meet the budget.

``random`` drops tokens uniformly at random (seeded) to the same budget: the floor a method
must beat.

The budget is ``ratio`` (context tokens before / after) or ``target_tokens`` for the context.
The kept token ids are decoded into text; if re-tokenising that text gives more tokens than
the budget (tokens can merge differently), the lowest-scoring kept tokens go until it fits.
Not implemented: distribution alignment (LLMLingua sec. 4.3, fine-tuning M_s on the target
LLM's outputs) and subsequence recovery (LongLLMLingua sec. 4.4, a post-processing of answers).
"""

from __future__ import annotations

import bisect
import random
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from llm4all.errors import UserError

Method = Literal["auto", "lingua", "longlingua", "random"]
METHODS = ("auto", "lingua", "longlingua", "random")
#: x^restrict, appended to the question in r_k (LongLLMLingua sec. 4.1, footnote 2)
RESTRICT = "We can get the answer to this question in the given documents."
#: the granular control coefficient k (LLMLingua sec. 5.1 and LongLLMLingua App. B.2: k = 2)
GRANULAR_K = 2.0
#: δτ of the dynamic compression ratio (LongLLMLingua Eq. 5, App. B.2: 0.3)
DELTA_TAU = 0.3
#: segment size of the iterative token-level step (LLMLingua sec. 5.1: 100; LongLLMLingua sec. 5: 200)
SEGMENT_TOKENS = {"lingua": 100, "longlingua": 200}
#: a sentence ends at . ! ? (and closing quotes or brackets) before whitespace; a paragraph at a blank line
_BOUNDARY = re.compile(r"[.!?][\"')\]]*(?=\s)|(?=\n[ \t]*\n)")


@dataclass
class Compressed:
    """A compressed prompt, its token counts and what was kept."""

    prompt: str  # instruction, compressed context and question, joined by blank lines
    context: str  # the compressed context alone
    method: str
    tokens_before: int  # context tokens
    tokens_after: int  # tokens of the compressed context, re-tokenised
    ratio: float  # tokens_before / tokens_after
    prompt_tokens_before: int  # the whole prompt, uncompressed
    prompt_tokens_after: int
    segments: list[dict]  # per sentence: text, tokens, score (nats; None for random), kept
    kept_tokens: list[int]  # indices into the context's tokens, in the order they were kept
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def check_options(ratio: float | None, target_tokens: int | None, segment_tokens: int = 0) -> None:
    """Exactly one of ``ratio`` (> 1) and ``target_tokens`` (>= 1), ``segment_tokens`` >= 0; a
    one-line UserError naming the flag otherwise."""
    if segment_tokens < 0:
        raise UserError(f"--segment-tokens must be 0 (the papers' sizes) or positive, got {segment_tokens}")
    if (ratio is None) == (target_tokens is None):
        raise UserError("give exactly one of --ratio (e.g. 4: keep a quarter of the context's tokens) "
                        "and --target-tokens (the context's token budget)")
    if ratio is not None and not ratio > 1:
        raise UserError(f"--ratio must be above 1 (context tokens before / after; 4 keeps a quarter), "
                        f"got {ratio}")
    if target_tokens is not None and target_tokens < 1:
        raise UserError(f"--target-tokens must be at least 1, got {target_tokens}")


def resolve_method(method: str, question: str) -> str:
    """``auto`` is longlingua when there is a question, else lingua; longlingua needs one."""
    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "auto":
        return "longlingua" if question.strip() else "lingua"
    if method == "longlingua" and not question.strip():
        raise UserError("--method longlingua ranks the context by the question: give --question")
    return method


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans covering ``text``: one per sentence, the whitespace before a sentence
    belonging to it (so a sentence's tokens are those it has inside the whole text)."""
    cuts = sorted({m.end() for m in _BOUNDARY.finditer(text)} - {0, len(text)})
    edges = [0, *cuts, len(text)]
    spans: list[tuple[int, int]] = []
    for a, b in zip(edges, edges[1:], strict=False):
        # whitespace alone joins the sentence before it; a leading whitespace span joins the next
        if spans and (not text[a:b].strip() or not text[spans[-1][0]:spans[-1][1]].strip()):
            spans[-1] = (spans[-1][0], b)
        else:
            spans.append((a, b))
    return spans


def token_ranges(spans: list[tuple[int, int]], offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The [first, last) token range of each span, a token going to the span its first character is in."""
    starts = [a for a, _ in spans]
    owner = [max(0, bisect.bisect_right(starts, o[0]) - 1) for o in offsets]
    ranges = [[len(offsets), 0] for _ in spans]
    for t, s in enumerate(owner):
        ranges[s][0], ranges[s][1] = min(ranges[s][0], t), max(ranges[s][1], t + 1)
    return [(a, b) if b > a else (0, 0) for a, b in ranges]


def budget_controller(scores: list[float], lengths: list[int], cap: float,
                      highest_first: bool) -> tuple[list[int], list[int]]:
    """LLMLingua Algorithm 1 on sentences: (rank order, kept in rank order).

    Sentences are taken in rank order until the kept tokens exceed ``cap`` (= k·target): the
    check comes before each append (Algorithm 1, lines 6-9), so the sentence that crosses the
    cap is kept and the kept tokens reach the cap whenever the context does.
    """
    sign = -1 if highest_first else 1
    order = sorted(range(len(scores)), key=lambda i: (sign * scores[i], i))
    kept, total = [], 0
    for i in order:
        if total > cap:
            break
        if lengths[i]:
            kept.append(i)
            total += lengths[i]
    return order, kept


def dynamic_ratios(ranks: list[int], lengths: list[int], target: float, delta_tau: float) -> list[float]:
    """LongLLMLingua Eq. 5: τ_k = clip((1 - 2 I(r_k)/K') δτ + τ_doc, 0, 1) for the kept sentences,
    ``ranks`` their I(r_k) (0 = most relevant), τ_doc solved (bisection) so Σ τ_k L_k = target.
    ``delta_tau = 0`` gives LLMLingua's one ratio τ = target / Σ L_k."""
    K = len(ranks)
    shift = [(1 - 2 * r / K) * delta_tau for r in ranks]
    kept = lambda tau: sum(min(1.0, max(0.0, s + tau)) * n for s, n in zip(shift, lengths, strict=True))  # noqa: E731
    lo, hi = -1.0 - delta_tau, 1.0 + delta_tau
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kept(mid) < target else (lo, mid)
    return [min(1.0, max(0.0, s + hi)) for s in shift]


def top_tokens(scores: list[float], n_keep: int) -> list[int]:
    """Indices of the ``n_keep`` highest scores (ties: the earlier token), in text order (Eq. 7)."""
    return sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:n_keep])


def iterative_keep(ids: list[int], ratios: list[float], score, keep,
                   segment_tokens: int) -> tuple[list[bool], list[float]]:
    """LLMLingua Algorithm 2: for each segment of ``segment_tokens`` tokens, ``score(window)`` the
    tokens given those kept before it, keep the top τ share of each run of equal τ (Eqs. 6-7),
    and ``keep(kept ids)`` so the next segment is conditioned on them (Eq. 5).

    Rounding is carried over: after each run the kept count is round(Σ τ so far), so the total
    is round(Σ τ_i) exactly. Returns (kept flag, score) per token.
    """
    kept, scores, expected, n_kept = [False] * len(ids), [0.0] * len(ids), 0.0, 0
    for a in range(0, len(ids), segment_tokens):
        b = min(a + segment_tokens, len(ids))
        s = [float(v) for v in score(ids[a:b])]
        scores[a:b] = s
        run = a
        while run < b:
            end = run
            while end < b and ratios[end] == ratios[run]:
                end += 1
            expected += ratios[run] * (end - run)
            n_keep = min(end - run, max(0, round(expected) - n_kept))
            for i in top_tokens(s[run - a : end - a], n_keep):
                kept[run + i] = True
            n_kept += n_keep
            run = end
        keep([ids[i] for i in range(a, b) if kept[i]])
    return kept, scores


def fit_budget(tokenizer, ids: list[int], order: list[int], scores: dict[int, float],
               target: int) -> tuple[str, list[int], int]:
    """Decode the kept tokens ``order``; while the text re-tokenises to more than ``target``
    tokens, drop the lowest-scoring kept ones. Returns (text, kept, token count)."""
    for _ in range(16):
        text = tokenizer.decode([ids[i] for i in order])
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n <= target or not order:
            break
        drop = set(sorted(order, key=lambda i: (scores[i], i))[: n - target])
        order = [i for i in order if i not in drop]
    return text, order, n


def compress_prompt(model, tokenizer, context: str, *, question: str = "", instruction: str = "",
                    ratio: float | None = None, target_tokens: int | None = None, method: Method = "auto",
                    segment_tokens: int = 0, granular_k: float = GRANULAR_K, delta_tau: float = DELTA_TAU,
                    restrict: str = RESTRICT, reorder: bool = False, seed: int = 0) -> Compressed:
    """Compress ``context`` to ``ratio``× fewer tokens (or ``target_tokens``) with ``model`` as M_s.

    Args:
        model: the small causal LM that scores tokens (None is enough for ``random``).
        tokenizer: its (fast) tokenizer.
        context: the text to compress (sentences, paragraphs).
        question: kept whole at the end; ranks the context for ``longlingua``.
        instruction: kept whole at the start; conditions the token scores.
        ratio: context tokens before / after (> 1).
        target_tokens: the context's token budget instead of a ratio.
        method: lingua, longlingua, random, or auto (longlingua with a question, else lingua).
        segment_tokens: tokens per iterative segment (0: 100 for lingua, 200 for longlingua).
        granular_k: the coarse step keeps k times the budget.
        delta_tau: δτ of longlingua's dynamic ratio (0: one ratio for every sentence).
        restrict: the restrictive statement after the question in r_k ("" for none).
        reorder: longlingua/lingua: put the kept sentences in rank order (LongLLMLingua Eq. 4).
        seed: seed of the random baseline.
    """
    start = time.perf_counter()
    method = resolve_method(method, question)
    check_options(ratio, target_tokens, segment_tokens)
    if not context.strip():
        raise UserError("the context is empty: nothing to compress")
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("prompt compression needs a fast tokenizer (character offsets of its tokens)")
    enc = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    ids, spans = enc["input_ids"], sentence_spans(context)
    ranges = token_ranges(spans, enc["offset_mapping"])
    target = min(len(ids), target_tokens if target_tokens is not None else max(1, round(len(ids) / ratio)))
    if method == "random":
        rng = random.Random(seed)
        priority = {i: rng.random() for i in range(len(ids))}
        order = top_tokens([priority[i] for i in range(len(ids))], target)
        seg_scores, kept_segments, scores = [None] * len(spans), set(range(len(spans))), priority
    else:
        order, scores, seg_scores, kept_segments = _lingua(
            model, tokenizer, ids, ranges, target, method, question, instruction,
            segment_tokens or SEGMENT_TOKENS[method], granular_k, delta_tau, restrict, reorder)
    text, order, n_after = fit_budget(tokenizer, ids, order, scores, target)
    kept_set = set(order)
    segments = [{"text": context[a:b], "tokens": r[1] - r[0], "score": s,
                 "kept": i in kept_segments and any(t in kept_set for t in range(*r))}
                for i, ((a, b), r, s) in enumerate(zip(spans, ranges, seg_scores, strict=True))]
    full = "\n\n".join(p.strip() for p in (instruction, context, question) if p.strip())
    short = "\n\n".join(p.strip() for p in (instruction, text, question) if p.strip())
    count = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    return Compressed(prompt=short, context=text, method=method, tokens_before=len(ids), tokens_after=n_after,
                      ratio=len(ids) / max(1, n_after), prompt_tokens_before=count(full),
                      prompt_tokens_after=count(short), segments=segments, kept_tokens=order,
                      seconds=time.perf_counter() - start)


def _lingua(model, tokenizer, ids, ranges, target, method, question, instruction, segment_tokens,
            granular_k, delta_tau, restrict, reorder):
    """Coarse (sentences) then fine (tokens) for lingua and longlingua: (kept token order, token
    scores, sentence scores, kept sentences)."""
    from llm4all.compress.surprisal import TokenStream, bos_id, mean_nll

    if target >= len(ids):  # nothing to drop
        everything = list(range(len(ids)))
        return everything, dict.fromkeys(everything, 0.0), [None] * len(ranges), set(range(len(ranges)))
    bos, encode = bos_id(tokenizer), lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]
    lengths = [b - a for a, b in ranges]
    live = [i for i, n in enumerate(lengths) if n]
    if method == "longlingua":  # r_k: the question (+ x^restrict) after each sentence, Eq. 2
        q = encode(" " + " ".join(p for p in (question.strip(), restrict.strip()) if p))
        rows = [[bos, *ids[slice(*ranges[i])], *q] for i in live]
        nll = mean_nll(model, rows, [len(r) - len(q) for r in rows])
    else:  # each sentence's log-perplexity on its own (LLMLingua Algorithm 1, line 3)
        nll = mean_nll(model, [[bos, *ids[slice(*ranges[i])]] for i in live], [1] * len(live))
    seg_scores: list[float | None] = [None] * len(ranges)
    for i, v in zip(live, nll, strict=True):
        seg_scores[i] = v
    _, kept = budget_controller([seg_scores[i] for i in live], [lengths[i] for i in live],
                                granular_k * target, highest_first=method == "lingua")
    kept = [live[i] for i in kept]
    rank = {s: r for r, s in enumerate(kept)}  # I(r_k) among the kept sentences
    sequence = kept if reorder else sorted(kept)
    positions = [t for s in sequence for t in range(*ranges[s])]
    seg_ratio = dict(zip(sequence, dynamic_ratios([rank[s] for s in sequence], [lengths[s] for s in sequence],
                                                   target, delta_tau if method == "longlingua" else 0.0),
                         strict=True))
    ratios = [seg_ratio[s] for s in sequence for _ in range(*ranges[s])]
    head = [bos] + (encode(instruction.strip() + "\n\n") if instruction.strip() else [])
    plain = TokenStream(model, head)
    if method == "longlingua":  # contrastive perplexity, Eq. 3
        asked = TokenStream(model, [bos, *encode(question.strip() + "\n\n"), *head[1:]])
        score = lambda w: plain.nll(w) - asked.nll(w)  # noqa: E731
        keep = lambda k: (plain.keep(k), asked.keep(k))  # noqa: E731
    else:
        score, keep = plain.nll, plain.keep
    flags, token_scores = iterative_keep([ids[t] for t in positions], ratios, score, keep, segment_tokens)
    order = [t for t, f in zip(positions, flags, strict=True) if f]
    scores = dict.fromkeys(range(len(ids)), float("-inf")) | dict(zip(positions, token_scores, strict=True))
    return order, scores, seg_scores, set(kept)


def main(context: Path, *, question: str = "", instruction: str = "", ratio: float | None = None,
         target_tokens: int | None = None, method: Method = "auto", model: str = "smollm2-135m",
         segment_tokens: int = 0, reorder: bool = False, seed: int = 0, device: str = "auto",
         threads: int = 0, out: Path | None = None) -> dict:
    """Compress a long prompt: keep the context tokens a small model finds informative (LLMLingua).

    Prints the compressed prompt (instruction, context, question) on stdout and a summary on
    stderr. Methods: lingua (LLMLingua: sentences by perplexity, then tokens by surprisal),
    longlingua (LongLLMLingua: sentences by how well they predict the question, then tokens by
    contrastive perplexity) and random (tokens dropped at random to the same budget).

    Args:
        context: a text file holding the context to compress ('-' reads it from stdin).
        question: the question, kept whole at the end; makes --method auto question-aware.
        instruction: an instruction, kept whole at the start.
        ratio: compress the context this many times (tokens before / after; above 1).
        target_tokens: or keep at most this many context tokens.
        method: auto (longlingua with a --question, else lingua), lingua, longlingua or random.
        model: the small model that scores tokens: a registered name, an HF directory or a .gguf file.
        segment_tokens: tokens per iterative segment (0: 100 for lingua, 200 for longlingua, as the papers).
        reorder: put the kept sentences in rank order, most relevant first (LongLLMLingua Eq. 4).
        seed: seed of --method random.
        device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N.
        threads: CPU threads (0: the cores that other processes leave free).
        out: directory for compressed.json (nothing written if not given).
    """
    import torch

    from llm4all.models.device import resolve_device
    from llm4all.models.load import load, load_tokenizer
    from llm4all.runs import write_json, write_manifest
    from llm4all.threads import free_cores

    check_options(ratio, target_tokens, segment_tokens)
    chosen = resolve_method(method, question)
    if str(context) == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(context).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{context}: cannot read the context ({type(e).__name__}: {e})") from None
    if not text.strip():
        raise UserError(f"{context}: the context is empty: nothing to compress")
    torch.set_num_threads(free_cores(threads))
    if chosen == "random":  # no model needed: its tokenizer counts the tokens
        net, tokenizer = None, load_tokenizer(model)
    else:
        net, tokenizer = load(model, device=str(resolve_device(device)))
    result = compress_prompt(net, tokenizer, text, question=question, instruction=instruction, ratio=ratio,
                             target_tokens=target_tokens, method=chosen, segment_tokens=segment_tokens,
                             reorder=reorder, seed=seed)
    print(result.prompt)
    kept = sum(s["kept"] for s in result.segments)
    print(f"[{result.method}: context {result.tokens_before} -> {result.tokens_after} tokens "
          f"({result.ratio:.2f}x), prompt {result.prompt_tokens_before} -> {result.prompt_tokens_after}, "
          f"{kept}/{len(result.segments)} sentences kept, {result.seconds:.2f} s]", file=sys.stderr)
    summary = {"model": str(model), "input": str(context), **result.to_dict()}
    if out is not None:
        write_json(Path(out) / "compressed.json", summary)
        write_manifest(out, "compress-prompt", inputs={"model": str(model), "context": str(context)},
                       metrics={k: summary[k] for k in ("method", "tokens_before", "tokens_after", "ratio",
                                                       "prompt_tokens_before", "prompt_tokens_after",
                                                       "seconds")},
                       files={"compressed": "compressed.json"})
    return summary
