"""FLOPs → GPU-hours → money, and the memory verdict with the cheapest fixes.

Training FLOPs C ≈ 6·N·D (Kaplan et al. 2020, Section 2.1: 2 per parameter per token forward,
4 backward); full activation recomputation adds one forward, 8·N·D (Korthikanti et al. 2022).
Wall-clock = C / (GPUs · peak FLOP/s · MFU), where MFU is the model-FLOPs utilisation (PaLM,
Chowdhery et al. 2022, Appendix B; 30–50% is typical for well-tuned dense training).
"""

from __future__ import annotations

from llm4all.errors import UserError
from llm4all.plan.arch import Arch
from llm4all.plan.hardware import Hardware
from llm4all.plan.memory import Setup, breakdown, total
from llm4all.plan.scaling import PF_DAY


def training_cost(flops: float, hw: Hardware, mfu: float, gpus: int = 1) -> dict:
    """GPU-hours, wall-clock hours, dollars and PF-days for ``flops`` on ``gpus`` × ``hw``."""
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu must be in (0, 1], got {mfu}")
    if gpus < 1:
        raise UserError(f"--gpus must be at least 1, got {gpus}")
    gpu_hours = flops / (hw.flops * mfu) / 3600
    return {"flops": flops, "pf_days": flops / PF_DAY, "gpu_hours": gpu_hours,
            "wall_hours": gpu_hours / gpus, "dollars": gpu_hours * hw.price_per_hour}


# The fixes a user can make when a training setup does not fit, cheapest first: each entry is
# (name, trade-off, function producing candidate setups from the current one). Every name says
# the `llm4all train` option that makes the change: the planner suggests only what it can run.
def _fixes(s: Setup) -> list[tuple[str, str, list[Setup]]]:
    fixes = []
    if s.batch > 1:
        smaller = [s.replace(batch=b) for b in range(s.batch - 1, 0, -1) if s.batch % b == 0]
        fixes.append(("micro-batch {batch} × accumulation {accum} "
                      "(--micro-batch {batch} --grad-accum {accum})",
                      "same result, lower throughput per step", smaller))
    if s.attention == "math" and s.recompute == "none":
        fixes.append(("SDPA attention (train's default: scores recomputed in the backward pass)",
                      "~2-4% more compute (Korthikanti et al. 2022's selective recomputation)",
                      [s.replace(attention="flash")]))
    if s.recompute != "full":
        fixes.append(("full activation checkpointing (--activation-checkpointing)",
                      "~33% more compute (one extra forward)", [s.replace(recompute="full")]))
    if s.optimizer in ("adamw", "lion", "sgd"):
        fixes.append(("8-bit AdamW (--optimizer adamw8bit)",
                      "bitsandbytes; near-identical loss (Dettmers et al. 2022)",
                      [s.replace(optimizer="adamw8bit")]))
    if s.optimizer != "adafactor":
        fixes.append(("Adafactor (--optimizer adafactor)",
                      "factored 2nd moment; may need tuning (Shazeer & Stern 2018)",
                      [s.replace(optimizer="adafactor")]))
    if s.sharding in ("none", "zero1", "zero2"):
        fixes.append(("FSDP over {gpus} GPUs (torchrun --nproc_per_node {gpus} ... --strategy fsdp)",
                      "more GPUs, communication overhead",
                      [s.replace(sharding="fsdp", gpus=g) for g in (2, 4, 8, 16, 32, 64)
                       if g > s.gpus or s.sharding != "fsdp"]))
    if not s.lora_rank:
        fixes.append(("LoRA r=16 (--lora-rank 16)", "trains adapters only: fine-tuning, not pre-training",
                      [s.replace(lora_rank=16)]))
    if s.base_dtype != "int4":
        fixes.append(("QLoRA (--lora-rank 16 --lora-base int4)",
                      "adapters on a 4-bit base; small quality cost",
                      [s.replace(lora_rank=s.lora_rank or 16, base_dtype="int4")]))
    return fixes


def verdict(arch: Arch, setup: Setup, hw: Hardware, target_batch: int | None = None) -> dict:
    """Does ``setup`` fit ``hw``? If not, the single changes that make it fit, cheapest first,
    and a greedy combination of changes when no single one is enough."""
    need = total(breakdown(arch, setup))
    result = {"total_bytes": need, "usable_bytes": hw.usable_bytes, "fits": need <= hw.usable_bytes,
              "fixes": []}
    if result["fits"] or setup.mode != "train":
        return result
    target_batch = target_batch or setup.batch
    for name, tradeoff, candidates in _fixes(setup):
        for cand in candidates:
            t = total(breakdown(arch, cand))
            if t <= hw.usable_bytes:
                accum = -(-target_batch // cand.batch)
                result["fixes"].append({"change": name.format(batch=cand.batch, accum=accum,
                                                              gpus=cand.gpus),
                                        "tradeoff": tradeoff, "total_bytes": t, "setup": cand})
                break
    if not result["fixes"]:  # no single change is enough: combine them, cheapest first
        result["fixes"] = _combined(arch, setup, hw, target_batch)
    return result


def _combined(arch: Arch, setup: Setup, hw: Hardware, target_batch: int) -> list[dict]:
    steps = [("micro-batch 1 × accumulation {accum} (--micro-batch 1 --grad-accum {accum})",
              lambda s: [s.replace(batch=1)]),
             ("full activation checkpointing (--activation-checkpointing)",
              lambda s: [s.replace(recompute="full")]),
             ("8-bit AdamW (--optimizer adamw8bit)", lambda s: [s.replace(optimizer="adamw8bit")]
              if s.optimizer in ("adamw", "lion", "sgd") else []),
             ("FSDP over {gpus} GPUs (--strategy fsdp)",
              lambda s: [s.replace(sharding="fsdp", gpus=g) for g in (2, 4, 8, 16, 32, 64)]),
             ("LoRA r=16 (--lora-rank 16)", lambda s: [s.replace(lora_rank=16)] if not s.lora_rank else []),
             ("4-bit base (QLoRA: --lora-base int4)", lambda s: [s.replace(base_dtype="int4")])]
    cur, names = setup, []
    for name, make in steps:
        candidates = make(cur)
        if not candidates:
            continue
        fitting = [c for c in candidates if total(breakdown(arch, c)) <= hw.usable_bytes]
        cur = fitting[0] if fitting else candidates[min(len(candidates) - 1, 2)]
        names.append(name.format(accum=target_batch, gpus=cur.gpus))
        t = total(breakdown(arch, cur))
        if t <= hw.usable_bytes:
            return [{"change": " + ".join(names), "tradeoff": "combined", "total_bytes": t,
                     "setup": cur}]
    return []
