"""Predicted against measured peak memory (`llm4all plan memory --measure`) on this machine.

Each row builds a random-init transformers LlamaForCausalLM from the architecture in a fresh
subprocess, runs 2 training steps (AdamW) or 2 prefill passes, and reports the growth of the
process's peak resident set (VmHWM) beside the planner's summed breakdown. Target: every row
within ±15%. Run: `.venv/bin/python benchmarks/plan_memory.py` (~10 min on 2 cores).
"""

from __future__ import annotations

import time

from llm4all.plan.arch import PRESETS, Arch
from llm4all.plan.measure import measure
from llm4all.plan.memory import Setup, breakdown, total

TINY = Arch(512, 8, 8, 2, 1376, 32000, tied_embeddings=True)  # 35M params, GQA 8:2
SMOL = PRESETS["smollm2-135m"]
PURE = dict(master_weights=False)  # plain torch: 16-bit params and optimizer states, no master
ROWS = [
    ("tiny-35m", TINY, Setup(dtype="fp32", batch=1, seq=256)),
    ("tiny-35m", TINY, Setup(dtype="fp32", batch=4, seq=256)),
    ("tiny-35m", TINY, Setup(dtype="fp32", batch=2, seq=1024)),
    ("tiny-35m", TINY, Setup(dtype="bf16", batch=4, seq=512, **PURE)),
    ("tiny-35m", TINY, Setup(dtype="fp32", batch=4, seq=1024, recompute="full")),
    ("tiny-35m", TINY, Setup(dtype="fp32", batch=2, seq=512, attention="math")),
    ("tiny-35m", TINY, Setup(mode="inference", dtype="fp32", batch=8, seq=1024)),
    ("smollm2-135m", SMOL, Setup(dtype="fp32", batch=1, seq=256)),
    ("smollm2-135m", SMOL, Setup(dtype="bf16", batch=2, seq=512, **PURE)),
    ("smollm2-135m", SMOL, Setup(mode="inference", dtype="bf16", batch=4, seq=2048)),
]


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="plan memory: predicted (sum of components) vs measured peak RSS growth")
    for col in ("model", "mode", "dtype", "batch×seq", "recompute/attn", "predicted MiB",
                "measured MiB", "measured/predicted", "tokens/s"):
        table.add_column(col)
    ratios = []
    start = time.perf_counter()
    for name, arch, setup in ROWS:
        predicted = total(breakdown(arch, setup))
        m = measure(arch, setup, steps=2)
        ratio = m["peak_bytes"] / predicted
        ratios.append(ratio)
        table.add_row(name, setup.mode, setup.dtype, f"{setup.batch}×{setup.seq}",
                      f"{setup.recompute}/{setup.attention}", f"{predicted / 2**20:.0f}",
                      f"{m['peak_bytes'] / 2**20:.0f}", f"{ratio:.3f}", f"{m['tokens_per_s']:.0f}")
    Console(width=160).print(table)
    within = sum(abs(r - 1) <= 0.15 for r in ratios)
    print(f"{time.perf_counter() - start:.0f} s; torch {m['torch']}")
    print(f"plan_memory: {within}/{len(ratios)} rows within ±15%; measured/predicted "
          f"min {min(ratios):.3f} max {max(ratios):.3f} mean {sum(ratios) / len(ratios):.3f}")


if __name__ == "__main__":
    main()
