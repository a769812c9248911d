"""``llm4all eval kv-cache``: what a quantised KV cache costs in perplexity and saves in memory.

A long text is decoded through each cache in turn (``models/kvcache.py``: fp32, fp16, bf16, or
KIVI int8 / int4), ``chunk`` tokens per forward pass: each chunk's tokens are scored from the
keys and values the cache holds for everything before them (dequantised codes for old tokens,
the exact full-precision residual for the recent ones) — the situation of generation, which is
where a quantised cache is used. The first row is the model's own dtype; the others report their
perplexity change against it and the bytes per token their cache held at the end, measured from
its tensors (codes, scales, minima and the full-precision residual), beside the planner's
per-token formula (``bytes_per_value`` · 2 · layers · kv_heads · head_dim).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from llm4all.errors import UserError


def cache_nll(model, tokens: list[int], cache, chunk: int = 16, after_step=None) -> dict:
    """Mean NLL (nats) of tokens[1:] decoded through ``cache``, ``chunk`` tokens per forward.

    ``after_step(cache)`` runs after every forward (an eviction, for attention sinks).
    """
    import torch

    from llm4all.models.device import model_device

    ids = torch.tensor(tokens, device=model_device(model))
    total, sizes = 0.0, set()
    with torch.inference_mode():
        for s in range(0, len(tokens) - 1, chunk):
            x = ids[s : min(s + chunk, len(tokens) - 1)]
            logits = model(input_ids=x[None], cache=cache, use_cache=True).logits[0].float()
            target = ids[s + 1 : s + 1 + len(x)]
            total += torch.nn.functional.cross_entropy(logits, target, reduction="sum").double().item()
            if after_step is not None:
                after_step(cache)
            sizes.add(cache.get_seq_length())
    n = len(tokens) - 1
    return {"nll": total / n, "ppl": math.exp(total / n), "tokens": n, "max_cache": max(sizes)}


def long_text(tokenizer, data: Path | None, text_key: str, max_tokens: int) -> tuple[list[int], str]:
    """Up to ``max_tokens`` tokens of ``data`` (default: the demo corpus' held-out KJV chapters),
    documents joined with EOS; and a description of the source."""
    from llm4all.data.readers import read_documents

    if data is None:
        from llm4all.data.demo import demo_corpus_path
        from llm4all.data.tokenize import split_of

        docs = (d for d in read_documents(demo_corpus_path() / "en" / "kjv.jsonl.zst")
                if split_of(d.id, 0.02) == "validation")
        source = "held-out KJV chapters (data/demo)"
    else:
        docs, source = read_documents(data, text_key=text_key), str(data)
    tokens: list[int] = []
    for doc in docs:
        tokens += tokenizer(doc.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(tokens) >= max_tokens:
            break
    tokens = tokens[:max_tokens]
    if len(tokens) < 2:
        raise UserError(f"{source}: fewer than 2 tokens of text")
    return tokens, source


def kv_bytes_per_token(config, kv_dtype: str, group_size: int) -> float:
    """The planner's formula: 2 (keys, values) · layers · kv_heads · head_dim · bytes per value."""
    from llm4all.models.kvcache import bytes_per_value

    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * bytes_per_value(kv_dtype, group_size)


def main(
    model: str,
    *,
    data: Path | None = None,
    kv_dtypes: list[str] | None = None,
    max_tokens: int = 1024,
    chunk: int = 16,
    group_size: int = 32,
    residual: int = 128,
    text_key: str = "text",
    device: str = "auto",
    out: Path | None = None,
) -> dict:
    """KV-cache quantisation (KIVI): perplexity and bytes per token of each cache dtype.

    Args:
        model: a registered name, an HF directory or a packed checkpoint.
        data: documents (JSONL/parquet/txt); default: held-out KJV chapters of the demo corpus.
        kv_dtypes: caches to compare after the model's own dtype (fp32, fp16, bf16, int8, int4;
            default fp16 int8 int4).
        max_tokens: length of the evaluated text in tokens.
        chunk: tokens per forward pass (each scored from the cache of everything before it).
        group_size: tokens (keys) or channels (values) sharing a scale and minimum (KIVI's G).
        residual: recent tokens kept in full precision before being quantised (KIVI's R).
        text_key: the text field of JSONL/parquet documents.
        device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N.
        out: directory for kv_cache.json (nothing written if not given).
    """
    from rich.console import Console
    from rich.table import Table

    from llm4all.models.device import resolve_device
    from llm4all.models.kvcache import FLOAT_KV, KV_DTYPES, cache_bytes, kv_cache
    from llm4all.models.load import load
    from llm4all.runs import write_json, write_manifest

    kv_dtypes = kv_dtypes or ["fp16", "int8", "int4"]
    for d in kv_dtypes:
        if d not in KV_DTYPES or d == "auto":
            raise UserError(f"--kv-dtypes: {d!r} is not a cache dtype; valid: fp32, fp16, bf16, int8, int4")
    if max_tokens < 2 or chunk < 1:
        raise UserError("--max-tokens must be at least 2 and --chunk at least 1")
    net, tokenizer = load(model, device=str(resolve_device(device)))
    own = {v: k for k, v in FLOAT_KV.items()}.get(next(net.parameters()).dtype, "fp32")
    tokens, source = long_text(tokenizer, data, text_key, max_tokens)
    start, rows = time.perf_counter(), {}
    for kv in [own, *[d for d in kv_dtypes if d != own]]:
        cache = kv_cache(net, kv, group_size=group_size, residual=residual)
        r = cache_nll(net, tokens, cache, chunk)
        r["bytes_per_token"] = cache_bytes(cache) / cache.get_seq_length()
        r["planned_bytes_per_token"] = kv_bytes_per_token(net.config, kv, group_size)
        r["ppl_change"] = r["ppl"] / rows[own]["ppl"] - 1 if rows else 0.0
        rows[kv] = r
    table = Table(title=f"KV cache on {len(tokens)} tokens of {source} ({model}, chunk {chunk}, "
                        f"G={group_size}, R={residual})")
    for col in ("cache", "ppl", "change", "bytes/token", "planned", "vs own"):
        table.add_column(col, justify="right")
    for kv, r in rows.items():
        table.add_row(kv, f"{r['ppl']:.3f}", f"{100 * r['ppl_change']:+.2f}%", f"{r['bytes_per_token']:,.0f}",
                      f"{r['planned_bytes_per_token']:,.0f}",
                      f"{r['bytes_per_token'] / rows[own]['bytes_per_token']:.3f}")
    Console().print(table)
    result = {"model": str(model), "data": source, "tokens": len(tokens), "chunk": chunk,
              "group_size": group_size, "residual": residual, "own_dtype": own, "results": rows,
              "seconds": round(time.perf_counter() - start, 1)}
    if out is not None:
        write_json(Path(out) / "kv_cache.json", result)
        write_manifest(out, "eval kv-cache", inputs={"model": str(model)}, metrics=result)
    return result
