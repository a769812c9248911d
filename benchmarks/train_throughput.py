"""Claim: `llm4all train` trains faster than the Hugging Face Trainer on the same model, data,
batch and precision (target ≥ 1.2× tokens/s), and the planner predicts its peak memory.

Each configuration runs in a fresh subprocess per trainer (peak RSS = the child's
``ru_maxrss``); throughput is the median tokens/s of the steps after the first two (compile /
allocator warm-up). Both trainers see identical windows of the demo corpus shards, the same
model (random init from one seed, SDPA attention), micro-batch, accumulation, AdamW, bf16
autocast with fp32 master weights, and gradient clipping at 1.0.

    .venv/bin/python benchmarks/train_throughput.py [--steps 12] [--sizes small,smollm2]

Each configuration alternates the trainers ``--rounds`` times and keeps each one's best
median (load drift on a shared machine then hits all alike). A third row runs the HF Trainer
with the glibc settings llm4all applies in-process (llm4all/malloc.py), set through the
environment, to show how much of the difference is the allocator. Prints one row per
(size, precision), the planner's prediction (``plan memory --head fused``) beside the
measured peak minus the runtime's own RSS, and last the llm4all / HF Trainer ratio (bf16,
first size).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {  # name -> LlamaConfig kwargs (vocab from the SmolLM2 tokenizer)
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=8, num_attention_heads=4,
                  num_key_value_heads=2),
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3),
}

HF_SCRIPT = r'''
import json, sys, time, numpy as np, torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, TrainerCallback
from llm4all.data.shards import TokenShards
from llm4all.train.sampler import WindowSampler
cfg = json.loads(sys.argv[1])
shards = TokenShards(cfg["data"])
sampler = WindowSampler(shards, cfg["seq_len"], seed=0)
B, A = cfg["micro_batch"], cfg["grad_accum"]
class Windows(torch.utils.data.Dataset):   # the exact windows llm4all's sampler draws
    def __len__(self): return cfg["steps"] * B * A
    def __getitem__(self, i):
        step, j = divmod(i, B * A)
        w = sampler.windows(step, B * A)[j]
        return {"input_ids": w[:-1], "labels": w[1:]}
model = AutoModelForCausalLM.from_pretrained(cfg["model"], attn_implementation="sdpa")
def loss_fn(outputs, labels, num_items_in_batch=None):   # labels are already shifted
    logits = outputs["logits"]
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
times = []
class Clock(TrainerCallback):
    def on_step_begin(self, *a, **k): self.t = time.perf_counter()
    def on_step_end(self, *a, **k): times.append(time.perf_counter() - self.t)
args = TrainingArguments(output_dir=cfg["out"], per_device_train_batch_size=B, gradient_accumulation_steps=A,
    max_steps=cfg["steps"], learning_rate=1e-3, weight_decay=0.1, adam_beta2=0.95, max_grad_norm=1.0,
    lr_scheduler_type="cosine", warmup_steps=2, bf16=cfg["precision"] == "bf16", use_cpu=True,
    logging_steps=10**9, save_strategy="no", report_to=[], dataloader_num_workers=0, seed=0,
    disable_tqdm=True)
trainer = Trainer(model=model, args=args, train_dataset=Windows(), compute_loss_func=loss_fn,
                  callbacks=[Clock()])
trainer.train()
tokens = B * A * cfg["seq_len"]
print(json.dumps({"tokens_per_s": tokens / statistics.median(times[2:])}))
'''.replace("import json, sys, time", "import json, statistics, sys, time")


def run_child(cmd: list[str], env: dict | None = None) -> tuple[str, float]:
    """Run a command under GNU time; return (stdout, peak RSS of the child in GiB)."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd[:6])} ...\n{proc.stderr[-3000:]}")
    return proc.stdout, int(proc.stderr.strip().splitlines()[-1]) / 2**20  # KiB -> GiB


