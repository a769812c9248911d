"""``llm4all distill``: a student learns from a teacher through the shared training loop.

The student is initialised from the teacher by default (every 2nd layer at the teacher's
width, DistilBERT-style; ``--init-layers`` to choose them, ``--init-hidden-size`` for a
narrower one) or built from a preset or a checkpoint (``--student``). What it learns from is
``distill.args.KDConfig`` (the mode and its loss: ``distill/step.py``); how the loop trains
is ``train.args.TrainingConfig``, the same options as ``llm4all train``. Logit KD needs the
teacher's vocabulary: a different one is an error before any work.
"""

from __future__ import annotations

import time
from pathlib import Path

from llm4all.distill.args import KDConfig
from llm4all.distill.run import distill_student
from llm4all.distill.step import Teacher
from llm4all.models.build import StudentInit
from llm4all.runs import write_json, write_manifest
from llm4all.signature import flat_arguments, takes_configs
from llm4all.train.args import TrainingConfig
from llm4all.train.loop import setup_distributed
from llm4all.train.prepare import full_state, merged, parameter_summary


@takes_configs
def main(
    data: Path,
    *,
    out: Path,
    teacher: str = "smollm2-135m",
    student: str | None = None,
    init: StudentInit = StudentInit(),
    kd: KDConfig = KDConfig(),
    training: TrainingConfig = TrainingConfig(),
) -> dict:
    """Distil TEACHER into a smaller student on token shards DATA.

    Args:
        data: token-shard directory (tokenized with the teacher's tokenizer).
        out: run directory: metrics.jsonl, checkpoints/, model/ (the student), result.json.
        teacher: the teacher (registered name, HF directory or .gguf).
        student: a preset or HF directory for the student; default: initialised from the teacher.
        init: the student's shape when --student is not given (models.build.StudentInit: --init-*).
        kd: the distillation options (distill.args.KDConfig: --mode, --alpha, ...).
        training: the loop's options (train.args.TrainingConfig: --steps, --lr, ...).
    """
    arguments = flat_arguments({k: v for k, v in locals().items()})  # params only
    from llm4all.data.shards import TokenShards
    from llm4all.models.load import load_tokenizer

    out = Path(out)
    dist_ = setup_distributed(training.device)
    shards = TokenShards(data)
    tokenizer = load_tokenizer(shards.index["tokenizer_path"])
    if kd.mode != "sequence":  # the shards' tokenizer is the student's; logit KD needs the teacher's
        from llm4all.models.init import check_shared_vocabulary

        check_shared_vocabulary(load_tokenizer(teacher), tokenizer)
    net, source = _student(teacher, student, len(tokenizer), training, init, data)
    if dist_.rank == 0:
        print(parameter_summary(net, source, training, dist_.world) +
              f"; mode {kd.mode}, {kd.divergence}, alpha {kd.alpha}, T {kd.temperature}")
    start = time.perf_counter()
    net, metrics = distill_student(net, Teacher(teacher, kd.teacher_dtype), shards, out, kd, training,
                                   dist_=dist_, arguments=arguments)
    if metrics["step"] < training.steps:
        print(f"stopped at step {metrics['step']} of {training.steps}; rerun the same command to resume")
        return metrics
    state = full_state(net, dist_.world)  # a collective: every process takes part
    if dist_.rank != 0:
        return metrics
    from llm4all.models.load import save

    n_params = sum(p.numel() for p in net.parameters())
    save(merged(net), tokenizer, out / "model", {"made_by": "llm4all distill", "teacher": teacher,
                                                 "source": source, "arguments": arguments,
                                                 "metrics": metrics}, state)
    result = {**metrics, "mode": kd.mode, "student_params": n_params,
              "seconds_total": round(time.perf_counter() - start, 2)}
    write_json(out / "result.json", result)
    write_manifest(out, "distill", metrics=result, arguments=arguments, files={"metrics": "metrics.jsonl"},
                   models=[{"path": "model", "role": "student", "format": "hf", "source": source},
                           {"path": teacher, "role": "teacher"}],
                   inputs={"data": str(data), "teacher": teacher})
    print(f"student val ppl {metrics.get('val_ppl', float('nan')):.2f} after {training.steps} steps "
          f"({metrics['avg_tokens_per_s']:.0f} tok/s) -> {out / 'model'}")
    return result


def _student(teacher: str, student: str | None, vocab_size: int, cfg: TrainingConfig, init: StudentInit,
             data: Path):
    """(model, source): the student given by --student, or one initialised from the teacher's layers."""
    from llm4all.models.build import build_model
    from llm4all.models.device import resolve_device

    if student is not None:
        net, _, source = build_model(student, vocab_size, cfg.seq_len, cfg.seed)
        return net, source
    from llm4all.data.shards import calibration_windows

    ids = calibration_windows(data, init.init_calibration_tokens, cfg.seq_len, cfg.seed) \
        if init.needs_calibration else None
    net, _, source = build_model("", vocab_size, cfg.seq_len, cfg.seed, init_from=teacher, student=init,
                                 calibration_ids=ids, device=str(resolve_device(cfg.device)))
    return net, source
