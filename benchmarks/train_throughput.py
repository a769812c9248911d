"""Claim: `llm4all train` trains faster than the Hugging Face Trainer on the same model, data,
batch and precision (target ≥ 1.2× tokens/s), and the planner predicts its peak memory.

Each configuration runs in a fresh subprocess per trainer (peak RSS = the child's
``ru_maxrss``); throughput is the median tokens/s of the steps after the first two (compile /
allocator warm-up). Both trainers see identical windows of the demo corpus shards, the same
model (random init from one seed, SDPA attention), micro-batch, accumulation, AdamW, bf16
autocast with fp32 master weights, and gradient clipping at 1.0.

    .venv/bin/python benchmarks/train_throughput.py [--steps 12] [--sizes small,smollm2]

Prints one row per (size, precision, trainer), then the planner's prediction beside the
measured peak, and last the llm4all / HF Trainer throughput ratio (bf16, smallest size).
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


def run_child(cmd: list[str]) -> tuple[str, float]:
    """Run a command under GNU time; return (stdout, peak RSS of the child in GiB)."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd[:6])} ...\n{proc.stderr[-3000:]}")
    return proc.stdout, int(proc.stderr.strip().splitlines()[-1]) / 2**20  # KiB -> GiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--sizes", default="small,smollm2")
    parser.add_argument("--precisions", default="bf16,fp32")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    shards = Path("/tmp/llm4all-bench-shards")
    if not (shards / "index.json").exists():
        subprocess.run([sys.executable, "-m", "llm4all", "tokenize", str(ROOT / "data/demo"),
                        "--out", str(shards), "--max-docs", "1500"], check=True, capture_output=True)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm4all.models.load import load_tokenizer

    vocab = len(load_tokenizer(json.loads((shards / "index.json").read_text())["tokenizer_path"]))
    rows = []
    for size in args.sizes.split(","):
        torch.manual_seed(0)
        model_dir = work / f"model-{size}"
        config = LlamaConfig(vocab_size=vocab, max_position_embeddings=2048, tie_word_embeddings=True,
                             **SIZES[size])
        LlamaForCausalLM(config).save_pretrained(model_dir)
        tokenizer_path = json.loads((shards / "index.json").read_text())["tokenizer_path"]
        load_tokenizer(tokenizer_path).save_pretrained(model_dir)
        n_params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
        for precision in args.precisions.split(","):
            common = {"steps": args.steps, "seq_len": args.seq_len, "micro_batch": args.micro_batch,
                      "grad_accum": args.grad_accum, "precision": precision}
            # alternate the two trainers so drift in machine load hits both alike
            out = work / f"llm4all-{size}-{precision}"
            cmd = [sys.executable, "-m", "llm4all", "train", str(shards), "--out", str(out), "--model",
                   str(model_dir), "--steps", str(args.steps), "--seq-len", str(args.seq_len),
                   "--micro-batch", str(args.micro_batch), "--grad-accum", str(args.grad_accum),
                   "--precision", precision, "--warmup", "2", "--runs-table", str(work / "runs.jsonl")]
            t0 = time.perf_counter()
            _, ours_peak = run_child(cmd)
            ours_wall = time.perf_counter() - t0
            steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            ours = statistics.median(s["tokens_per_s"] for s in steps[2:])
            hf_cfg = {**common, "data": str(shards), "model": str(model_dir), "out": str(work / "hf")}
            hf_cmd = [sys.executable, "-c", HF_SCRIPT, json.dumps(hf_cfg)]
            stdout, hf_peak = run_child(hf_cmd)
            hf = json.loads(stdout.strip().splitlines()[-1])["tokens_per_s"]
            rows.append((size, n_params, precision, ours, hf, ours_peak, hf_peak, ours_wall))
            print(f"{size:8s} {n_params / 1e6:6.1f}M {precision:5s} llm4all {ours:8.0f} tok/s "
                  f"(peak {ours_peak:.2f} GiB)  HF Trainer {hf:8.0f} tok/s (peak {hf_peak:.2f} GiB)  "
                  f"ratio {ours / hf:.2f}", flush=True)
    bf16 = [r for r in rows if r[2] == "bf16"]
    fp32 = {r[0]: r for r in rows if r[2] == "fp32"}
    for r in bf16:
        if r[0] in fp32:
            print(f"{r[0]}: bf16 / fp32 tokens/s (llm4all) = {r[3] / fp32[r[0]][3]:.2f}")
    first = bf16[0] if bf16 else rows[0]
    print(f"llm4all / HF Trainer tokens/s ({first[0]}, {first[2]}): {first[3] / first[4]:.2f}")


if __name__ == "__main__":
    main()