# glibc settings equivalent to what llm4all.malloc applies in-process (for the HF peer row)
KEEP_FREED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
BASELINE = ("import resource, torch, transformers, llm4all.train.command; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--sizes", default="small,smollm2")
    parser.add_argument("--precisions", default="bf16,fp32")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the trainers (best kept)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    shards = Path("/tmp/llm4all-bench-shards")
    if not (shards / "index.json").exists():
        subprocess.run([sys.executable, "-m", "llm4all", "tokenize", str(ROOT / "data/demo"),
                        "--out", str(shards), "--max-docs", "1500"], check=True, capture_output=True)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm4all.models.load import load_tokenizer
    from llm4all.plan.arch import from_hf_config
    from llm4all.plan.memory import Setup, breakdown, total

    base_rss = int(subprocess.run([sys.executable, "-c", BASELINE], capture_output=True, text=True,
                                  check=True).stdout) / 2**20  # KiB -> GiB: interpreter + libraries
    tokenizer_path = json.loads((shards / "index.json").read_text())["tokenizer_path"]
    vocab = len(load_tokenizer(tokenizer_path))
    rows = []
    for size in args.sizes.split(","):
        torch.manual_seed(0)
        model_dir = work / f"model-{size}"
        config = LlamaConfig(vocab_size=vocab, max_position_embeddings=2048, tie_word_embeddings=True,
                             **SIZES[size])
        LlamaForCausalLM(config).save_pretrained(model_dir)
        load_tokenizer(tokenizer_path).save_pretrained(model_dir)
        n_params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
        arch = from_hf_config(config.to_dict())
        for precision in args.precisions.split(","):
            common = {"steps": args.steps, "seq_len": args.seq_len, "micro_batch": args.micro_batch,
                      "grad_accum": args.grad_accum, "precision": precision}
            hf_cfg = {**common, "data": str(shards), "model": str(model_dir), "out": str(work / "hf")}
            best: dict[str, tuple[float, float]] = {}
            for r in range(args.rounds):  # alternate the trainers so load drift hits all alike
                out = work / f"llm4all-{size}-{precision}-{r}"
                cmd = [sys.executable, "-m", "llm4all", "train", str(shards), "--out", str(out), "--model",
                       str(model_dir), "--steps", str(args.steps), "--seq-len", str(args.seq_len),
                       "--micro-batch", str(args.micro_batch), "--grad-accum", str(args.grad_accum),
                       "--precision", precision, "--warmup", "2", "--runs-table", str(work / "runs.jsonl")]
                _, peak = run_child(cmd)
                steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
                runs = {"llm4all": (statistics.median(s["tokens_per_s"] for s in steps[2:]), peak)}
                for name, env in (("HF Trainer", None), ("HF Trainer + malloc", KEEP_FREED)):
                    stdout, peak = run_child([sys.executable, "-c", HF_SCRIPT, json.dumps(hf_cfg)], env)
                    runs[name] = (json.loads(stdout.strip().splitlines()[-1])["tokens_per_s"], peak)
                for name, (tps, peak) in runs.items():
                    if tps > best.get(name, (0.0, 0.0))[0]:
                        best[name] = (tps, peak)
            setup = Setup(mode="train", batch=args.micro_batch, seq=args.seq_len, dtype=precision,
                          head="fused")
            planned = total(breakdown(arch, setup)) / 2**30
            ours, hf, hf_malloc = best["llm4all"], best["HF Trainer"], best["HF Trainer + malloc"]
            rows.append((size, n_params, precision, ours, hf, hf_malloc, planned))
            print(f"{size:8s} {n_params / 1e6:6.1f}M {precision:5s} llm4all {ours[0]:7.0f} tok/s "
                  f"(peak {ours[1]:.2f} GiB, planned {planned:.2f} + {base_rss:.2f} runtime)  "
                  f"HF Trainer {hf[0]:7.0f} tok/s (peak {hf[1]:.2f})  HF + malloc {hf_malloc[0]:7.0f} "
                  f"(peak {hf_malloc[1]:.2f})  ratio {ours[0] / hf[0]:.2f}", flush=True)
    print(f"runtime baseline (python + torch + transformers + llm4all imported): {base_rss:.2f} GiB")
    fp32 = {r[0]: r for r in rows if r[2] == "fp32"}
    for r in rows:
        if r[2] == "bf16" and r[0] in fp32:
            print(f"{r[0]}: bf16 / fp32 tokens/s (llm4all) = {r[3][0] / fp32[r[0]][3][0]:.2f}")
    for r in rows:
        print(f"{r[0]} {r[2]}: llm4all peak - runtime = {r[3][1] - base_rss:.2f} GiB, planner "
              f"{r[6]:.2f} GiB (measured/planned {(r[3][1] - base_rss) / r[6]:.2f})")
    first = next((r for r in rows if r[2] == "bf16"), rows[0])
    print(f"llm4all / HF Trainer tokens/s ({first[0]}, {first[2]}): {first[3][0] / first[4][0]:.2f}")


if __name__ == "__main__":
    main()
