"""Recovery training of a pruned or factorised model through ``llm4all distill``.

Pruning removes weights the model relied on; a short distillation from the uncompressed
model recovers much of the loss (Sheared-LLaMA, Xia et al. 2023, section 2.2 "continued
pre-training"; Sun et al. 2024, Wanda, section 5 "fine-tuning pruned LLMs"). ``recover``
saves the compressed model, runs ``llm4all distill`` with the original model as teacher and
the compressed one as student (online KD by default: no teacher cache to build), and loads
the trained weights back into the compressed modules, whose layout (packed sparse masks,
shrunk matrices, U·V factors) is then saved as before.

Sparsity survives training: a sparse Linear loaded by ``load_packed`` carries a gradient hook
(``models.packed.sparse.keep_sparsity``) that keeps every pruned weight at exactly 0, checked
after training. Quantised weights (packed buffers) are not trainable: recovering them is
quantisation-aware training (BitLinear, ``llm4all train``), not this stage.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from llm4all.errors import UserError

#: distill options for recovery unless overridden by --recover-options: online KD, a learning rate
#: 10× below pre-training's (recovery fine-tunes a trained model; Sheared-LLaMA uses 1e-4)
DEFAULTS = {"mode": "online", "lr": 1e-4, "warmup": 10, "micro_batch": 8, "seq_len": 256,
            "eval_tokens": 16384}


def check_options(options: dict | None, method=None) -> dict:
    """The distill options of a recovery (defaults filled in); errors before any work is done."""
    from llm4all.catalog import QUANTIZERS

    if method is not None and method.name in QUANTIZERS.names():
        raise UserError(f"--recover-steps: {method.name!r} makes packed, untrainable weights; recovery "
                        "trains pruned or factorised models (for quantised weights use quantisation-aware "
                        "training with BitLinear)")
    options = {**DEFAULTS, **(options or {})}
    for key in ("data", "out", "teacher", "student", "steps"):
        if key in options:
            raise UserError(f"--recover-options: {key!r} is set by compress itself")
    return options


def recover(net: nn.Module, tokenizer, teacher: str, work: Path, steps: int, data: Path,
            options: dict | None = None, attributes: dict | None = None, spec: dict | None = None) -> dict:
    """Distil ``teacher`` into the compressed ``net`` for ``steps`` steps, in place; returns metrics.

    ``work`` holds the checkpoint before recovery and the distill run (which resumes if rerun);
    ``spec`` (method, calibration) is stamped there, and a different one is an error.
    """
    from safetensors.torch import load_file

    from llm4all.distill.command import main as distill
    from llm4all.models.packed import save_packed
    from llm4all.models.packed.sparse import check_mask, sparse_masks
    from llm4all.runs import write_json

    options = check_options(options)
    options["warmup"] = min(options["warmup"], max(steps - 1, 0))
    stamp = work / "compress.json"
    spec = json.loads(json.dumps({**(spec or {}), "steps": steps, "recovery": options}, default=str))
    if stamp.exists() and json.loads(stamp.read_text()) != spec:
        raise UserError(f"{work} holds the recovery run of another compression; remove it or choose "
                        "another --out")
    work.mkdir(parents=True, exist_ok=True)
    write_json(stamp, spec)
    masks = sparse_masks(net)
    evaluate = _validation(data, options)
    before = evaluate(net)
    student = work / "compressed"
    if not (student / "model.safetensors").exists():
        save_packed(net, tokenizer, student, {"note": "before recovery", "attributes": attributes or {}})
    result = distill(data, out=work / "distill", teacher=teacher, student=str(student), steps=steps,
                     **options)
    weights = work / "distill" / "model" / "model.safetensors"
    if not weights.exists():
        raise UserError(f"recovery stopped at step {result.get('step')} of {steps}; rerun to resume")
    missing, unexpected = net.load_state_dict(load_file(str(weights)), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and net.config.tie_word_embeddings)]
    if missing or unexpected:
        raise UserError(f"{work}: the distilled student does not match the compressed model: "
                        f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    check_mask(net, masks)
    return {"steps": steps, "data": str(data), "options": options, "work": str(work),
            "val_ppl_before": round(before, 4), "val_ppl_after": round(evaluate(net), 4)}


def _validation(data: Path, options: dict):
    """fp32 perplexity on the first eval_tokens validation tokens, windows of seq_len (as distill)."""
    from llm4all.data.shards import TokenShards
    from llm4all.evaluate.perplexity import perplexity

    tokens = TokenShards(data).tokens("validation", options["eval_tokens"])

    def evaluate(model: nn.Module) -> float:
        seq = options["seq_len"]
        return perplexity(model.eval(), tokens, context=seq, stride=seq, batch_size=8)["ppl"]

    return evaluate
