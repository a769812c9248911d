"""Perplexity of a GGUF file under llama.cpp (through llama-cpp-python), to check an export.

The same strided windows as ``llm4all.evaluate.perplexity`` (each window of ``context``
tokens scores only the tokens no earlier window scored), evaluated by llama.cpp itself with
``logits_all=True``; the negative log-likelihood is computed here in float64 from llama.cpp's
logits, so a GGUF and its source model can be compared token for token on identical ids.
llama-cpp-python is installed by ``make install`` (scripts/llama-cpp.sh).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from llm4all.evaluate.windows import windows
from llm4all.models.llamacpp import open_llama


def log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Summed −log p(target) in nats; ``logits`` (T, V) predict ``targets`` (T,)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(z).sum(axis=-1))
    return float((logz - z[np.arange(len(targets)), targets]).sum())


def llama_cpp_perplexity(path: str | Path, tokens: np.ndarray, context: int = 512,
                         stride: int | None = None, threads: int | None = None) -> dict:
    """Perplexity of the GGUF at ``path`` on ``tokens`` (1-D ids), llama.cpp doing the forward."""
    llm = open_llama(path, n_ctx=context, threads=threads)
    tokens = np.asarray(tokens, dtype=np.int64)
    nll, scored, start = 0.0, 0, time.perf_counter()
    try:
        for begin, end, n in windows(len(tokens), context, stride or context):
            llm.reset()
            llm.eval(tokens[begin:end].tolist())
            logits = np.asarray(llm.scores[: end - begin], dtype=np.float32)  # (T, V)
            # position p predicts token p + 1: the last n targets need logits [T-1-n, T-1)
            nll += log_softmax_nll(logits[end - begin - 1 - n : end - begin - 1], tokens[end - n : end])
            scored += n
    finally:
        llm.close()  # free the model now, not in __del__ at interpreter exit
    mean = nll / scored
    return {"tokens": scored, "nll": mean, "ppl": math.exp(mean),
            "tokens_per_s": scored / (time.perf_counter() - start)}


def generation_speed(path: str | Path, prompt: str = "The", n_tokens: int = 64,
                     threads: int | None = None) -> float:
    """Greedy decoding speed of llama.cpp on the GGUF at ``path``, in generated tokens/s."""
    llm = open_llama(path, n_ctx=256, threads=threads, logits_all=False)
    try:
        start = time.perf_counter()
        out = llm(prompt, max_tokens=n_tokens, temperature=0.0, top_k=1)
        seconds = time.perf_counter() - start
    finally:
        llm.close()
    return out["usage"]["completion_tokens"] / seconds


def gguf_speed(path: str | Path, prompt_lengths: list[int], new_tokens: int, repeats: int,
               threads: int | None = None, kv_dtype: str = "auto", energy: bool = False) -> dict:
    """Prefill tokens/s and batch-1 decode latency of a GGUF in llama.cpp (as ``speed.py`` measures torch).

    Prefill: one ``eval`` of L random token ids (best of ``repeats``). Decode: after a 32-token
    prompt, ``new_tokens`` single-token ``eval`` calls, each timed; the token fed does not change the
    cost of a step, so ids are drawn at random as for the torch measurement.
    """
    llm = open_llama(path, n_ctx=max(max(prompt_lengths), 32 + new_tokens) + 1, threads=threads,
                     logits_all=False, kv_dtype=kv_dtype)
    rng = np.random.default_rng(0)
    vocab = llm.n_vocab()
    try:
        prefill = []
        for length in prompt_lengths:
            ids, best = rng.integers(0, vocab, size=length).tolist(), float("inf")
            for _ in range(repeats):
                llm.reset()
                start = time.perf_counter()
                llm.eval(ids)
                best = min(best, time.perf_counter() - start)
            prefill.append({"prompt_tokens": length, "batch": 1, "seconds": best,
                            "tokens_per_s": length / best})
        steps, rates = [], []
        for _ in range(repeats):
            llm.reset()
            llm.eval(rng.integers(0, vocab, size=32).tolist())
            gaps = []
            for token in rng.integers(0, vocab, size=new_tokens).tolist():
                start = time.perf_counter()
                llm.eval([token])
                gaps.append(time.perf_counter() - start)
            steps += gaps
            rates.append(len(gaps) / sum(gaps))
        spent = gguf_energy(llm, path, new_tokens, kv_dtype) if energy else None
        kv_bytes = gguf_kv_bytes_per_token(llm_shape(llm), kv_dtype)
    finally:
        llm.close()
    p50, p90, p99 = np.percentile(steps, [50, 90, 99])
    decode = {"batch": 1, "new_tokens": new_tokens, "tokens_per_s": max(rates),
              "latency_ms": {"p50": 1e3 * p50, "p90": 1e3 * p90, "p99": 1e3 * p99}, "kv_dtype": kv_dtype,
              "kv_bytes_per_token": kv_bytes}
    return {"prefill": prefill, "decode": [decode], **({"energy": spent} if spent else {})}


#: bytes per cached value of llama.cpp's KV types (q8_0: 32 int8 + an fp16 scale; q4_0: 32 4-bit + fp16)
LLAMA_KV_BYTES = {"auto": 2.0, "fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 34 / 32, "int4": 18 / 32}


def llm_shape(llm):
    """The decoder's shape from a GGUF's metadata, as the attributes of an HF config."""
    from types import SimpleNamespace

    meta = llm.metadata
    arch = meta["general.architecture"]
    get = lambda key: int(meta[f"{arch}.{key}"])  # noqa: E731
    heads = get("attention.head_count")
    return SimpleNamespace(hidden_size=get("embedding_length"), num_hidden_layers=get("block_count"),
                           num_attention_heads=heads, intermediate_size=get("feed_forward_length"),
                           num_key_value_heads=int(meta.get(f"{arch}.attention.head_count_kv", heads)),
                           head_dim=int(meta.get(f"{arch}.attention.key_length",
                                                 get("embedding_length") // heads)),
                           vocab_size=llm.n_vocab())


def gguf_kv_bytes_per_token(shape, kv_dtype: str) -> float:
    return 2 * shape.num_hidden_layers * shape.num_key_value_heads * shape.head_dim * LLAMA_KV_BYTES[kv_dtype]


def gguf_energy(llm, path: str | Path, new_tokens: int, kv_dtype: str, prompt: int = 32) -> dict:
    """Joules per decoded token: RAPL around ``new_tokens`` steps where readable, else an estimate
    from the GGUF's shape and file size (its weights are read once per step)."""
    from llm4all.evaluate.energy import Rapl, estimate

    shape = llm_shape(llm)
    rapl = Rapl.find()
    if rapl is not None:
        llm.reset()
        llm.eval(list(range(1, prompt + 1)))
        before, start = rapl.read(), time.perf_counter()
        for token in range(new_tokens):
            llm.eval([token + 1])
        joules = rapl.joules_since(before)
        return {"joules_per_token": joules / new_tokens, "watts": joules / (time.perf_counter() - start),
                "tokens": new_tokens, "source": f"RAPL ({len(rapl.files)} counters: the whole package, "
                                                 "other processes and idle power included)"}
    size = Path(path).stat().st_size
    import llama_cpp

    n_params = llama_cpp.llama_model_n_params(llm.model)
    bits = 8 * size / n_params if n_params else 32
    compute = "int8" if bits < 12 else "fp16" if bits < 24 else "fp32"
    return estimate(shape, weight_bytes=size, kv_bytes_per_token=gguf_kv_bytes_per_token(shape, kv_dtype),
                    context=prompt + new_tokens // 2, compute=compute)


def gguf_memory_child(path: str, length: int, new_tokens: int, threads: int, kv_dtype: str = "auto") -> dict:
    """In a fresh process: RSS before and after loading the GGUF, and the high-water mark after a
    prefill of ``length`` tokens and ``new_tokens`` decode steps (MiB)."""
    from llm4all.plan.measure import proc_status

    before = proc_status("VmRSS") / 2**20
    llm = open_llama(path, n_ctx=length + new_tokens + 1, threads=threads, logits_all=False,
                     kv_dtype=kv_dtype)
    after = proc_status("VmRSS") / 2**20
    llm.eval(list(range(1, length + 1)))
    for token in range(new_tokens):
        llm.eval([token + 1])
    peak = proc_status("VmHWM") / 2**20
    llm.close()
    return {"rss_before_load_mib": before, "rss_after_load_mib": after, "peak_rss_mib": peak}
