"""Greedy speculative decoding: a cheap draft proposes k tokens, the target checks them in one pass.

Leviathan et al. 2023 ("Fast Inference from Transformers via Speculative Decoding", algorithm
1) at temperature 0: the draft proposes d_1..d_k greedily; one target forward over the last
accepted token and d_1..d_k gives the target's argmax g_0..g_k; the longest prefix with
d_i == g_{i-1} is accepted and the target's own token g_n follows it (a correction on the first
mismatch, a bonus token when all k are accepted). Every emitted token is the target's argmax
given the tokens before it, so the output equals the target's greedy output exactly (up to
floating-point differences between scoring tokens in one pass and one at a time).

Both models keep a KV cache (``transformers.DynamicCache``); on rejection the caches are cut
back with ``DynamicCache.crop`` to the tokens that were kept. Drafts:

- another model sharing the tokenizer (the distilled student);
- ``layers:N``: the target's first N layers with its final norm and head (early exit,
  self-speculation; Zhang et al. 2023, "Draft & Verify" skip layers instead of truncating);
- ``every:K``: a student initialised from every K-th teacher layer (``models.init``), untrained;
- ``dtype:bfloat16``: the target itself with bf16 weights (a low-precision copy, agreeing with
  the target almost always; worth it only where bf16 runs much faster than fp32);
- ``ngram:N``: prompt-lookup decoding (Saxena 2023; transformers' ``prompt_lookup_num_tokens``):
  copy the tokens that followed the last earlier occurrence of the final N tokens. No model;
- ``A|B``: a chain -- ask A, and B only when A proposes nothing: ``ngram:3|STUDENT`` copies
  from the context when it can (free) and lets the student guess otherwise.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from llm4all.errors import UserError


def _forward(model, cache, ids: list[int]):
    """Logits (len(ids), V) of ``ids`` appended to what ``cache`` holds."""
    import torch

    from llm4all.models.device import model_device

    out = model(input_ids=torch.tensor([ids], device=model_device(model)), cache=cache,
                use_cache=True)
    return out.logits[0]


def crop_to(cache, n: int) -> None:
    """Keep the first ``n`` cached tokens (transformers 5 ``crop`` takes minus the tokens to drop)."""
    extra = cache.get_seq_length() - n
    if extra > 0:
        cache.crop(-extra)


def _new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


class ModelDraft:
    """A draft model with its own KV cache; ``n`` tokens of the sequence are in the cache."""

    def __init__(self, model):
        self.model, self.cache, self.n = model, _new_cache(model), 0

    def propose(self, seq: list[int], k: int) -> list[int]:
        feed, out = seq[self.n:], []
        for _ in range(k):
            tok = int(_forward(self.model, self.cache, feed)[-1].argmax())
            self.n += len(feed)
            out.append(tok)
            feed = [tok]
        return out

    def keep(self, n: int) -> None:
        """Forget every cached token after the first ``n``."""
        if self.n > n:
            crop_to(self.cache, n)
            self.n = n


class NgramDraft:
    """Prompt lookup: propose the k tokens that followed the last earlier match of the last n."""

    def __init__(self, n: int):
        self.n = n

    def propose(self, seq: list[int], k: int) -> list[int]:
        tail = seq[-self.n:]
        for start in range(len(seq) - self.n - 1, -1, -1):
            if seq[start : start + self.n] == tail:
                return seq[start + self.n : start + self.n + k]
        return []

    def keep(self, n: int) -> None:
        pass


class ChainDraft:
    """The first draft that proposes anything wins; model drafts catch up on skipped tokens."""

    def __init__(self, drafts: list):
        self.drafts = drafts

    def propose(self, seq: list[int], k: int) -> list[int]:
        for draft in self.drafts:
            if out := draft.propose(seq, k):
                return out
        return []

    def keep(self, n: int) -> None:
        for draft in self.drafts:
            draft.keep(n)


def greedy(model, prompt: list[int], max_new_tokens: int, eos_token_id: int | None = None) -> list[int]:
    """The target alone: greedy decoding with a KV cache, one token per forward pass."""
    import torch

    cache, out, feed = _new_cache(model), [], list(prompt)
    with torch.inference_mode():
        while len(out) < max_new_tokens:
            tok = int(_forward(model, cache, feed)[-1].argmax())
            out.append(tok)
            feed = [tok]
            if tok == eos_token_id:
                break
    return out


def speculative(target, draft, prompt: list[int], max_new_tokens: int, k: int = 4,
                eos_token_id: int | None = None) -> tuple[list[int], dict]:
    """(new tokens, stats) of greedy speculative decoding (module docstring)."""
    import torch

    if k < 1:
        raise UserError(f"--k (draft tokens per step) must be at least 1, got {k}")
    if not prompt:
        raise UserError("speculative decoding needs a non-empty prompt")
    seq, cache, in_cache = list(prompt), _new_cache(target), 0  # in_cache: tokens the target has seen
    proposed = accepted = steps = 0
    with torch.inference_mode():
        while len(seq) - len(prompt) < max_new_tokens:
            d = draft.propose(seq, min(k, max_new_tokens - (len(seq) - len(prompt)) - 1))
            logits = _forward(target, cache, seq[in_cache:] + d)  # (new + len(d), V)
            g = logits[-(len(d) + 1):].argmax(-1).tolist()  # g[i]: target's token after d_1..d_i
            n = 0
            while n < len(d) and d[n] == g[n]:
                n += 1
            seq += d[:n] + [g[n]]
            proposed, accepted, steps = proposed + len(d), accepted + n, steps + 1
            in_cache = len(seq) - 1  # everything but the newest token, which is fed next step
            crop_to(cache, in_cache)
            draft.keep(in_cache)
            if eos_token_id is not None and eos_token_id in seq[len(prompt):]:
                break
    new = seq[len(prompt):][:max_new_tokens]
    if eos_token_id in new:
        new = new[: new.index(eos_token_id) + 1]
    return new, {"proposed": proposed, "accepted": accepted, "target_forwards": steps}


def make_draft(spec: str, target, dtype: str = "float32", device=None):
    """A draft from a spec: layers:N, every:K, dtype:D, ngram:N, a model name/path, or A|B,
    on ``device`` (default: the target's)."""
    from llm4all.models.device import model_device

    device = device if device is not None else model_device(target)
    if "|" in spec:
        return ChainDraft([make_draft(part, target, dtype, device) for part in spec.split("|")])
    kind, _, arg = spec.partition(":")
    if kind == "dtype" and arg in ("bfloat16", "float16"):
        import copy

        import torch

        return ModelDraft(copy.deepcopy(target).to(getattr(torch, arg)))
    if kind in ("layers", "every", "ngram") and arg:
        try:
            value = int(arg)
        except ValueError:
            raise UserError(f"draft {spec!r}: {kind}:N needs an integer N") from None
        if kind == "ngram":
            if value < 1:
                raise UserError(f"draft {spec!r}: the n-gram length must be at least 1")
            return NgramDraft(value)
        from llm4all.models.init import student_from_teacher

        layers = target.config.num_hidden_layers
        if kind == "layers" and not 1 <= value < layers:
            raise UserError(f"draft {spec!r}: N must be in 1..{layers - 1} (the target has {layers} layers)")
        student = student_from_teacher(target, layers=list(range(value)) if kind == "layers" else None,
                                       every=value if kind == "every" else None)
        return ModelDraft(student.to(device))
    from llm4all.models.load import load

    model, _ = load(spec, dtype=dtype, device=str(device))
    if model.config.vocab_size != target.config.vocab_size:
        raise UserError(f"draft {spec!r} has a vocabulary of {model.config.vocab_size}, the target "
                        f"{target.config.vocab_size}: a draft must share the target's tokenizer")
    return ModelDraft(model)


def demo_prompts(n: int = 8) -> list[str]:
    """The first 30 words of the first n held-out English demo documents (corpus order)."""
    from llm4all.data.demo import demo_corpus_path
    from llm4all.data.readers import read_documents
    from llm4all.data.tokenize import split_of

    out = []
    for doc in read_documents(demo_corpus_path() / "en"):
        if split_of(doc.id, 0.02) == "validation":
            out.append(" ".join(doc.text.split()[:30]))
            if len(out) == n:
                break
    return out


def compare(target, draft_spec: str, prompts: list[list[int]], max_new_tokens: int, k: int,
            dtype: str = "float32", advance=None, device=None) -> dict:
    """Time the target alone and speculative decoding on the same prompts; assert equal output.

    ``advance()``, if given, is called after each prompt (a progress bar's)."""
    base_s = spec_s = 0.0
    stats = {"proposed": 0, "accepted": 0, "target_forwards": 0, "tokens": 0}
    greedy(target, prompts[0][:8], 4)  # warm-up
    for p in prompts:
        start = time.perf_counter()
        ref = greedy(target, p, max_new_tokens)
        base_s += time.perf_counter() - start
        draft = make_draft(draft_spec, target, dtype, device)
        start = time.perf_counter()
        out, st = speculative(target, draft, p, max_new_tokens, k)
        spec_s += time.perf_counter() - start
        assert out == ref, f"speculative output differs from the target's at token {_first_diff(out, ref)}"
        for key in ("proposed", "accepted", "target_forwards"):
            stats[key] += st[key]
        stats["tokens"] += len(out)
        if advance is not None:
            advance()
    return {"draft": draft_spec, "k": k, "prompts": len(prompts), **stats,
            "acceptance": stats["accepted"] / max(stats["proposed"], 1),
            "tokens_per_target_forward": stats["tokens"] / stats["target_forwards"],
            "target_tokens_per_s": stats["tokens"] / base_s,
            "speculative_tokens_per_s": stats["tokens"] / spec_s,
            "speedup": base_s / spec_s, "identical": True}


def _first_diff(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def main(
    target: str,
    draft: list[str],
    *,
    prompts: str = "demo",
    max_new_tokens: int = 64,
    k: int = 4,
    dtype: Literal["float32", "bfloat16"] = "float32",
    device: str = "auto",
    out: Path | None = None,
) -> dict:
    """Greedy speculative decoding of TARGET with each DRAFT: acceptance, tokens/s, speed-up.

    Args:
        target: the model whose greedy output is reproduced (name, HF directory or .gguf).
        draft: one or more drafts: a model sharing the tokenizer, layers:N (target's first N
            layers + head), every:K (student init from every K-th layer), dtype:bfloat16 (the
            target in bf16), ngram:N (prompt lookup), or A|B (B only when A has nothing, e.g.
            "ngram:3|runs/x/distill/model").
        prompts: a text file with one prompt per line, or "demo" (8 held-out demo documents).
        max_new_tokens: tokens generated per prompt.
        k: draft tokens proposed per target forward pass.
        dtype: float32 or bfloat16.
        device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N; the drafts follow the target.
        out: directory for speculative.json (nothing written if not given).
    """
    import torch
    from rich.console import Console
    from rich.table import Table

    from llm4all.models.device import resolve_device
    from llm4all.models.load import load
    from llm4all.progress import progress
    from llm4all.runs import write_json, write_manifest

    if max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    if prompts == "demo":
        texts = demo_prompts()
    else:
        path = Path(prompts)
        if not path.is_file():
            raise UserError(f"--prompts {prompts}: no such file (give one prompt per line, or demo)")
        texts = [s for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
        if not texts:
            raise UserError(f"--prompts {prompts}: no prompts in the file")
    where = resolve_device(device)
    net, tokenizer = load(target, dtype=dtype, device=str(where))
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    with progress("eval speculative", total=len(draft) * len(ids), unit="prompts") as advance:
        rows = [compare(net, d, ids, max_new_tokens, k, dtype, advance, where) for d in draft]
    table = Table(title=f"speculative decoding, target {target} ({dtype}, {torch.get_num_threads()} threads)")
    for col in ("draft", "k", "acceptance", "tokens/forward", "target tok/s", "spec tok/s", "speed-up"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["draft"], str(r["k"]), f"{r['acceptance']:.3f}",
                      f"{r['tokens_per_target_forward']:.2f}", f"{r['target_tokens_per_s']:.1f}",
                      f"{r['speculative_tokens_per_s']:.1f}", f"{r['speedup']:.2f}x")
    Console().print(table)
    result = {"target": str(target), "dtype": dtype, "max_new_tokens": max_new_tokens, "prompts": texts,
              "results": rows}
    if out is not None:
        write_json(Path(out) / "speculative.json", result)
        write_manifest(out, "eval speculative", inputs={"model": str(target), "drafts": list(draft)},
                       metrics=result)
    return result
