"""Claim (issue 19 item 2): a sliding window bounds the KV cache — its memory stays flat as
generation grows while the full-attention cache grows linearly — and what a window costs a
model trained with full attention, with and without attention sinks.

Peer: full attention (the model as trained), same model, same text, same run.

- Perplexity: SmolLM2-135M-Instruct (trained with full attention; fp32 weights converted from its
  4-bit-rounded GGUF) on `--tokens` tokens of held-out KJV chapters in windows of 1,024
  (`evaluate.perplexity`, stride 1,024), attending through sliding windows of 64 … 512 tokens
  with no sinks and with 4 (StreamingLLM's count), against full attention.
- Memory: greedy decoding of 2,048 tokens one forward at a time through `serve.backends.TorchLM`
  (the cache `generate` and `chat` use) with full attention, a 256-token window, and a
  256-token window + 4 sinks; the bytes the cache holds (from its tensors) and the process RSS
  after 256, 1,024 and 2,048 tokens.

- Trained (`--train-steps N`): SmolLM2 trained N steps (4 × 512 tokens, bf16, lr 5e-5) on the
  demo corpus with full attention and with `train --sliding-window 64 --attention-sinks 4`;
  held-out perplexity (16,384 tokens of the shards' validation split) of the shipped and both
  trained models through full attention and through that window: what training with the window
  recovers beyond what the domain alone gives.

Prints the tables and last the ratio of the full cache's bytes to the 256-window cache's at
2,048 tokens (the memory part; `--no-memory` skips it).

    flock /tmp/llm4all-bench.lock .venv/bin/python benchmarks/sliding_window.py [--tokens 8192]
        [--train-steps 40] [--no-perplexity] [--no-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MODEL = "smollm2-135m"
ROOT = Path(__file__).resolve().parents[1]
WINDOWS = (512, 256, 128, 64)
MARKS = (256, 1024, 2048)


def perplexities(tokens: int) -> list[tuple[str, float]]:
    import numpy as np

    from llm4all.evaluate.kvcache import long_text
    from llm4all.evaluate.perplexity import perplexity
    from llm4all.models.load import load
    from llm4all.models.window import with_window

    net, tok = load(MODEL)
    ids = np.asarray(long_text(tok, None, "text", tokens)[0])
    rows = [("full attention", perplexity(net, ids, context=1024, stride=1024)["ppl"])]
    for window in WINDOWS:
        for sinks in (0, 4):
            windowed = with_window(load(MODEL)[0], window, sinks)
            rows.append((f"window {window}" + (f" + {sinks} sinks" if sinks else ""),
                         perplexity(windowed, ids, context=1024, stride=1024)["ppl"]))
    return rows


def memory(window: int, sinks: int) -> list[tuple[int, int, float]]:
    """(tokens, cache bytes, RSS MiB) at each mark while decoding greedily."""
    from llm4all.models.kvcache import cache_bytes
    from llm4all.models.load import load
    from llm4all.models.window import with_window
    from llm4all.plan.measure import proc_status
    from llm4all.serve.backends import TorchLM

    net, tok = load(MODEL)
    net = with_window(net, window, sinks) if window else net
    lm = TorchLM(net, tok)
    logits, out, n = lm.forward(lm.encode("In the beginning")), [], 0
    while n < MARKS[-1]:
        logits = lm.forward([int(logits.argmax())])
        n += 1
        if n in MARKS:
            out.append((n, cache_bytes(lm.cache), proc_status("VmRSS") / 2**20))
    return out


def trained(work: Path, steps: int) -> dict:
    """Held-out perplexity through full attention and through a 64-token window + 4 sinks, of the
    model as shipped and after `steps` steps of training with full attention or with that window."""
    from llm4all.evaluate.perplexity import main as perplexity

    shards = work / "shards"
    if not (shards / "index.json").exists():
        subprocess.run([sys.executable, "-m", "llm4all", "-q", "tokenize", str(ROOT / "data" / "demo"),
                        "--out", str(shards), "--tokenizer", MODEL], check=True)
    window = ["--sliding-window", "64", "--attention-sinks", "4"]
    models = {"as shipped": MODEL}
    for name, flags in (("trained, full attention", []), ("trained, window 64 + 4 sinks", window)):
        out = work / name.replace(" ", "-").replace(",", "").replace("+", "")
        subprocess.run([sys.executable, "-m", "llm4all", "-q", "train", str(shards), "--model", MODEL,
                        "--out", str(out), "--steps", str(steps), "--seq-len", "512", "--micro-batch", "4",
                        "--lr", "5e-5", "--warmup", "4", "--precision", "bf16", *flags], check=True)
        models[name] = str(out / "model")
    rows = {}
    for name, model in models.items():
        score = lambda w, k, m=model: perplexity(m, shards, context=512, stride=512, max_tokens=16384,  # noqa: E731
                                                 sliding_window=w, attention_sinks=k)["ppl"]
        # a model trained with the window carries it: scoring it "full" means a window wider than 512
        rows[name] = {"full": score(1024, 0) if "window" in name else score(0, 0), "window": score(64, 4)}
    return rows


def in_child(window: int, sinks: int) -> list:
    """``memory`` in a fresh process, so one configuration's RSS is not another's."""
    proc = subprocess.run([sys.executable, __file__, "--memory", str(window), str(sinks)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--memory", type=int, nargs=2, metavar=("WINDOW", "SINKS"),
                        help="(internal) decode in this process and print the marks as JSON")
    parser.add_argument("--no-perplexity", action="store_true", help="skip the imposed-window perplexities")
    parser.add_argument("--no-memory", action="store_true", help="skip the decoding-memory part")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="also train SmolLM2 this many steps with full attention and with a window")
    parser.add_argument("--work", type=Path, default=Path("/tmp/llm4all-bench-swa"))
    args = parser.parse_args()
    if args.memory:
        print(json.dumps(memory(*args.memory)))
        return
    load_before, start = os.getloadavg(), time.perf_counter()
    if not args.no_perplexity:
        rows = perplexities(args.tokens)
        full = rows[0][1]
        print(f"\nperplexity of SmolLM2-135M on {args.tokens} held-out KJV tokens (windows of 1,024)")
        for name, ppl in rows:
            print(f"  {name:<24} {ppl:>9.3f}  {100 * (ppl / full - 1):+8.1f}%")
    if args.train_steps:
        rows = trained(args.work, args.train_steps)
        print(f"\nheld-out demo-corpus perplexity (16,384 tokens, windows of 512), {args.train_steps} steps")
        print(f"  {'model':<30} {'full attention':>15} {'window 64 + 4 sinks':>20}")
        for name, r in rows.items():
            print(f"  {name:<30} {r['full']:>15.3f} {r['window']:>20.3f}")
    if args.no_memory:
        return
    caches = {name: in_child(w, k) for name, w, k in (("full attention", 0, 0), ("window 256", 256, 0),
                                                    ("window 256 + 4 sinks", 256, 4))}
    print("\nKV cache while decoding (bytes the cache holds / process RSS)")
    print("  " + f"{'':<22}" + "".join(f"{f'{m:,} tokens':>24}" for m in MARKS))
    for name, marks in caches.items():
        cells = [f"{b / 2**20:,.1f} MiB / {rss:,.0f} MiB" for _, b, rss in marks]
        print(f"  {name:<22}" + "".join(f"{c:>24}" for c in cells))
    print(f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"{time.perf_counter() - start:.0f} s")
    print(f"full / window-256 cache bytes at {MARKS[-1]:,} tokens: "
          f"{caches['full attention'][-1][1] / caches['window 256'][-1][1]:.2f}")


if __name__ == "__main__":
    main()
