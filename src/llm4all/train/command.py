"""``llm4all train``: build or load a model, then run the shared loop on token shards.

The model comes from a preset (``llm4all ls presets``), an existing checkpoint (HF directory,
registered name or GGUF: continued / domain-adaptive pre-training), or a teacher
(``--init-from``: a layer subset, or a narrower width with projected embeddings). The loop's
options are ``train.args.TrainingConfig`` (shared with ``distill``). Optional: LoRA adapters
through peft (merged into the saved model), replay of old data with a forgetting report,
curriculum / mixture manifests from ``llm4all curate``, BitNet b1.58 training, and
multi-process DDP/FSDP under ``torchrun``. The finished model is an HF directory in
``OUT/model``; the run is appended to the runs table that ``llm4all plan fit`` reads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from llm4all.errors import UserError
from llm4all.models.build import StudentInit
from llm4all.runs import config_hash, write_json, write_manifest
from llm4all.signature import flat_arguments, takes_configs
from llm4all.train.args import TrainingConfig
from llm4all.train.loop import cross_entropy_loss, fit, flops_per_token, setup_distributed, validation_fn
from llm4all.train.prepare import full_state, merged, parameter_summary, prepare


@takes_configs
def main(
    data: Path,
    *,
    out: Path,
    model: str = "llama-10m",
    init_from: str | None = None,
    student: StudentInit = StudentInit(),
    training: TrainingConfig = TrainingConfig(),
    curriculum: Path | None = None,
    mixture: Path | None = None,
    replay: Path | None = None,
    replay_fraction: float = 0.05,
    bitnet: bool = False,
    runs_table: Path | None = None,
) -> dict:
    """Train a causal LM on token shards with one efficient loop.

    Args:
        data: token-shard directory from `llm4all tokenize` (train split; validation for eval).
        out: run directory: metrics.jsonl, checkpoints/, model/ (resumes if checkpoints exist).
        model: a preset (`llm4all ls presets`) or a checkpoint to continue (HF dir, name, .gguf).
        init_from: initialise the model from this teacher instead (its shape: the --init-* options).
        student: the student's shape when --init-from is given (models.build.StudentInit).
        training: the loop's options (train.args.TrainingConfig: --steps, --lr, ...).
        curriculum: curriculum.json from `llm4all curate` (order and pacing).
        mixture: mixture.json from `llm4all curate` (group weights).
        replay: token shards of the old data to replay (continual pre-training).
        replay_fraction: fraction of each batch drawn from --replay.
        bitnet: train BitNet b1.58 (ternary weights, 8-bit activations, straight-through
            estimator) in every decoder Linear: pre-training from a preset, or quantisation-aware
            training of a checkpoint. OUT/model is then the 2-bit packed ternary model and
            OUT/model-latent the latent weights (continue training from there with --bitnet).
        runs_table: JSONL that `llm4all plan fit` reads (default: OUT/../runs.jsonl).
    """
    arguments = flat_arguments({k: v for k, v in locals().items()})  # params only
    from llm4all.data.shards import TokenShards, calibration_windows
    from llm4all.models.build import build_model
    from llm4all.models.load import load_tokenizer

    cfg = training
    if cfg.lora_rank and bitnet:
        raise UserError("--bitnet and --lora-rank exclusive: BitNet trains the full weights")
    if not 0 <= replay_fraction < 1:
        raise UserError(f"--replay-fraction must be in [0, 1), got {replay_fraction}")
    out = Path(out)
    dist_ = setup_distributed(training.device)
    shards = TokenShards(data)
    tokenizer = load_tokenizer(shards.index["tokenizer_path"])
    ids = (calibration_windows(data, student.init_calibration_tokens, cfg.seq_len, cfg.seed)
           if init_from and student.needs_calibration else None)
    net, role, source = build_model(model, len(tokenizer), cfg.seq_len, cfg.seed, init_from, student, ids,
                                    device=str(dist_.device))
    if net.get_input_embeddings().num_embeddings < shards.index["vocab_size"]:
        raise UserError(f"{data}: shards use a {shards.index['vocab_size']}-token vocabulary but the "
                        f"model has {net.get_input_embeddings().num_embeddings} embeddings")
    net = prepare(net, cfg)
    if bitnet:
        from llm4all.models.bitnet import bitnet_convert

        bitnet_convert(net)
        source += ", BitNet b1.58 BitLinear"
    sampler, eval_fn = _data(shards, cfg, curriculum, mixture, replay, replay_fraction)
    before = eval_fn(net) if replay is not None else {}
    if dist_.rank == 0:
        print(parameter_summary(net, source, cfg, dist_.world))
    start = time.perf_counter()
    metrics = fit(net, cross_entropy_loss, sampler, cfg, out, eval_fn=eval_fn, dist_=dist_,
                  flops_per_token=flops_per_token(net, cfg.seq_len), config_hash=config_hash(arguments),
                  params=arguments)
    if metrics["step"] < cfg.steps:
        print(f"stopped at step {metrics['step']} of {cfg.steps}; rerun the same command to resume")
        return metrics
    state = full_state(net, dist_.world)  # a collective: every process takes part
    if dist_.rank != 0:
        return metrics
    provenance = {"made_by": "llm4all train", "source": source, "arguments": arguments, "metrics": metrics}
    if bitnet:
        models = _save_bitnet(net, tokenizer, out, provenance, state, role)
    else:
        from llm4all.models.load import save

        save(merged(net), tokenizer, out / "model", provenance, state)
        models = [{"path": "model", "role": role, "format": "hf", "source": source}]
    result = {**metrics, "seconds_total": round(time.perf_counter() - start, 2)}
    if before:
        result["forgetting"] = _forgetting(before, metrics)
        write_json(out / "forgetting.json", result["forgetting"])
    _append_run(runs_table or out.parent / "runs.jsonl", net, metrics, out)
    write_json(out / "result.json", result)
    write_manifest(out, "train", models=models, metrics=result, arguments=arguments,
                   files={"metrics": "metrics.jsonl"},
                   inputs={"data": str(data), "model": init_from or model})
    _print_result(result)
    return result


def _data(shards, cfg: TrainingConfig, curriculum: Path | None, mixture: Path | None, replay: Path | None,
          replay_fraction: float):
    """(sampler, evaluation): windows of the shards (curriculum/mixture order, replay of old data) and
    validation perplexity on the new data, and on the old data under replay (``old_`` metrics)."""
    from llm4all.data.shards import TokenShards
    from llm4all.train.sampler import ReplaySampler, WindowSampler

    if shards.is_chat:
        return _conversations(shards, cfg, curriculum, mixture, replay)
    sampler = WindowSampler(shards, cfg.seq_len, cfg.seed, curriculum=curriculum, mixture=mixture,
                            total_steps=cfg.steps)
    evals = {"": validation_fn(shards.tokens("validation", cfg.eval_tokens), cfg.seq_len, cfg.precision)}
    if replay is not None:
        old = TokenShards(replay)
        sampler = ReplaySampler(sampler, WindowSampler(old, cfg.seq_len, cfg.seed + 1), replay_fraction)
        evals["old_"] = validation_fn(old.tokens("validation", cfg.eval_tokens), cfg.seq_len, cfg.precision)

    def evaluate(model) -> dict:
        return {f"{prefix}{k}": v for prefix, fn in evals.items() for k, v in fn(model).items()}

    return sampler, evaluate


def _conversations(shards, cfg: TrainingConfig, curriculum: Path | None, mixture: Path | None,
                   replay: Path | None):
    """(sampler, evaluation) of supervised fine-tuning: packed conversations, the loss and the
    validation perplexity on the assistant's tokens only (data/packing.py)."""
    from llm4all.data.packing import ConversationSampler
    from llm4all.train.loop import response_validation_fn

    given = [f"--{n}" for n, v in (("curriculum", curriculum), ("mixture", mixture), ("replay", replay)) if v]
    if given:
        raise UserError(f"{shards.path}: conversations (tokenize --format chat) are sampled whole; "
                        f"{', '.join(given)} order documents of plain token shards: leave them out")
    sampler = ConversationSampler(shards, cfg.seq_len, cfg.seed, pack=cfg.pack)
    held_out = ConversationSampler(shards, cfg.seq_len, cfg.seed, split="validation", pack=cfg.pack)
    for name, s in (("train", sampler), ("validation", held_out)):
        if s.truncated or s.dropped:
            print(f"{name}: {s.truncated} conversations cut at --seq-len {cfg.seq_len} + 1 tokens, "
                  f"{s.dropped} without an assistant token left out")
    print(f"conversations: {len(sampler)} training windows of {cfg.seq_len} tokens "
          f"({sampler.label_tokens:,} assistant tokens an epoch), loss on the assistant's tokens only")
    return sampler, response_validation_fn(held_out, cfg.precision)


