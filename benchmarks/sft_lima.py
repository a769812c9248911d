"""Claim (issue 18 item 5): supervised fine-tuning on the assistant's tokens lowers the perplexity
of held-out answers, and a LIMA-style selected subset beats a random subset of the same size.

Data: the shipped instruction set (data/sft/docs-qa.jsonl.zst: 2,746 conversations, every answer
verbatim documentation). Held out: its validation split at 10% (by a hash of the conversation id,
as `llm4all tokenize` splits), which no run trains on. Model: the embedded SmolLM2-135M-Instruct
(its weights are 4-bit-rounded: it ships as a Q4_1 GGUF). Every run trains `--steps` optimizer
steps of `--micro-batch` packed windows of `--seq-len` tokens (the same token budget), bf16
autocast, and is scored by the perplexity of the held-out answers (assistant tokens only,
`eval perplexity` on conversation shards; the run's own final val_ppl is that number):

- base: the model before any tuning;
- full SFT and LoRA SFT (rank 16) on the whole training pool;
- full SFT on K conversations picked LIMA-style from the pool (`curate --format chat`: exact and
  near duplicates out, answers of at least 20 words, then QDIT greedy on answer length and MiniLM
  diversity), and on K picked at random (seeded) from the same pool: the LIMA claim at our scale.

Prints one row per run and last the ratio of the random subset's held-out perplexity to the
LIMA subset's (> 1: the selection helps).

    flock /tmp/llm4all-bench.lock .venv/bin/python benchmarks/sft_lima.py [--work DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "sft" / "docs-qa.jsonl.zst"
MODEL = "smollm2-135m"
VAL = 0.1


def llm4all(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "llm4all", "-q", *args], check=True)
    return time.perf_counter() - start


def pools(work: Path) -> tuple[list[dict], list[dict]]:
    """(training pool, held-out conversations) of the shipped set, split as tokenize splits."""
    from llm4all.data.tokenize import split_of

    rows = [json.loads(x) for x in _read(DATA).splitlines()]
    train = [r for r in rows if split_of(r["id"], VAL) == "train"]
    held = [r for r in rows if split_of(r["id"], VAL) == "validation"]
    return train, held


def _read(path: Path) -> str:
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(path.read_bytes()).read().decode("utf-8")


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def shards(work: Path, name: str, rows: list[dict], held: list[dict]) -> Path:
    """Token shards whose train split is ``rows`` and whose validation split is ``held``."""
    out = work / f"tok-{name}"
    if not (out / "index.json").exists():
        llm4all("tokenize", str(_write(work / f"{name}.jsonl", rows + held)), "--out", str(out),
                "--tokenizer", MODEL, "--format", "chat", "--val-fraction", str(VAL), "--workers", "2")
    return out


def lima_subset(work: Path, train: list[dict], k: int) -> list[dict]:
    out = work / f"lima-{k}"
    if not (out / "kept.jsonl.zst").exists():
        steps = ["{dedup: exact}", "{dedup: minhash, threshold: 0.8}",
                 "{filter: bounds, bounds: {response_words: [20, null]}}",
                 f"{{select: lima, n: {k}, quality: response_words, alpha: 0.5}}"]
        llm4all("curate", str(_write(work / "pool.jsonl", train)), "--out", str(out), "--format", "chat",
                "--signals", "zlib_ratio", "ttr", "--steps", *steps, "--workers", "2")
    kept = {json.loads(x)["id"] for x in _read(out / "kept.jsonl.zst").splitlines()}
    return [r for r in train if r["id"] in kept]


def train(work: Path, name: str, data: Path, args, *extra: str) -> dict:
    out = work / f"run-{name}"
    if not (out / "result.json").exists():
        llm4all("train", str(data), "--out", str(out), "--model", MODEL, "--steps", str(args.steps),
                "--seq-len", str(args.seq_len), "--micro-batch", str(args.micro_batch),
                "--warmup", str(max(1, args.steps // 10)), *extra)
    result = json.loads((out / "result.json").read_text())
    return {"ppl": result["val_ppl"], "seconds": result["seconds_total"], "tokens": result["tokens"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/llm4all-sft-bench"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--subset", type=int, default=500)
    parser.add_argument("--lr-full", type=float, default=5e-5)
    parser.add_argument("--lr-lora", type=float, default=5e-4)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    import os

    print(f"load average before: {os.getloadavg()[0]:.2f}")
    train_pool, held = pools(args.work)
    full = shards(args.work, "all", train_pool, held)
    lima = shards(args.work, "lima", lima_subset(args.work, train_pool, args.subset), held)
    rand = shards(args.work, "random", random.Random(0).sample(train_pool, args.subset), held)
    base_out = args.work / "eval-base"
    if not (base_out / "perplexity.json").exists():
        llm4all("eval", "perplexity", MODEL, str(full), "--context", str(args.seq_len),
                "--out", str(base_out))
    base = json.loads((base_out / "perplexity.json").read_text())
    rows = [("base (no tuning)", "-", {"ppl": base["ppl"], "seconds": 0.0, "tokens": 0})]
    pool = f"{len(train_pool):,}"
    rows.append(("full SFT", pool, train(args.work, "full", full, args, "--lr", str(args.lr_full))))
    rows.append(("LoRA SFT (r=16)", pool,
                 train(args.work, "lora", full, args, "--lr", str(args.lr_lora), "--lora-rank", "16",
                       "--lora-alpha", "32")))
    rows.append((f"full SFT, LIMA-selected {args.subset}", str(args.subset),
                 train(args.work, "lima", lima, args, "--lr", str(args.lr_full))))
    rows.append((f"full SFT, random {args.subset}", str(args.subset),
                 train(args.work, "random", rand, args, "--lr", str(args.lr_full))))
    print(f"held-out: {len(held)} conversations, {base['tokens']:,} assistant tokens; "
          f"{args.steps} steps x {args.micro_batch} x {args.seq_len} tokens per run")
    for name, pool, r in rows:
        print(f"{name:<34} pool {pool:>6}  held-out answer ppl {r['ppl']:8.3f}  "
              f"{r['tokens']:>9,} tokens  {r['seconds']:7.1f} s")
    print(f"ratio (random / LIMA held-out ppl): {rows[4][2]['ppl'] / rows[3][2]['ppl']:.3f}")


if __name__ == "__main__":
    main()
