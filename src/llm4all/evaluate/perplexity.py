"""Strided-window perplexity of a causal LM over token shards or documents.

The token stream is cut into windows of ``context`` tokens whose ends advance by
``stride``; each window scores only the tokens that no earlier window scored, so every token
after the first is predicted exactly once, with at least ``context - stride`` tokens of left
context (except in the first window). With ``stride == context`` consecutive windows share
just one token; smaller strides cost more and give a lower, fairer perplexity (Press et al.
2021, "Shortformer", sliding-window evaluation; the Hugging Face "Perplexity of fixed-length
models" guide).

Logits are never materialised for a whole batch: hidden states go through the output head in
chunks of positions and the cross-entropy is summed in fp32, so memory stays at
``batch × context × hidden`` plus one ``chunk × vocab`` block even in bf16.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import numpy as np

from llm4all.errors import UserError
from llm4all.evaluate.windows import windows
from llm4all.runs import write_json, write_manifest


def window_nll(model, input_ids, n_targets: list[int], chunk: int = 256,
               full_forward: bool = False) -> list[float]:
    """Summed negative log-likelihood (nats) of the last ``n_targets[i]`` tokens of each row.

    ``input_ids``: (B, T) LongTensor of equal-length windows. ``full_forward`` calls the
    model's own forward for (B, T, V) logits instead of running the output head in chunks: an
    FSDP-sharded model gathers its root parameters only inside its own forward.
    """
    import torch
    import torch.nn.functional as F

    B, T = input_ids.shape
    if full_forward:
        logits = model(input_ids=input_ids).logits.float()  # (B, T, V)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        nll = -logp.gather(-1, input_ids[:, 1:, None])[..., 0].double()  # (B, T-1)
        return [nll[b, T - 1 - n_targets[b]:].sum().item() for b in range(B)]
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    head = model.get_output_embeddings()
    hidden = backbone(input_ids=input_ids).last_hidden_state  # (B, T, H)
    sums = []
    for b in range(B):
        first = T - n_targets[b]  # first target position
        total = torch.zeros((), dtype=torch.float64, device=input_ids.device)
        for s in range(first, T, chunk):
            e = min(s + chunk, T)
            logits = head(hidden[b, s - 1 : e - 1]).float()  # (chunk, V): predicts tokens s..e-1
            total += F.cross_entropy(logits, input_ids[b, s:e], reduction="sum").double()
        sums.append(total.item())
    return sums


def perplexity(model, tokens: np.ndarray, context: int = 1024, stride: int | None = None,
               batch_size: int = 4, progress=None, full_forward: bool = False) -> dict:
    """Perplexity of ``model`` on a 1-D token array; returns nll, ppl, token and window counts."""
    import torch

    from llm4all.models.device import model_device

    stride = stride or context
    wins = windows(len(tokens), context, stride)
    if not wins:
        raise UserError(f"need at least 2 tokens to measure perplexity, got {len(tokens)}")
    ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    device = model_device(model)
    nll, scored = 0.0, 0
    # group by window length so rows of a batch are equal length (only the last window differs)
    by_len: dict[int, list[tuple[int, int, int]]] = {}
    for w in wins:
        by_len.setdefault(w[1] - w[0], []).append(w)
    with torch.inference_mode():
        for group in by_len.values():
            for i in range(0, len(group), batch_size):
                batch = group[i : i + batch_size]
                x = torch.stack([ids[b:e] for b, e, _ in batch]).to(device)
                nll += sum(window_nll(model, x, [n for _, _, n in batch], full_forward=full_forward))
                scored += sum(n for _, _, n in batch)
                if progress is not None:
                    progress(scored)
    mean = nll / scored
    return {"tokens": scored, "windows": len(wins), "nll": mean, "ppl": math.exp(mean),
            "bits_per_token": mean / math.log(2)}


def response_perplexity(model, sampler, batch_size: int = 8, max_windows: int | None = None) -> dict:
    """Perplexity of the assistant's tokens only, over every window of a ``ConversationSampler``
    (each conversation once, packed as in training): exp(Σ NLL / number of assistant tokens).

    The measure of supervised fine-tuning (the prompt is given, the answer is scored), as in
    LIMA's and Alpaca's held-out evaluations; returns {"nll", "ppl", "tokens"}. ``max_windows``:
    the first windows only."""
    import torch

    from llm4all.data.packing import IGNORE, model_inputs
    from llm4all.models.device import model_device

    device = model_device(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    # the head on the answers' positions only (a third of a window here), 1,024 rows at a time
    direct = head is not None and hasattr(model, "get_decoder") and not getattr(
        model.config, "final_logit_softcapping", None)
    total, count = 0.0, 0
    with torch.no_grad():
        for inputs, labels in sampler.all_windows(batch_size, max_windows):
            kwargs = model_inputs({k: v.to(device) for k, v in inputs.items()})
            labels = labels.to(device)
            counted = labels != IGNORE
            if direct:
                hidden = model.get_decoder()(**kwargs).last_hidden_state[counted]  # (N, H)
                for rows in range(0, len(hidden), 1024):
                    total += float(torch.nn.functional.cross_entropy(
                        head(hidden[rows:rows + 1024]).float(), labels[counted][rows:rows + 1024],
                        reduction="sum"))
            else:
                logits = model(**kwargs).logits
                total += float(torch.nn.functional.cross_entropy(
                    logits[counted].float(), labels[counted], reduction="sum"))
            count += int(counted.sum())
    return {"nll": total / count, "ppl": math.exp(total / count), "tokens": count}


def _load_tokens(data: Path, split: str, tokenizer, max_tokens: int | None,
                 text_key: str) -> tuple[np.ndarray, str]:
    from llm4all.data.shards import TokenShards, is_shard_dir

    if is_shard_dir(data):
        shards = TokenShards(data)
        return shards.tokens(split, max_tokens), f"{data} [{split}]"
    from llm4all.data.readers import read_documents

    if tokenizer.eos_token_id is None:
        raise UserError("the model's tokenizer has no EOS token to separate documents")
    pieces, total = [], 0
    for doc in read_documents(data, text_key=text_key):
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        pieces.append(np.asarray(ids, dtype=np.int64))
        total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    if not pieces:
        raise UserError(f"{data}: no documents")
    tokens = np.concatenate(pieces)
    return (tokens[:max_tokens] if max_tokens else tokens), str(data)


def main(
    model: str,
    data: Path,
    *,
    split: str = "validation",
    context: int = 1024,
    stride: int | None = None,
    batch_size: int = 4,
    dtype: Literal["float32", "bfloat16"] = "float32",
    max_tokens: int | None = None,
    text_key: str = "text",
    engine: Literal["auto", "torch", "llama.cpp"] = "auto",
    device: str = "auto",
    sliding_window: int = 0,
    attention_sinks: int = 0,
    out: Path | None = None,
) -> dict:
    """Strided-window perplexity of MODEL on DATA (token shards or documents).

    Args:
        model: a registered name, an HF directory or a .gguf file.
        data: a token-shard directory (from `llm4all tokenize`) or document files/folders; on
            conversations (tokenize --format chat) the assistant's tokens only, in packed windows.
        split: which split of a shard directory to evaluate.
        context: window length in tokens (capped at the model's maximum positions).
        stride: tokens between window starts (default: context // 2).
        batch_size: windows per forward pass.
        dtype: float32 or bfloat16 weights and activations (the loss is summed in fp32).
        max_tokens: evaluate only the first N tokens (for quick runs).
        text_key: the text field of JSONL/parquet documents.
        engine: torch (llm4all's own forward, packed kernels included), llama.cpp (a .gguf file, run by
            llama.cpp itself: what a user of the file gets), or auto (llama.cpp for a .gguf, else torch).
        device: where the torch engine runs: auto (CUDA when present, else CPU), cpu, cuda, cuda:N.
        sliding_window: score with each token attending to the last N tokens only (Mistral-style;
            0: the model's own attention).
        attention_sinks: with --sliding-window, the first K tokens of each window stay visible
            (StreamingLLM's attention sinks).
        out: directory for perplexity.json (nothing written if not given).
    """
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from llm4all.models.device import resolve_device
    from llm4all.models.load import load

    if context < 2 or batch_size < 1 or (max_tokens is not None and max_tokens < 2):
        raise UserError("--context and --max-tokens must be at least 2, --batch-size at least 1")
    chat = _is_chat(Path(data))
    if engine == "llama.cpp" or (engine == "auto" and str(model).endswith(".gguf") and not chat):
        if chat:
            raise UserError(f"{data}: conversations are scored on the assistant's tokens by the torch "
                            "engine; use --engine torch (it loads .gguf files too)")
        return _in_llama_cpp(model, Path(data), split, context, stride, max_tokens, out)
    if (sliding_window or attention_sinks) and engine == "llama.cpp":
        raise UserError("--sliding-window and --attention-sinks run in the torch engine; use --engine torch")
    where = resolve_device(device)
    net, tokenizer = load(model, dtype=dtype, device=str(where))
    if sliding_window or attention_sinks:
        from llm4all.models.window import with_window

        net = with_window(net, sliding_window, attention_sinks)
    limit = getattr(net.config, "max_position_embeddings", None)
    if limit:
        context = min(context, limit)
    stride = stride or max(1, context // 2)
    if chat:
        return _responses(net, model, Path(data), split, context, batch_size, max_tokens, dtype, where, out)
    tokens, source = _load_tokens(Path(data), split, tokenizer, max_tokens, text_key)
    if tokens.size and int(tokens.max()) >= net.get_input_embeddings().num_embeddings:
        raise UserError(f"{data}: token ids exceed the vocabulary of {model!r}; "
                        "were the shards made with another tokenizer?")
    start = time.perf_counter()
    columns = (TextColumn("perplexity"), BarColumn(),
               TextColumn("{task.completed:,}/{task.total:,} tokens"), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("ppl", total=len(tokens) - 1)
        result = perplexity(net, tokens, context, stride, batch_size,
                            progress=lambda n: bar.update(task, completed=n))
    seconds = time.perf_counter() - start
    result = {"model": str(model), "data": source, "dtype": dtype, "context": context,
              "stride": stride, **result, "seconds": round(seconds, 2),
              "tokens_per_second": round(result["tokens"] / seconds), "runtime": "torch",
              "device": str(where), "torch_threads": torch.get_num_threads(),
              "sliding_window": getattr(net.config, "sliding_window", None) or 0,
              "attention_sinks": getattr(net.config, "attention_sinks", 0) or 0}
    table = Table(title=f"perplexity of {model} on {source}")
    for col in ("dtype", "context/stride", "tokens", "ppl", "bits/token", "tok/s"):
        table.add_column(col, justify="right")
    table.add_row(dtype, f"{context}/{stride}", f"{result['tokens']:,}", f"{result['ppl']:.3f}",
                  f"{result['bits_per_token']:.4f}", f"{result['tokens_per_second']:,}")
    Console().print(table)
    _write(out, model, data, result)
    return result


def _is_chat(data: Path) -> bool:
    from llm4all.data.shards import TokenShards, is_shard_dir

    return is_shard_dir(data) and TokenShards(data).is_chat


def _responses(net, model: str, data: Path, split: str, context: int, batch_size: int,
               max_tokens: int | None, dtype: str, where, out: Path | None) -> dict:
    """Perplexity of the assistant's tokens of the conversations in ``split`` (packed windows of
    ``context`` tokens, each conversation attending to itself only: data/packing.py)."""
    from llm4all.data.packing import ConversationSampler
    from llm4all.data.shards import TokenShards

    start = time.perf_counter()
    sampler = ConversationSampler(TokenShards(data), context, split=split)
    windows = None if max_tokens is None else max(1, max_tokens // context)
    result = response_perplexity(net, sampler, batch_size, windows)
    seconds = time.perf_counter() - start
    result = {"model": str(model), "data": str(data), "dtype": dtype, "context": context, "stride": context,
              "scored": "assistant tokens", **result, "bits_per_token": result["nll"] / math.log(2),
              "seconds": round(seconds, 2), "tokens_per_second": round(result["tokens"] / seconds),
              "runtime": "torch", "device": str(where), "truncated": sampler.truncated}
    print(f"perplexity of {model} on the assistant's tokens of {data} ({split}): {result['ppl']:.3f} "
          f"over {result['tokens']:,} tokens ({sampler.truncated} conversations cut at {context} tokens)")
    _write(out, model, data, result)
    return result


def _write(out: Path | None, model: str, data: Path, result: dict) -> None:
    if out is not None:
        write_json(Path(out) / "perplexity.json", result)
        write_manifest(out, "eval perplexity", inputs={"model": str(model), "data": str(data)},
                       metrics={k: result[k] for k in ("ppl", "nll", "tokens", "context", "stride", "dtype",
                                                       "tokens_per_second", "runtime") if k in result})


def _in_llama_cpp(model: str, data: Path, split: str, context: int, stride: int | None,
                  max_tokens: int | None, out: Path | None) -> dict:
    """The same windows scored by llama.cpp on a GGUF file (token shards only: no tokenizer needed)."""
    from llm4all.data.shards import TokenShards, is_shard_dir
    from llm4all.evaluate.llamacpp import llama_cpp_perplexity
    from llm4all.threads import free_cores

    if not str(model).endswith(".gguf") or not Path(model).is_file():
        raise UserError(f"--engine llama.cpp runs a .gguf file; {model!r} is not one")
    if not is_shard_dir(data):
        raise UserError(f"{data}: --engine llama.cpp scores token shards (llm4all tokenize), not documents")
    tokens = TokenShards(data).tokens(split, max_tokens)
    stride = stride or max(1, context // 2)
    threads = free_cores()
    result = llama_cpp_perplexity(model, tokens, context, stride, threads=threads)
    result = {"model": str(model), "data": str(data), "dtype": "gguf", "runtime": "llama.cpp",
              "context": context, "stride": stride, **result, "bits_per_token": result["nll"] / math.log(2),
              "tokens_per_second": round(result.pop("tokens_per_s")), "threads": threads}
    print(f"perplexity of {model} in llama.cpp on {data}: {result['ppl']:.3f} over {result['tokens']:,} "
          f"tokens ({context}/{stride}, {result['tokens_per_second']:,} tok/s)")
    _write(out, model, data, result)
    return result
