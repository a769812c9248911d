"""Claim (issue 15): per training token, adapting the teacher beats distilling a student, which
beats training from scratch; int4 costs the adapted teacher a few percent — one chart.

On the quickstart's token shards (``runs/quickstart/tokenize``), each run evaluated every
``--eval-every`` steps on the same 8,192 validation tokens (windows of 128):

* ``adapt``: SmolLM2-135M (the bundled Q4_1 GGUF de-quantised), LoRA rank 16, lr 5e-4;
* ``distil``: a 72.1M student (18 teacher layers chosen by block influence, 896 MLP channels by
  activation importance: the quickstart's shape) of the original teacher, offline top-128 KD,
  lr 1e-3;
* ``scratch``: the same student shape from a random init (``llm4all train``), lr 3e-3;

then the final adapted model and student, GPTQ int4 (act-order, groups of 32 with zero points,
int8 embeddings, 32,768 calibration tokens: the quickstart's layout), evaluated once: their
points sit at their source's token count. The chart (``--out``, SVG) is perplexity against
training tokens, log-log; the table lists every point.

    .venv/bin/python benchmarks/quality_budget.py [--steps 160] [--eval-every 20] [--out quality_budget.svg]

The last line: final perplexities of adapt, distil and scratch over the teacher's, at equal tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def curve(run: Path) -> list[tuple[int, float]]:
    """(tokens, validation perplexity) of every evaluation logged in ``run``/metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["tokens"], r["val_ppl"]) for r in rows if "val_ppl" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, default=ROOT / "runs" / "quickstart" / "tokenize")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "llm4all-quality-budget")
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("quality_budget.svg"))
    args = parser.parse_args()

    from llm4all.compress.command import main as compress
    from llm4all.distill.adapt import main as adapt
    from llm4all.distill.command import main as distill
    from llm4all.evaluate.perplexity import main as perplexity
    from llm4all.train.command import main as train

    loop = {"steps": args.steps, "seq_len": 128, "micro_batch": 4, "warmup": 10, "eval_tokens": 8192,
            "eval_every": args.eval_every}
    student = {"init_keep": 18, "init_select": "block_influence", "init_intermediate_size": 896,
               "init_width": "activations"}
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    teacher = perplexity("smollm2-135m", args.shards, context=128, stride=128, max_tokens=8192)["ppl"]
    adapt(args.shards, out=args.work / "adapt", model="smollm2-135m", method="lora", lora_rank=16,
          lora_alpha=32.0, lr=5e-4, **loop)
    distill(args.shards, out=args.work / "distil", teacher="smollm2-135m", top_k=128, max_windows=640,
            teacher_dtype="float32", lr=1e-3, **student, **loop)
    train(args.shards, out=args.work / "scratch", model=str(random_like(args.work / "distil" / "model",
                                                                      args.work / "scratch-init")),
          lr=3e-3, **loop)
    curves = {name: curve(args.work / name) for name in ("adapt", "distil", "scratch")}
    method = {"name": "gptq", "bits": 4, "group_size": 32, "symmetric": False, "act_order": True,
              "gguf_exact": True}
    points = {}
    for name, model in (("adapt int4", "adapt/model"), ("distil int4", "distil/model")):
        out = args.work / name.replace(" ", "-")
        compress(str(args.work / model), out=out, method=method, embeddings="int8", calib=args.shards,
                 calib_tokens=32768, seq_len=128)
        ppl = perplexity(str(out), args.shards, context=128, stride=128, max_tokens=8192)["ppl"]
        points[name] = (curves[name.split()[0]][-1][0], ppl)
    chart(curves, points, teacher, args.out)
    print(f"\n{'run':<14}{'tokens':>10}{'perplexity':>12}")
    for name, c in curves.items():
        for tokens, ppl in c:
            print(f"{name:<14}{tokens:>10,}{ppl:>12.2f}")
    for name, (tokens, ppl) in points.items():
        print(f"{name:<14}{tokens:>10,}{ppl:>12.2f}")
    print(f"teacher {teacher:.2f}; at {curves['adapt'][-1][0]:,} tokens: " + ", ".join(
        f"{name} {c[-1][1] / teacher:.2f}x" for name, c in curves.items()))


def random_like(model_dir: Path, out: Path) -> Path:
    """The architecture of ``model_dir`` with freshly initialised weights, saved with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)).save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def chart(curves: dict, points: dict, teacher: float, out: Path) -> None:
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasSVG(fig)
    ax = fig.add_subplot()
    for name, c in curves.items():
        ax.plot([t for t, _ in c], [p for _, p in c], marker="o", label=name)
    for name, (t, p) in points.items():
        ax.scatter([t], [p], marker="s", s=60, label=name, zorder=3)
    ax.axhline(teacher, color="gray", linestyle="--", label="teacher (fp32)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation perplexity (windows of 128)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    print(f"chart -> {out}")


if __name__ == "__main__":
    main()
