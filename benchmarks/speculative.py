"""Claim: greedy speculative decoding speeds up the teacher on this CPU with identical output.

Peer: the teacher alone (greedy, KV cache, one token per forward pass), timed in the same run on
the same prompts, interleaved with each draft's run. Prompts: the first line of 8 held-out
demo-corpus documents, 64 new tokens each (issue 8 target: >= 1.5x at greedy). Drafts
(default: those of the quickstart's outputs that exist, and prompt lookup):

- ``ngram:3``: prompt-lookup decoding (copies continuations of earlier 3-grams; no model);
- ``runs/quickstart/distill/model``: the distilled 12-layer student (fp32);
- ``runs/quickstart/compress_gptq4``: the same student, GPTQ int4 (CPU int4 kernel);
- ``ngram:3|runs/quickstart/compress_gptq4``: prompt lookup, the int4 student when it finds
  nothing;
- any other spec of ``llm4all eval speculative`` (``layers:N``, ``every:K``, ``dtype:bfloat16``,
  a path such as a GPTQ int4 copy of the teacher).

Every speculative output is asserted equal to the teacher's greedy output. Last line: the best
speed-up ratio.

    .venv/bin/python benchmarks/speculative.py [--threads N] [--k 4] [--drafts SPEC ...]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from llm4all.evaluate.speculative import compare, demo_prompts
from llm4all.models.load import load


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--drafts", nargs="+", default=None, help="draft specs (default: see above)")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.drafts is None:
        quick = Path("runs/quickstart")
        student, int4 = quick / "distill" / "model", quick / "compress_gptq4"
        args.drafts = ["ngram:3"] + [str(p) for p in (student, int4) if (p / "config.json").exists()]
        if (int4 / "config.json").exists():
            args.drafts.append(f"ngram:3|{int4}")
        if len(args.drafts) == 1:
            print("no quickstart student in runs/quickstart (run `make demo` first): prompt lookup only")
    start = time.perf_counter()
    target, tokenizer = load(args.target)
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in demo_prompts(args.prompts)]
    print(f"target {args.target} fp32, {len(prompts)} prompts x {args.new_tokens} new tokens, k={args.k}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    rows = [compare(target, d, prompts, args.new_tokens, args.k) for d in args.drafts]
    print(f"{'draft':<15} {'accept':>7} {'tok/fwd':>8} {'target tok/s':>13} {'spec tok/s':>11} "
          f"{'speed-up':>9}")
    for r in rows:
        print(f"{r['draft']:<15} {r['acceptance']:>7.3f} {r['tokens_per_target_forward']:>8.2f} "
              f"{r['target_tokens_per_s']:>13.1f} {r['speculative_tokens_per_s']:>11.1f} "
              f"{r['speedup']:>8.2f}x")
    print(f"outputs identical to the target's greedy output: yes (asserted); "
          f"{time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.1f}")
    best = max(rows, key=lambda r: r["speedup"])
    print(f"speed-up of speculative decoding ({best['draft']}) vs the target alone: {best['speedup']:.2f}x")


if __name__ == "__main__":
    run()
