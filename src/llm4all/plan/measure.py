"""Calibration: run a planned configuration for a few steps and measure its peak memory.

Each configuration runs in a fresh Python subprocess so that nothing from the parent (or an
earlier configuration) is resident. On CPU the measured quantity is the growth of the
process's peak resident set: VmHWM (``/proc/self/status``) at the end minus VmRSS just
before the model is built, after resetting the high-water mark once the model exists
(``echo 5 > /proc/self/clear_refs``) so the one-off cost of initialisation does not count
unless the run itself exceeds it. On a GPU (``device``) it is torch's peak allocation on the
device after the model is built, minus what was allocated before the model. The child runs
with ``MALLOC_MMAP_THRESHOLD_=65536`` so glibc serves every tensor-sized allocation with mmap
and returns it on free: resident memory then tracks live tensors instead of a fragmented heap.
torch is imported only here, and only in the child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict

from llm4all.errors import UserError
from llm4all.plan.arch import Arch
from llm4all.plan.memory import Setup

MEASURABLE_OPTIMIZERS = ("adamw", "sgd", "adafactor")


def measure(arch: Arch, setup: Setup, steps: int = 3, timeout: float = 900.0, device: str = "cpu") -> dict:
    """Run ``setup`` on ``arch`` (random init, no download) on ``device`` in a subprocess; return its peak."""
    if setup.lora_rank or setup.base_dtype or setup.sharding != "none" or setup.gpus > 1:
        raise UserError("--measure runs plain single-process training/inference only "
                        "(no LoRA, quantised base or sharding)")
    if setup.mode == "train" and setup.optimizer not in MEASURABLE_OPTIMIZERS:
        raise UserError(f"--measure supports optimizers {', '.join(MEASURABLE_OPTIMIZERS)}, "
                        f"not {setup.optimizer!r} (it needs a package llm4all does not depend on)")
    if setup.dtype not in ("fp32", "bf16", "fp16"):
        raise UserError(f"--measure needs a float dtype, got {setup.dtype!r}")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "2"}
    job = json.dumps({"arch": asdict(arch), "setup": asdict(setup), "steps": steps, "device": device})
    proc = subprocess.run([sys.executable, "-m", "llm4all.plan.measure", job], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement subprocess failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def proc_status(key: str) -> int:
    """A memory line of /proc/self/status (VmRSS, VmHWM, ...) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # kB -> bytes
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_rss_mib() -> float:
    """This process's RSS high-water mark (VmHWM), MiB.

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux folds the high-water mark of the memory
    image a process had before ``exec`` into it, and a child forked from a big parent (the
    recipe runner holding a model) starts from the parent's RSS, so every child reported the
    parent's peak. VmHWM belongs to the current image only.
    """
    return proc_status("VmHWM") / 2**20


def _child(job: dict) -> dict:  # pragma: no cover - runs in the subprocess
    import gc
    import time

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(2)
    a, st = Arch(**job["arch"]), Setup(**job["setup"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[st.dtype]
    autocast = st.mode == "train" and st.master_weights and dtype != torch.float32
    param_dtype = torch.float32 if autocast else dtype
    config = LlamaConfig(
        hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads, intermediate_size=a.intermediate, vocab_size=a.vocab,
        tie_word_embeddings=a.tied_embeddings, max_position_embeddings=max(a.max_position, st.seq),
        head_dim=a.head_dim, attention_bias=a.qkv_bias, use_cache=st.mode == "inference",
        attn_implementation="sdpa" if st.attention == "flash" else "eager",
    )
    device = torch.device(job.get("device", "cpu"))
    gpu = device.type == "cuda"
    ids = torch.randint(0, a.vocab, (st.batch, st.seq)).to(device)
    gc.collect()
    base = torch.cuda.memory_allocated(device) if gpu else proc_status("VmRSS")
    model = LlamaForCausalLM(config).to(param_dtype).to(device)
    if st.mode == "train" and st.recompute == "full":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    gc.collect()
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    times = []
    if st.mode == "inference":
        model.eval()
        with torch.no_grad():
            for _ in range(job["steps"]):
                t = time.perf_counter()
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
                times.append(time.perf_counter() - t)
                del out
    else:
        model.train()
        params = model.parameters()
        opt = {"adamw": lambda: torch.optim.AdamW(params, lr=1e-4),
               "sgd": lambda: torch.optim.SGD(params, lr=1e-4, momentum=0.9),
               "adafactor": lambda: torch.optim.Adafactor(params, lr=1e-4)}[st.optimizer]()
        for _ in range(job["steps"]):
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                if st.head == "fused":
                    from llm4all.models.fused_ce import fused_linear_cross_entropy

                    hidden = model.model(input_ids=ids).last_hidden_state
                    loss = fused_linear_cross_entropy(hidden, model.lm_head.weight, ids)
                else:
                    loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=False)  # gradients stay allocated, as the model counts them
            if gpu:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
            del loss
    peak = (torch.cuda.max_memory_allocated(device) if gpu else proc_status("VmHWM")) - base
    steady = times[1:] or times
    return {"peak_bytes": peak, "seconds_per_step": sum(steady) / len(steady),
            "tokens_per_s": st.batch * st.seq * len(steady) / sum(steady),
            "device": str(device), "torch": torch.__version__}


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(_child(json.loads(sys.argv[1]))))
