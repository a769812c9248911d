"""Claim (issue 19 item 3): a KIVI int8 / int4 KV cache holds 3.6× / 6.4× fewer bytes per token
than the fp32 cache once the text is long (1.8× / 3.2× fewer than fp16; the 128 most recent
tokens stay in full precision, so at 2,048 tokens the measured saving is smaller) at a
perplexity change under 1%; llama.cpp's own q8_0 / q4_0 caches measured beside it.

Peer: the full-precision caches (fp32, the CPU default; fp16) in the same run, same text.

- torch: SmolLM2-135M-Instruct (fp32 weights: the 4-bit-rounded GGUF converted) decodes
  `--tokens` tokens of held-out KJV chapters in chunks of 16 through each cache (`eval kv-cache`:
  every chunk is scored from the cached keys and values of everything before it); bytes per
  token are those the cache held at the end, from its tensors. Decode speed: `eval speed`'s
  batch-1 decode of 64 tokens after a 32-token prompt, per cache.
- llama.cpp: the shipped Q4_1 GGUF scores the same tokens in windows of `--tokens` with f16
  (its default), q8_0 and q4_0 caches (flash attention on, which a quantised V cache needs).

Prints a table and last the ratio of the fp16 cache's bytes per token to the int4 cache's.

    flock /tmp/llm4all-bench.lock .venv/bin/python benchmarks/kv_cache.py [--tokens 2048]
"""

from __future__ import annotations

import argparse
import os
import time

MODEL = "smollm2-135m"


def torch_rows(tokens: int) -> dict:
    from llm4all.evaluate.kvcache import main as kv

    return kv(MODEL, kv_dtypes=["fp16", "int8", "int4"], max_tokens=tokens, chunk=16)["results"]


def speeds() -> dict:
    from llm4all.evaluate.speed import decode_speed
    from llm4all.models.load import load

    net, _ = load(MODEL)
    decode_speed(net, 4, 1, 8, repeats=1)  # warm-up
    return {kv: decode_speed(net, 64, 1, 32, repeats=2, kv_dtype=kv)["tokens_per_s"]
            for kv in ("fp32", "fp16", "int8", "int4")}


def llama_cpp_rows(tokens: int) -> dict:
    import math

    import numpy as np

    from llm4all.evaluate.kvcache import long_text
    from llm4all.evaluate.llamacpp import gguf_kv_bytes_per_token, llm_shape, log_softmax_nll
    from llm4all.models.llamacpp import open_llama
    from llm4all.models.load import load_tokenizer, smollm2_135m

    ids, _ = long_text(load_tokenizer(MODEL), None, "text", tokens)
    rows = {}
    for kv in ("fp16", "int8", "int4"):
        llm = open_llama(smollm2_135m(), n_ctx=len(ids), threads=os.cpu_count(), kv_dtype=kv)
        try:
            llm.eval(ids)
            logits = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
            nll = log_softmax_nll(logits[:-1], np.asarray(ids[1:])) / (len(ids) - 1)
            rows[kv] = {"ppl": math.exp(nll), "bytes_per_token": gguf_kv_bytes_per_token(llm_shape(llm), kv)}
        finally:
            llm.close()
    for r in rows.values():
        r["ppl_change"] = r["ppl"] / rows["fp16"]["ppl"] - 1
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    args = parser.parse_args()
    load_before, start = os.getloadavg(), time.perf_counter()
    rows, rates, cpp = torch_rows(args.tokens), speeds(), llama_cpp_rows(args.tokens)
    print(f"\nSmolLM2-135M, {args.tokens} tokens of held-out KJV; load average {load_before[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after; {time.perf_counter() - start:.0f} s")
    header = ("engine", "cache", "ppl", "change", "bytes/token", "vs fp32", "decode tok/s")
    print("{:<10} {:<6} {:>8} {:>8} {:>12} {:>8} {:>13}".format(*header))
    for engine, table in (("torch", rows), ("llama.cpp", cpp)):
        for kv, r in table.items():
            fp32 = rows["fp32"]["bytes_per_token"]
            saving = f"{fp32 / r['bytes_per_token']:.2f}×" if engine == "torch" else ""
            rate = f"{rates[kv]:.1f}" if engine == "torch" else ""
            print(f"{engine:<10} {kv:<6} {r['ppl']:>8.3f} {100 * r['ppl_change']:>+7.2f}% "
                  f"{r['bytes_per_token']:>12,.0f} {saving:>8} {rate:>13}")
    print(f"fp16 / int4 cache bytes per token (torch, KIVI): "
          f"{rows['fp16']['bytes_per_token'] / rows['int4']['bytes_per_token']:.2f}")


if __name__ == "__main__":
    main()
