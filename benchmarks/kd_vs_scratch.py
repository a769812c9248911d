"""Claim: with the same token budget and initialisation, distilling SmolLM2-135M into a
half-depth student beats cross-entropy training (target: distilled validation perplexity ≤
0.85× CE-only from the same init) and offline KD costs little more per student token than
plain cross-entropy (target ≤ 1.3×), far less than online KD.

Runs, all on the same demo-corpus shards, windows (seed), steps, batch and learning rate:

1. ``offline``  — KD from the cached top-k teacher log-probabilities (alpha 0.9), student
   initialised from the teacher (every 2nd layer);
2. ``online``   — the same KD with the teacher in the loop;
3. ``ce``       — cross-entropy only, same initialisation (``llm4all train --init-from``);
4. ``scratch``  — cross-entropy only, random initialisation of the same shape.

    .venv/bin/python benchmarks/kd_vs_scratch.py [--steps 60] [--seq-len 128] [--micro-batch 8]

Prints validation perplexity and median tokens/s per run, then the two ratios; the last line
is distilled / CE-only perplexity.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "llm4all", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"llm4all {' '.join(args[:3])} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def summary(out: Path) -> tuple[float, float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    result = json.loads((out / "result.json").read_text())
    return result["val_ppl"], statistics.median(r["tokens_per_s"] for r in rows[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--docs", type=int, default=1500)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kd-bench-"))
    shards = work / "shards"
    run(["tokenize", str(ROOT / "data/demo/en"), "--out", str(shards), "--max-docs", str(args.docs),
         "--val-fraction", "0.05"])
    common = ["--steps", str(args.steps), "--seq-len", str(args.seq_len), "--micro-batch",
              str(args.micro_batch), "--lr", str(args.lr), "--warmup", "5", "--eval-tokens",
              str(args.eval_tokens), "--precision", "bf16"]
    windows = str(args.steps * args.micro_batch)
    seconds = {}
    seconds["offline"] = run(["distill", str(shards), "--out", str(work / "offline"), "--mode", "offline",
                              "--max-windows", windows, *common])
    seconds["online"] = run(["distill", str(shards), "--out", str(work / "online"), "--mode", "online",
                             *common])
    seconds["ce"] = run(["train", str(shards), "--out", str(work / "ce"), "--init-from", "smollm2-135m",
                         "--init-every", "2", *common])
    config = json.loads((work / "offline" / "model" / "config.json").read_text())
    seconds["scratch"] = run(["train", str(shards), "--out", str(work / "scratch"), "--model",
                              str(_random_init(work, config)), *common])
    results = {name: summary(work / name) for name in ("offline", "online", "ce", "scratch")}
    cache = json.loads((work / "offline" / "teacher_cache" / "index.json").read_text())
    print(f"{'run':10s} {'val ppl':>10s} {'tok/s':>8s} {'wall s':>8s}")
    for name, (ppl, tps) in results.items():
        print(f"{name:10s} {ppl:10.2f} {tps:8.0f} {seconds[name]:8.0f}")
    print(f"teacher cache: {cache['n_windows']} windows, {cache['bytes_per_token']:.0f} bytes/token, "
          f"{cache.get('seconds', float('nan')):.0f} s")
    offline_cost = results["ce"][1] / results["offline"][1]
    online_cost = results["ce"][1] / results["online"][1]
    print(f"per-token cost: offline KD / CE = {offline_cost:.2f}; online KD / CE = {online_cost:.2f}")
    ratio = results["offline"][0] / results["ce"][0]
    print(f"distilled / CE-only perplexity (same init, same tokens): {ratio:.3f}")


def _random_init(work: Path, config: dict) -> Path:
    """A randomly initialised model of the student's shape, with the teacher's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm4all.models.load import load_tokenizer

    torch.manual_seed(0)
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "rms_norm_eps",
            "tie_word_embeddings", "rope_parameters", "bos_token_id", "eos_token_id")
    path = work / "scratch-init"
    LlamaForCausalLM(LlamaConfig(**{k: config[k] for k in keys if k in config})).save_pretrained(path)
    load_tokenizer("smollm2-135m").save_pretrained(path)
    return path


if __name__ == "__main__":
    main()
