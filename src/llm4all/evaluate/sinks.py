"""Attention sinks (StreamingLLM, Xiao et al. 2023): keep the first tokens plus a recent window.

Xiao et al. ("Efficient Streaming Language Models with Attention Sinks", ICLR 2024) observe that
a model dumps attention on the first tokens whatever they say; evicting them (window attention)
makes perplexity explode once the text outgrows the cache, while keeping ``n_sink`` of them (4 in
the paper) beside the ``window`` most recent tokens keeps it close to full attention, at a cache
of fixed size, for texts far past the training length.

Positions are assigned *within the cache* (paper sec. 3.2): a cached token's position is its
slot, not its place in the text, so positions never exceed ``n_sink + window``. With RoPE that
means keys must be re-rotated when the cache shifts. ``SinkLayer`` (``models/window.py``, which
also makes sinks + a sliding window a model option) stores keys un-rotated (fp32) and rotates
them by their current slot every time attention reads them, so no error accumulates across
evictions (transformers' old ``SinkCache``, removed in v4.53 and moved to a
Hub custom-generate repo we cannot fetch offline, instead re-rotated stored keys on each shift).
Works for models with a Llama-style rotary embedding (``model.model.rotary_emb``: Llama,
Mistral, Qwen2, SmolLM).

Evaluation follows the paper (sec. 4.1): the text is decoded token by token, each token's loss
computed from the cache left by the tokens before it, evicting after each step. ``chunk > 1``
feeds several tokens per forward for speed (they then see up to ``window + chunk - 1`` recent
tokens) -- a looser setting, reported as such.
"""

from __future__ import annotations

import time
from pathlib import Path

from llm4all.errors import UserError
from llm4all.models.window import evict_all, sink_cache


def streaming_nll(model, tokens: list[int], n_sink: int, window: int, chunk: int = 1) -> dict:
    """Mean NLL (nats) of tokens[1:] decoded through a sink + window cache (``n_sink=0``: window only)."""
    from llm4all.evaluate.kvcache import cache_nll

    return cache_nll(model, tokens, sink_cache(model, n_sink, window), chunk, after_step=evict_all)


def streaming_generate(model, prompt: list[int], max_new_tokens: int, n_sink: int, window: int) -> list[int]:
    """Greedy generation through a sink + window cache (positions stay below n_sink + window + 1)."""
    import torch

    from llm4all.models.device import model_device

    device = model_device(model)
    cache, out, feed = sink_cache(model, n_sink, window), [], list(prompt)
    with torch.inference_mode():
        while len(out) < max_new_tokens:
            for s in range(0, len(feed), window):  # a long prompt goes in window-sized pieces
                piece = torch.tensor([feed[s : s + window]], device=device)
                logits = model(input_ids=piece, cache=cache, use_cache=True).logits[0, -1]
                evict_all(cache)
            out.append(int(logits.argmax()))
            feed = out[-1:]
    return out


def main(
    model: str,
    *,
    data: Path | None = None,
    window: int = 256,
    sinks: int = 4,
    max_tokens: int = 1024,
    chunk: int = 1,
    generate: int = 0,
    text_key: str = "text",
    device: str = "auto",
    out: Path | None = None,
) -> dict:
    """StreamingLLM: perplexity of a long text with sink + window cache vs window only vs full context.

    Args:
        model: a registered name, an HF directory or a .gguf file.
        data: documents (JSONL/parquet/txt); default: held-out KJV chapters of the demo corpus.
        window: recent tokens kept in the cache.
        sinks: initial tokens kept in the cache (the attention sinks; 4 in the paper).
        max_tokens: length of the evaluated text in tokens (should exceed the window).
        chunk: tokens per forward pass (1 = the paper's token-by-token evaluation).
        generate: also generate this many greedy tokens past the window, with and without sinks.
        text_key: the text field of JSONL/parquet documents.
        device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N.
        out: directory for sinks.json (nothing written if not given).
    """
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from llm4all.evaluate.kvcache import long_text
    from llm4all.evaluate.perplexity import perplexity
    from llm4all.models.device import resolve_device
    from llm4all.models.load import load
    from llm4all.runs import write_json, write_manifest

    if max_tokens < 2 or chunk < 1:
        raise UserError("--max-tokens must be at least 2 and --chunk at least 1")
    net, tokenizer = load(model, device=str(resolve_device(device)))
    sink_cache(net, sinks, window)  # validate before the slow part
    tokens, source = long_text(tokenizer, data, text_key, max_tokens)
    limit = getattr(net.config, "max_position_embeddings", len(tokens))
    rows, start = {}, time.perf_counter()
    context = min(len(tokens), limit)
    full = perplexity(net, np.asarray(tokens), context=context, stride=max(1, context // 2))
    rows["full context"] = {"nll": full["nll"], "ppl": full["ppl"], "tokens": full["tokens"],
                            "max_cache": context}
    rows[f"sinks {sinks} + window {window}"] = streaming_nll(net, tokens, sinks, window, chunk)
    rows[f"window {window} only"] = streaming_nll(net, tokens, 0, window, chunk)
    table = Table(title=f"StreamingLLM on {len(tokens)} tokens of {source} ({model})")
    for col in ("cache", "max entries", "ppl", "nll"):
        table.add_column(col, justify="right")
    for name, r in rows.items():
        table.add_row(name, str(r["max_cache"]), f"{r['ppl']:.3f}", f"{r['nll']:.4f}")
    Console().print(table)
    result = {"model": str(model), "data": source, "tokens": len(tokens), "window": window, "sinks": sinks,
              "chunk": chunk, "results": rows, "seconds": round(time.perf_counter() - start, 1)}
    if generate:
        prompt = tokens[: min(64, len(tokens))]
        for name, n_sink in (("sinks", sinks), ("window_only", 0)):
            text = tokenizer.decode(streaming_generate(net, prompt, generate, n_sink, window))
            result[f"generated_{name}"] = text
            Console().print(f"[bold]{name}[/bold] (last 300 characters of {generate} tokens): "
                            f"{text[-300:]!r}")
    if out is not None:
        write_json(Path(out) / "sinks.json", result)
        write_manifest(out, "eval sinks", inputs={"model": str(model)}, metrics=result)
    return result
