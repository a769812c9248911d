"""``llm4all adapt``: continue training a model on the user's domain, and measure what it forgot.

Domain-adaptive pre-training (Gururangan et al. 2020, "Don't Stop Pretraining") of an existing
model on the curated train split: all weights (``--method full``) or LoRA adapters merged
afterwards (``--method lora``; Hu et al. 2022). Continued training drifts away from what the
model knew; ``--self-distill β`` keeps it close by training on ``(1 − β) · CE(domain) + β ·
KL(original ‖ adapted)``, the original model's own top-k predictions on the same windows cached
once (offline KD from the model itself, as in self-distillation for continual learning; the
cache is built before training, so the original model is never in the loop). Forgetting is
measured, not assumed: with ``--forgetting SHARDS`` (token shards of text outside the domain)
the perplexity there before and after is reported next to the in-domain gain.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Literal

from llm4all.distill.args import KDConfig
from llm4all.distill.run import distill_student
from llm4all.distill.step import Teacher
from llm4all.errors import UserError
from llm4all.runs import config_hash, write_json, write_manifest
from llm4all.signature import flat_arguments, takes_configs
from llm4all.train.args import TrainingConfig
from llm4all.train.loop import cross_entropy_loss, fit, flops_per_token, setup_distributed, validation_fn
from llm4all.train.prepare import merged, prepare


@takes_configs
def main(
    data: Path,
    *,
    out: Path,
    model: str = "smollm2-135m",
    method: Literal["full", "lora"] = "full",
    self_distill: float = 0.0,
    top_k: int = 64,
    forgetting: Path | None = None,
    training: TrainingConfig = TrainingConfig(lr=5e-5, warmup=10),
) -> dict:
    """Adapt MODEL to the domain of token shards DATA by continued training; report forgetting.

    Args:
        data: token shards of the domain (train split to learn; validation to measure the gain).
        out: run directory: metrics.jsonl, checkpoints/, model/ (the adapted model), result.json.
        model: the model to adapt (registered name, HF directory or .gguf).
        method: full (every weight) or lora (adapters of --lora-rank, merged into the saved model).
        self_distill: β in [0, 1): weight of the KL to the original model's own predictions
            (0: plain cross-entropy on the domain).
        top_k: the original model's log-probabilities cached per token for --self-distill.
        forgetting: token shards of text outside the domain (all splits are used; none is
            trained on): perplexity there before and after.
        training: the loop's options (train.args.TrainingConfig: --steps, --lr, ...).
    """
    arguments = flat_arguments({k: v for k, v in locals().items()})  # params only
    from llm4all.data.shards import TokenShards
    from llm4all.models.load import load

    if not 0 <= self_distill < 1:
        raise UserError(f"--self-distill must be in [0, 1), got {self_distill}")
    cfg = training
    if method == "lora" and not cfg.lora_rank:
        cfg = dataclasses.replace(cfg, lora_rank=16, lora_alpha=32.0)
    if method == "full" and cfg.lora_rank:
        raise UserError("--method full trains every weight; --lora-rank needs --method lora")
    out = Path(out)
    shards = TokenShards(data)
    other = TokenShards(forgetting) if forgetting is not None else None
    dist_ = setup_distributed(cfg.device)
    net, tokenizer = load(model, device=str(dist_.device))
    in_domain = validation_fn(shards.tokens("validation", cfg.eval_tokens), cfg.seq_len, "fp32")
    outside = (validation_fn(_all_tokens(other, cfg.eval_tokens), cfg.seq_len, "fp32")
               if other is not None else None)
    before = _measure(net, in_domain, outside)
    start = time.perf_counter()
    if self_distill:
        kd = KDConfig(mode="offline", alpha=self_distill, top_k=top_k, teacher_dtype="float32")
        net, metrics = distill_student(net, Teacher(model, "float32"), shards, out, kd, cfg,
                                       dist_=dist_, arguments=arguments)
    else:
        net, metrics = _continue(net, shards, out, cfg, arguments, dist_)
    if metrics["step"] < cfg.steps:
        print(f"stopped at step {metrics['step']} of {cfg.steps}; rerun the same command to resume")
        return metrics
    net = merged(net)
    after = _measure(net, in_domain, outside)
    from llm4all.models.load import save

    save(net, tokenizer, out / "model", {"made_by": "llm4all adapt", "source": model,
                                         "arguments": arguments, "metrics": metrics})
    result = {**metrics, "method": method, "self_distill": self_distill, "before": before, "after": after,
              "seconds_total": round(time.perf_counter() - start, 2),
              "domain_gain": 1 - after["val_ppl"] / before["val_ppl"]}
    if outside is not None:
        result["forgetting"] = after["outside_ppl"] / before["outside_ppl"] - 1
    write_json(out / "result.json", result)
    write_manifest(out, "adapt", metrics=result, arguments=arguments, files={"metrics": "metrics.jsonl"},
                   models=[{"path": "model", "role": "adapted", "format": "hf", "source": model},
                           {"path": model, "role": "teacher"}],  # the run's reference: what it adapted
                   inputs={"data": str(data), "model": model,
                           "forgetting": str(forgetting) if forgetting else None})
    _print(result)
    return result


def _continue(net, shards, out: Path, cfg: TrainingConfig, arguments: dict, dist_):
    """Plain continued training: cross-entropy on windows of the domain's train split."""
    from llm4all.train.sampler import WindowSampler

    net = prepare(net, cfg)
    evaluate = validation_fn(shards.tokens("validation", cfg.eval_tokens), cfg.seq_len, cfg.precision)
    sampler = WindowSampler(shards, cfg.seq_len, cfg.seed, total_steps=cfg.steps)
    metrics = fit(net, cross_entropy_loss, sampler, cfg, out, eval_fn=evaluate, dist_=dist_,
                  flops_per_token=flops_per_token(net, cfg.seq_len), config_hash=config_hash(arguments),
                  params=arguments)
    return net, metrics


def _all_tokens(shards, max_tokens: int):
    """Up to ``max_tokens`` tokens of every split of ``shards`` (none of them is trained on)."""
    import numpy as np

    parts, left = [], max_tokens
    for split in shards.splits:
        if left > 0:
            parts.append(np.asarray(shards.tokens(split, left)))
            left -= parts[-1].size
    return np.concatenate(parts)


def _measure(net, in_domain, outside) -> dict:
    """fp32 perplexity in the domain and, if given, outside it."""
    result = {"val_ppl": in_domain(net)["val_ppl"]}
    if outside is not None:
        result["outside_ppl"] = outside(net)["val_ppl"]
    return result


def _print(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="adapt", show_header=False)
    table.add_row("method", f"{result['method']}" + (f", self-distillation β {result['self_distill']}"
                                                      if result["self_distill"] else ""))
    before, after = result["before"], result["after"]
    table.add_row("in-domain perplexity", f"{before['val_ppl']:.2f} -> {after['val_ppl']:.2f}")
    if "forgetting" in result:
        table.add_row("outside the domain", f"{before['outside_ppl']:.2f} -> {after['outside_ppl']:.2f} "
                                             f"({result['forgetting']:+.1%})")
    table.add_row("steps, tokens/s", f"{result['step']}, {result['avg_tokens_per_s']:,.0f}")
    Console().print(table)
