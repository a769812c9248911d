"""Claim: a GGUF from ``llm4all export`` runs in llama.cpp with the source model's perplexity.

SmolLM2-135M-Instruct (the embedded teacher) is exported to GGUF F16, Q8_0 and Q4_0. For each
file: size on disk, perplexity on the same English demo tokens (512-token windows) computed
by llama.cpp (llama-cpp-python) and by transformers' GGUF loader, and llama.cpp's greedy
generation speed. The peer is the source model in transformers (float32). The last line is
the ratio of llama.cpp's F16 perplexity to the source model's.

    .venv/bin/python benchmarks/export_gguf.py [--tokens 2048] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np


def demo_tokens(tokenizer, n: int) -> np.ndarray:
    from llm4all.data.demo import iter_demo

    ids: list[int] = []
    for doc in iter_demo("en"):
        ids += tokenizer(doc["text"])["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= n:
            break
    return np.array(ids[:n])


def main() -> None:
    import torch
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoModelForCausalLM

    from llm4all.evaluate.llamacpp import generation_speed, llama_cpp_perplexity
    from llm4all.evaluate.perplexity import perplexity
    from llm4all.export.gguf import export_gguf
    from llm4all.models.load import load, resolve

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    source, tokenizer = load("smollm2-135m")
    tokens = demo_tokens(tokenizer, args.tokens)
    start = time.perf_counter()
    ref = perplexity(source, tokens, context=512)
    hf_tps = ref["tokens"] / (time.perf_counter() - start)
    hf_bytes = sum(f.stat().st_size for f in resolve("smollm2-135m").glob("*.safetensors"))
    rows = [("source (transformers fp32)", hf_bytes, math.nan, ref["ppl"], hf_tps, math.nan, math.nan)]
    with tempfile.TemporaryDirectory() as tmp:
        for qtype in ("f16", "q8_0", "q4_0"):
            path = Path(tmp) / f"smollm2-{qtype}.gguf"
            t0 = time.perf_counter()
            export_gguf("smollm2-135m", path, type=qtype)
            export_s = time.perf_counter() - t0
            cpp = llama_cpp_perplexity(path, tokens, context=512, threads=args.threads)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                         dtype=torch.float32).eval()
            hf = perplexity(model, tokens, context=512)
            gen = generation_speed(path, "The history of the Bible", 64, threads=args.threads)
            rows.append((f"GGUF {qtype} (export {export_s:.0f} s)", path.stat().st_size, cpp["ppl"],
                         hf["ppl"], cpp["tokens_per_s"], gen, cpp["ppl"] / ref["ppl"]))
            del model

    table = Table(title=f"SmolLM2-135M export, perplexity on {ref['tokens']} English demo tokens "
                        f"(512-token windows, {args.threads} threads)")
    for col in ("model", "MiB", "ppl llama.cpp", "ppl transformers", "eval tok/s llama.cpp",
                "gen tok/s llama.cpp", "ppl ratio vs source"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name, size, cpp_ppl, hf_ppl, tps, gen, ratio in rows:
        table.add_row(name, f"{size / 2**20:.1f}", f"{cpp_ppl:.4f}", f"{hf_ppl:.4f}", f"{tps:.0f}",
                      f"{gen:.1f}", f"{ratio:.4f}")
    Console(width=140).print(table)
    f16 = rows[1]
    print(f"llama.cpp F16 GGUF perplexity / source perplexity: {f16[2] / ref['ppl']:.4f}")


if __name__ == "__main__":
    main()