def _save_bitnet(net, tokenizer, out: Path, provenance: dict, state_dict: dict | None, role: str) -> list:
    """OUT/model-latent: the latent weights (BitLinear's state is an nn.Linear's); OUT/model: the
    same model ternarised and packed, 2 bits per decoder weight (models/packed TernaryLinear)."""
    import copy

    from llm4all.models.bitnet import ternarize
    from llm4all.models.load import save
    from llm4all.models.packed import save_packed

    info = {**provenance, "made_by": "llm4all train --bitnet"}
    save(net, tokenizer, out / "model-latent", info, state_dict)
    deployable = copy.deepcopy(net)
    if state_dict is not None:
        deployable.load_state_dict(state_dict)
    save_packed(ternarize(deployable).eval(), tokenizer, out / "model",
                {"method": {"name": "bitnet"}, "made_by": "llm4all train --bitnet"})
    return [{"path": "model", "role": role, "format": "packed", "source": provenance["source"]},
            {"path": "model-latent", "role": role, "format": "hf", "source": provenance["source"]}]


def _forgetting(before: dict, after: dict) -> dict:
    return {"old_ppl_before": before["old_val_ppl"], "old_ppl_after": after["old_val_ppl"],
            "new_ppl_before": before["val_ppl"], "new_ppl_after": after["val_ppl"],
            "forgetting": after["old_val_ppl"] / before["old_val_ppl"] - 1,
            "adaptation": 1 - after["val_ppl"] / before["val_ppl"]}


def _append_run(table: Path, net, metrics: dict, out: Path) -> None:
    """One line in the runs table: params N (non-embedding), tokens D, loss (validation nats)."""
    embed = net.get_input_embeddings().weight.numel()
    n = sum(p.numel() for p in net.parameters()) - embed
    table.parent.mkdir(parents=True, exist_ok=True)
    with table.open("a") as f:
        f.write(json.dumps({"params": n, "tokens": metrics["tokens"], "loss": metrics.get("val_loss"),
                            "compute": 6.0 * n * metrics["tokens"], "run": str(out)}) + "\n")


def _print_result(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="train", show_header=False)
    for key in ("step", "tokens", "loss", "val_ppl", "avg_tokens_per_s", "mfu", "seconds"):
        if key in result:
            value = result[key]
            table.add_row(key, f"{value:,.4g}" if isinstance(value, float) else f"{value:,}")
    for key, value in result.get("forgetting", {}).items():
        table.add_row(key, f"{value:.4g}")
    Console().print(table)
