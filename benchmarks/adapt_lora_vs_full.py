"""Claim (issue 15): on this CPU, adapting SmolLM2-135M to the demo domain with LoRA beats full
fine-tuning at equal wall time (the quickstart's ``adapt`` stage uses LoRA because of this).

Three runs of ``llm4all adapt`` on the quickstart's token shards (``runs/quickstart/tokenize``;
``llm4all run quickstart --only curate tokenize`` builds them), same windows, batch and schedule:

1. full fine-tuning (every weight, AdamW), ``--steps`` steps: its training seconds T;
2. LoRA (rank 16 on every block Linear, merged afterwards), the same steps: seconds T_lora;
3. LoRA for round(steps · T / T_lora) steps: LoRA given full fine-tuning's time.

Each reports in-domain validation perplexity (8,192 tokens, windows of 128) before and after,
and perplexity on text outside the domain (the licence texts of ``data/outside``) before and
after: the forgetting. One process at a time; take the benchmark lock and record the load.

    flock /tmp/llm4all-bench.lock .venv/bin/python benchmarks/adapt_lora_vs_full.py [--steps 80]

The last line is LoRA's in-domain perplexity at equal time over full fine-tuning's.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, default=ROOT / "runs" / "quickstart" / "tokenize")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "llm4all-adapt-bench")
    parser.add_argument("--steps", type=int, default=80)
    args = parser.parse_args()

    from llm4all.data.tokenize import main as tokenize
    from llm4all.distill.adapt import main as adapt

    outside = args.work / "outside"
    if not (outside / "index.json").exists():
        tokenize([ROOT / "data" / "outside"], out=outside, tokenizer="smollm2-135m", val_fraction=0.5,
                 workers=1)
    common = {"seq_len": 128, "micro_batch": 4, "warmup": 8, "eval_tokens": 8192, "forgetting": outside}
    runs = {}

    def run(name: str, **kw) -> dict:
        print(f"-- {name} (load average {os.getloadavg()[0]:.2f})", flush=True)
        r = adapt(args.shards, out=args.work / name, model="smollm2-135m", **common, **kw)
        before, after = r["before"], r["after"]
        runs[name] = {"steps": r["step"], "seconds": r["seconds"], "tokens_per_s": r["avg_tokens_per_s"],
                      "ppl_before": before["val_ppl"], "ppl_after": after["val_ppl"],
                      "outside_before": before["outside_ppl"], "outside_after": after["outside_ppl"],
                      "load_average": os.getloadavg()[0]}
        print(json.dumps({name: runs[name]}), flush=True)
        return runs[name]

    full = run("full", method="full", steps=args.steps, lr=5e-5)
    lora = run("lora", method="lora", lora_rank=16, lora_alpha=32.0, steps=args.steps, lr=5e-4)
    equal = max(args.steps, round(args.steps * full["seconds"] / lora["seconds"]))
    lora_eq = run("lora_equal_time", method="lora", lora_rank=16, lora_alpha=32.0, steps=equal, lr=5e-4)
    print(f"\n{'run':<18}{'steps':>7}{'seconds':>9}{'tok/s':>8}{'ppl in domain':>16}{'outside':>16}")
    for name, r in runs.items():
        print(f"{name:<18}{r['steps']:>7}{r['seconds']:>9.0f}{r['tokens_per_s']:>8.0f}"
              f"{r['ppl_before']:>8.2f}->{r['ppl_after']:<6.2f}"
              f"{r['outside_before']:>8.2f}->{r['outside_after']:.2f}")
    print(f"LoRA at full fine-tuning's time / full fine-tuning, in-domain perplexity: "
          f"{lora_eq['ppl_after'] / full['ppl_after']:.3f}")


if __name__ == "__main__":
    main()
