"""Distil a teacher into a student model in memory: the library call behind ``llm4all distill``.

``distill_student`` runs the shared training loop (``train.loop.fit``) on the sampler and
loss of the configured KD mode (``step.py``) and returns the trained student and the last
metrics; it saves nothing but the loop's checkpoints in ``out`` (a rerun resumes). The
``distill`` command builds the student and saves it; recovery after pruning
(``compress/recover.py``) calls this on the pruned model directly.
"""

from __future__ import annotations

from pathlib import Path

import torch

from llm4all.distill.args import KDConfig
from llm4all.distill.step import Teacher, build_step
from llm4all.runs import config_hash
from llm4all.train.args import TrainingConfig
from llm4all.train.loop import Dist, fit, flops_per_token, setup_distributed, validation_fn
from llm4all.train.prepare import prepare


def distill_student(student: torch.nn.Module, teacher: Teacher, shards, out: Path, kd: KDConfig,
                    cfg: TrainingConfig, *, dist_: Dist | None = None,
                    arguments: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """Train ``student`` on ``teacher`` over token shards ``shards``; returns (student, metrics).

    Args:
        student: the model to train (trained in place; LoRA wraps it when ``cfg.lora_rank``).
        teacher: the teacher, loaded lazily (``step.Teacher``).
        shards: ``data.shards.TokenShards`` (train split to learn from, validation to evaluate).
        out: run directory: metrics.jsonl and checkpoints/ (resumed when present).
        kd: the distillation options.
        cfg: the training loop's options.
        dist_: the torchrun process group and device (default: one process on ``cfg.device``);
            the teacher and the student run there.
        arguments: the run's arguments, recorded and hashed to tie checkpoints to this run.
    """
    kd.cross_check(cfg)
    dist_ = dist_ or setup_distributed(cfg.device)
    teacher.device = str(dist_.device)
    if shards.is_chat:  # held-out conversations: perplexity of the assistant's tokens
        from llm4all.data.packing import ConversationSampler
        from llm4all.train.loop import response_validation_fn

        held_out = ConversationSampler(shards, cfg.seq_len, cfg.seed, split="validation", pack=cfg.pack)
        evaluate = response_validation_fn(held_out, cfg.precision)
    else:
        evaluate = validation_fn(shards.tokens("validation", cfg.eval_tokens), cfg.seq_len, cfg.precision)
    student = prepare(student, cfg).to(dist_.device)  # before a self-distillation teacher is copied
    sampler, loss_fn = build_step(kd, cfg, teacher, student, shards, Path(out))
    arguments = arguments or {}
    metrics = fit(student, loss_fn, sampler, cfg, Path(out), eval_fn=evaluate, dist_=dist_,
                  flops_per_token=flops_per_token(student, cfg.seq_len), config_hash=config_hash(arguments),
                  params=arguments)
    if hasattr(student, "kd_projector"):  # feature KD's projections are not part of the student
        del student.kd_projector
    return student, metrics
