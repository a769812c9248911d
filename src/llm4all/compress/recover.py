"""Recovery training of a pruned or factorised model by distillation from the original.

Pruning removes weights the model relied on; a short distillation from the uncompressed
model recovers much of the loss (Sheared-LLaMA, Xia et al. 2023, section 2.2 "continued
pre-training"; Sun et al. 2024, Wanda, section 5 "fine-tuning pruned LLMs"). ``recover``
trains the compressed model in memory with the distillation library
(``distill.run.distill_student``; online KD by default: no teacher cache to build), the
original model as teacher, so its layout (sparse masks, shrunk matrices, U·V factors) is
then saved as before; the checkpoint before recovery is kept for comparison.

Sparsity survives training: every pruned Linear gets a gradient hook
(``models.packed.sparse.keep_sparsity``) that keeps its pruned weights at exactly 0, checked
after training. Quantised weights (packed buffers) are not trainable: recovering them is
quantisation-aware training (BitLinear, ``llm4all train --bitnet``), not this stage.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

from torch import nn

from llm4all.distill.args import KDConfig
from llm4all.errors import UserError, did_you_mean
from llm4all.train.args import TrainingConfig
from llm4all.train.loop import validation_fn

#: distill options for recovery unless overridden by --recover-options: online KD, a learning rate
#: 10× below pre-training's (recovery fine-tunes a trained model; Sheared-LLaMA uses 1e-4)
DEFAULTS = {"mode": "online", "lr": 1e-4, "warmup": 10, "micro_batch": 8, "seq_len": 256,
            "eval_tokens": 16384}


def check_options(options: dict | None, method=None) -> tuple[KDConfig, TrainingConfig]:
    """The distillation options of a recovery (defaults filled in), checked before any work."""
    from llm4all.catalog import QUANTIZERS

    if method is not None and method.name in QUANTIZERS.names():
        raise UserError(f"--recover-steps: {method.name!r} makes packed, untrainable weights; recovery "
                        "trains pruned or factorised models (for quantised weights use quantisation-aware "
                        "training with BitLinear)")
    options = {**DEFAULTS, **(options or {})}
    kd_keys = {f.name for f in fields(KDConfig)}
    loop_keys = {f.name for f in fields(TrainingConfig)}
    for key in options:
        if key in ("data", "out", "teacher", "student", "steps"):
            raise UserError(f"--recover-options: {key!r} is set by compress itself")
        if key not in kd_keys | loop_keys:
            raise UserError(f"--recover-options: unknown option {key!r}; "
                            f"{did_you_mean(key, sorted(kd_keys | loop_keys))}")
    try:
        kd = KDConfig(**{k: v for k, v in options.items() if k in kd_keys})
        training = TrainingConfig(**{k: v for k, v in options.items() if k in loop_keys})
        kd.cross_check(training)
    except UserError as e:
        raise UserError(f"--recover-options: {e}") from None
    return kd, training


def recover(net: nn.Module, tokenizer, teacher: str, work: Path, steps: int, data: Path,
            options: dict | None = None, attributes: dict | None = None, spec: dict | None = None) -> dict:
    """Distil ``teacher`` into the compressed ``net`` for ``steps`` steps, in place; returns metrics.

    ``work`` holds the checkpoint before recovery (``compressed/``) and the distillation run
    (``distill/``, which resumes if rerun); ``spec`` (method, calibration) is stamped there,
    and a different one is an error.
    """
    from llm4all.data.shards import TokenShards
    from llm4all.distill.run import distill_student
    from llm4all.distill.step import Teacher
    from llm4all.models.packed import save_packed
    from llm4all.models.packed.sparse import check_mask, keep_sparsity, sparse_masks
    from llm4all.runs import write_json

    kd, training = check_options(options)
    training = replace(training, steps=steps, warmup=min(training.warmup, max(steps - 1, 0)))
    stamp = work / "compress.json"
    recovery = {k: v for k, v in {**DEFAULTS, **(options or {})}.items() if k not in ("device", "threads")}
    spec = json.loads(json.dumps({**(spec or {}), "steps": steps, "recovery": recovery}, default=str))
    if stamp.exists() and json.loads(stamp.read_text()) != spec:
        raise UserError(f"{work} holds the recovery run of another compression; remove it or choose "
                        "another --out")
    work.mkdir(parents=True, exist_ok=True)
    write_json(stamp, spec)
    masks = sparse_masks(net)
    for name in masks:  # pruned weights stay exactly zero through training
        keep_sparsity(net.get_submodule(name))
    shards = TokenShards(data)
    evaluate = validation_fn(shards.tokens("validation", training.eval_tokens), training.seq_len, "fp32")
    before = evaluate(net)["val_ppl"]
    if not (work / "compressed" / "model.safetensors").exists():
        save_packed(net, tokenizer, work / "compressed", {"note": "before recovery",
                                                          "attributes": attributes or {}})
    net, metrics = distill_student(net, Teacher(teacher, kd.teacher_dtype), shards, work / "distill", kd,
                                   training, arguments=spec)
    if metrics["step"] < steps:
        raise UserError(f"recovery stopped at step {metrics['step']} of {steps}; rerun to resume")
    check_mask(net, masks)
    return {"steps": steps, "data": str(data), "options": spec["recovery"], "work": str(work),
            "val_ppl_before": round(before, 4), "val_ppl_after": round(evaluate(net)["val_ppl"], 4)}
