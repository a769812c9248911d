"""Claim (issue 15): choosing what a student keeps by measured importance beats evenly spaced layers.

Students of SmolLM2-135M at (about) the same parameter count, each initialised from the teacher:

* ``even``: ``--keep`` evenly spaced layers, first and last kept (today's quickstart choice);
* ``block_influence``: the ``--keep`` layers of highest ShortGPT block influence (Men et al. 2024);
* ``angular``: all but the contiguous block whose ends are closest in angle (Gromov et al. 2024);
* ``wide``: more layers (``--wide-keep``, evenly spaced) with a narrower MLP chosen by Minitron's
  activation importance (Muralidharan et al. 2024) so the parameter count matches ``even``.

Importance is measured on ``--calib-tokens`` tokens of the train split; every student is then
measured by validation perplexity right after initialisation, and — with ``--steps`` > 0 —
after the same offline distillation (the same cached teacher windows, one shared cache, same
steps, batch and schedule as the quickstart's ``distill`` stage). The validation tokens are the
quickstart's (``runs/quickstart/tokenize``; build them with ``llm4all run quickstart --only
curate tokenize``). The last line is the best importance-chosen student's perplexity over the
evenly spaced one's.

    .venv/bin/python benchmarks/student_init.py [--steps 160] [--keep 12] [--wide-keep 18]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def mlp_width_for(teacher_cfg, keep_even: int, keep_wide: int) -> int:
    """MLP channels that give ``keep_wide`` layers the parameters of ``keep_even`` full layers."""
    d, inter = teacher_cfg.hidden_size, teacher_cfg.intermediate_size
    heads, kv = teacher_cfg.num_attention_heads, teacher_cfg.num_key_value_heads
    hd = d // heads
    attn = d * hd * (2 * heads + 2 * kv)  # q, o: heads·hd·d; k, v: kv·hd·d
    layer = attn + 3 * d * inter
    budget = keep_even * layer - keep_wide * attn
    return int(budget // (keep_wide * 3 * d))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, default=ROOT / "runs" / "quickstart" / "tokenize")
    parser.add_argument("--work", type=Path, default=Path("/tmp/llm4all-student-init"))
    parser.add_argument("--keep", type=int, default=12)
    parser.add_argument("--wide-keep", type=int, nargs="+", default=[18])
    parser.add_argument("--calib-tokens", type=int, default=16384)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from llm4all.data.shards import TokenShards, calibration_windows
    from llm4all.distill.args import KDConfig
    from llm4all.distill.run import distill_student
    from llm4all.distill.step import Teacher
    from llm4all.evaluate.perplexity import perplexity
    from llm4all.models.build import StudentInit, student_of
    from llm4all.models.load import load
    from llm4all.train.args import TrainingConfig

    shards = TokenShards(args.shards)
    ids = calibration_windows(args.shards, args.calib_tokens, 128, 0)
    tokens = shards.tokens("validation", args.eval_tokens)
    teacher, _ = load("smollm2-135m")
    wide_mlp = {k: mlp_width_for(teacher.config, args.keep, k) for k in args.wide_keep}
    del teacher
    students = {
        "even": StudentInit(init_keep=args.keep),
        "block_influence": StudentInit(init_keep=args.keep, init_select="block_influence"),
        "angular": StudentInit(init_keep=args.keep, init_select="angular"),
        "even+activations": StudentInit(init_keep=args.keep, init_width="activations"),
    }
    for k, mlp in wide_mlp.items():  # more layers, narrower MLPs: the same parameters as `even`
        students[f"wide{k}"] = StudentInit(init_keep=k, init_intermediate_size=mlp, init_width="activations")
        students[f"wide{k}+bi"] = StudentInit(init_keep=k, init_select="block_influence",
                                              init_intermediate_size=mlp, init_width="activations")
        students[f"wide{k}+bi+weights"] = StudentInit(init_keep=k, init_select="block_influence",
                                                      init_intermediate_size=mlp)
    kd = KDConfig(cache=args.work / "teacher_cache", top_k=128, max_windows=640, alpha=0.5,
                  teacher_dtype="float32")
    cfg = TrainingConfig(seq_len=128, micro_batch=4, steps=max(args.steps, 1), lr=1e-3, warmup=10,
                         eval_tokens=args.eval_tokens)
    rows = []
    print(f"load average {os.getloadavg()[0]:.1f}; threads {args.threads}; "
          f"MLP of the wide students {wide_mlp}")
    for name, init in students.items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        net = student_of("smollm2-135m", init, ids)
        layers = net.teacher_layers
        row = {"student": name, "params": params(net), "init": init.describe(),
               "ppl_init": perplexity(net, tokens, context=128, stride=128, batch_size=8)["ppl"]}
        if args.steps:
            net, metrics = distill_student(net, Teacher("smollm2-135m", "float32"), shards,
                                           args.work / name, kd, cfg, arguments={"student": name})
            row["ppl_distilled"] = metrics["val_ppl"]
        row["seconds"] = round(time.perf_counter() - start, 1)
        row["layers"] = layers
        rows.append(row)
        print(json.dumps(row), flush=True)
    key = "ppl_distilled" if args.steps else "ppl_init"
    print(f"\n{'student':<22}{'params':>12}{'ppl init':>12}{'ppl distilled':>15}")
    for r in rows:
        print(f"{r['student']:<22}{r['params'] / 1e6:>11.1f}M{r['ppl_init']:>12.1f}"
              f"{r.get('ppl_distilled', float('nan')):>15.1f}")
    base = next((r for r in rows if r["student"] == "even"), None)
    others = [r for r in rows if r["student"] != "even"]
    if base and others:
        best = min(others, key=lambda r: r[key])
        print(f"best importance-chosen ({best['student']}) / even {key}: {best[key] / base[key]:.3f}")


if __name__ == "__main__":
    main()
