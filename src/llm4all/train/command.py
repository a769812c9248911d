"""``llm4all train``: build or load a model, then run the shared loop on token shards.

The model comes from a preset (``llm4all ls presets``), an existing checkpoint (HF directory,
registered name or GGUF: continued / domain-adaptive pre-training), or a teacher
(``--init-from``: a layer subset, or a narrower width with projected embeddings). Optional:
LoRA adapters through peft (merged into the saved model), replay of old data with a
forgetting report, curriculum / mixture manifests from ``llm4all curate``, and multi-process
DDP/FSDP under ``torchrun``. The finished model is an HF directory in ``OUT/model``; the run
is appended to the runs table that ``llm4all plan fit`` reads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import torch

from llm4all.errors import UserError
from llm4all.runs import config_hash, write_json
from llm4all.train.loop import (
    LoopConfig,
    Precision,
    cross_entropy_loss,
    fit,
    flops_per_token,
    setup_distributed,
    validation_fn,
)
from llm4all.train.schedule import Schedule

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_model(model: str, vocab_size: int, seq_len: int, seed: int, init_from: str | None,
                init_every: int | None, init_layers: list[int] | None, init_hidden_size: int | None):
    """(model, source description): preset, checkpoint, or student initialised from a teacher."""
    from llm4all import catalog
    from llm4all.models.load import load

    torch.manual_seed(seed)
    if init_from:
        from llm4all.models.init import student_from_teacher

        teacher, _ = load(init_from)
        student = student_from_teacher(teacher, every=init_every, layers=init_layers,
                                       hidden_size=init_hidden_size)
        return student, f"student of {init_from}"
    if not Path(model).exists() and model not in catalog.MODELS.names():
        from transformers import LlamaForCausalLM

        config = catalog.PRESETS.build({"name": model, "vocab_size": vocab_size,
                                "max_position_embeddings": max(seq_len, 256)})
        config._attn_implementation = "sdpa"
        return LlamaForCausalLM(config), f"preset {model} (random init, seed {seed})"
    net, _ = load(model)
    return net, f"checkpoint {model}"


def main(
    data: Path,
    *,
    out: Path,
    model: str = "llama-10m",
    init_from: str | None = None,
    init_every: int | None = None,
    init_layers: list[int] | None = None,
    init_hidden_size: int | None = None,
    seq_len: int = 256,
    micro_batch: int = 8,
    grad_accum: int = 1,
    steps: int = 200,
    lr: float = 1e-3,
    warmup: int = 20,
    schedule: Schedule = "cosine",
    min_lr_ratio: float = 0.1,
    optimizer: str = "adamw",
    weight_decay: float = 0.1,
    grad_clip: float = 1.0,
    precision: Precision = "bf16",
    activation_checkpointing: bool = False,
    eval_every: int = 0,
    eval_tokens: int = 16384,
    save_every: int = 0,
    keep_last: int = 2,
    stop_after: int | None = None,
    seed: int = 0,
    curriculum: Path | None = None,
    mixture: Path | None = None,
    replay: Path | None = None,
    replay_fraction: float = 0.05,
    lora_rank: int = 0,
    lora_alpha: float = 16.0,
    bitnet: bool = False,
    strategy: Literal["ddp", "fsdp"] = "ddp",
    peak_tflops: float = 0.0,
    log_to: list[str] | None = None,
    runs_table: Path | None = None,
) -> dict:
    """Train a causal LM on token shards with one efficient loop.

    Args:
        data: token-shard directory from `llm4all tokenize` (train split; validation for eval).
        out: run directory: metrics.jsonl, checkpoints/, model/ (resumes if checkpoints exist).
        model: a preset (`llm4all ls presets`) or a checkpoint to continue (HF dir, name, .gguf).
        init_from: initialise the model from this teacher instead (see --init-every ...).
        init_every: keep every k-th teacher layer (DistilBERT-style).
        init_layers: keep exactly these teacher layers.
        init_hidden_size: a narrower student width (embeddings projected by PCA).
        seq_len: tokens per training window.
        micro_batch: windows per forward pass (per process).
        grad_accum: micro-batches accumulated per optimizer step.
        steps: optimizer steps.
        lr: peak learning rate.
        warmup: linear warm-up steps.
        schedule: cosine, wsd (warmup-stable-decay) or constant.
        min_lr_ratio: final learning rate as a fraction of the peak.
        optimizer: adamw, adafactor, lion, sgd or adamw8bit (`llm4all ls optimizers`).
        weight_decay: decoupled weight decay on 2-D weights.
        grad_clip: maximum global gradient norm (0 disables clipping).
        precision: bf16 or fp16 autocast with fp32 master weights, or fp32.
        activation_checkpointing: recompute activations in the backward pass to save memory.
        eval_every: steps between validation perplexity evaluations (0: at the end only).
        eval_tokens: validation tokens per evaluation.
        save_every: steps between checkpoints (0: at the end only).
        keep_last: checkpoints to keep.
        stop_after: stop after this many steps of this invocation; rerun to resume.
        seed: seed of initialisation and sampling.
        curriculum: curriculum.json from `llm4all curate` (order and pacing).
        mixture: mixture.json from `llm4all curate` (group weights).
        replay: token shards of the old data to replay (continual pre-training).
        replay_fraction: fraction of each batch drawn from --replay.
        lora_rank: train LoRA adapters of this rank instead of all weights (0: full training).
        lora_alpha: LoRA scaling numerator (scale = alpha / rank).
        bitnet: train BitNet b1.58 (ternary weights, 8-bit activations, straight-through
            estimator) in every decoder Linear: pre-training from a preset, or quantisation-aware
            training of a checkpoint. OUT/model is then the 2-bit packed ternary model and
            OUT/model-latent the latent weights (continue training from there with --bitnet).
        strategy: ddp or fsdp when launched with torchrun.
        peak_tflops: hardware peak (dense bf16 TFLOP/s per process) to report MFU; 0 hides it.
        log_to: extra loggers: tensorboard, mlflow (local store in OUT).
        runs_table: JSONL that `llm4all plan fit` reads (default: OUT/../runs.jsonl).
    """
    arguments = {k: str(v) if isinstance(v, Path) else v for k, v in locals().items()}  # params only
    from llm4all.data.shards import TokenShards
    from llm4all.models.load import load_tokenizer
    from llm4all.train.sampler import ReplaySampler, WindowSampler

    for name, value in (("steps", steps), ("seq_len", seq_len), ("micro_batch", micro_batch),
                        ("grad_accum", grad_accum)):
        if value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    unknown = sorted(set(log_to or []) - {"tensorboard", "mlflow"})
    if unknown:
        raise UserError(f"--log-to: unknown logger {unknown[0]!r}; valid: tensorboard, mlflow")
    from llm4all.catalog import OPTIMIZERS

    OPTIMIZERS.get(optimizer)  # unknown names fail before any work
    out = Path(out)
    dist_ = setup_distributed(strategy)
    shards = TokenShards(data)
    tokenizer = load_tokenizer(shards.index["tokenizer_path"])
    net, source = build_model(model, len(tokenizer), seq_len, seed, init_from, init_every, init_layers,
                              init_hidden_size)
    if net.get_input_embeddings().num_embeddings < shards.index["vocab_size"]:
        raise UserError(f"{data}: shards use a {shards.index['vocab_size']}-token vocabulary but the "
                        f"model has {net.get_input_embeddings().num_embeddings} embeddings")
    if activation_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        net.config.use_cache = False
    if lora_rank and bitnet:
        raise UserError("--bitnet and --lora-rank exclusive: BitNet trains the full weights")
    if lora_rank:
        net = _add_lora(net, lora_rank, lora_alpha)
    if bitnet:
        from llm4all.compress.quantize.bitnet import bitnet_convert

        bitnet_convert(net)
        source += ", BitNet b1.58 BitLinear"
    sampler = WindowSampler(shards, seq_len, seed, curriculum=curriculum, mixture=mixture, total_steps=steps)
    evals = {"": validation_fn(shards.tokens("validation", eval_tokens), seq_len, precision)}
    if replay is not None:
        old = TokenShards(replay)
        sampler = ReplaySampler(sampler, WindowSampler(old, seq_len, seed + 1), replay_fraction)
        evals["old_"] = validation_fn(old.tokens("validation", eval_tokens), seq_len, precision)

    def eval_fn(m):
        return {f"{prefix}{k}": v for prefix, fn in evals.items() for k, v in fn(m).items()}

    before = eval_fn(net) if replay is not None else {}
    cfg = LoopConfig(steps=steps, micro_batch=micro_batch, grad_accum=grad_accum, lr=lr,
                     min_lr_ratio=min_lr_ratio, warmup=min(warmup, steps - 1), schedule=schedule,
                     optimizer=optimizer, weight_decay=weight_decay, grad_clip=grad_clip,
                     precision=precision, eval_every=eval_every, save_every=save_every,
                     keep_last=keep_last, stop_after=stop_after,
                     flops_per_token=flops_per_token(net, seq_len),
                     peak_flops=peak_tflops * 1e12 * dist_.world, config_hash=config_hash(arguments),
                     log_to=list(log_to or []))
    if dist_.rank == 0:
        n_params = sum(p.numel() for p in net.parameters())
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        print(f"{source}: {n_params / 1e6:.1f} M parameters ({trainable / 1e6:.2f} M trainable), "
              f"{cfg.micro_batch * cfg.grad_accum * dist_.world * seq_len:,} tokens per step, "
              f"{steps} steps, {dist_.world} process(es)")
    start = time.perf_counter()
    metrics = fit(net, cross_entropy_loss, sampler, cfg, out, eval_fn=eval_fn, dist_=dist_,
                  strategy=strategy, params=arguments)
    if metrics["step"] < steps:
        print(f"stopped at step {metrics['step']} of {steps}; rerun the same command to resume")
        return metrics
    full_state = None
    if dist_.world > 1:  # FSDP shards parameters: gather the full state (a collective) first
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full_state = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True,
                                                                        cpu_offload=True))
    if dist_.rank == 0:
        if bitnet:
            _save_bitnet(net, tokenizer, out, arguments, metrics, source, full_state)
        else:
            _save_model(net, tokenizer, out / "model", arguments, metrics, source, lora_rank, full_state)
        result = {**metrics, "seconds_total": round(time.perf_counter() - start, 2)}
        if before:
            result["forgetting"] = _forgetting(before, metrics)
            write_json(out / "forgetting.json", result["forgetting"])
        _append_run(runs_table or out.parent / "runs.jsonl", net, metrics, out)
        write_json(out / "result.json", result)
        _print_result(result)
        return result
    return metrics


def _add_lora(net, rank: int, alpha: float):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError("--lora-rank needs peft: pip install peft") from None
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS, lora_dropout=0.0,
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(net, config)


def _save_model(net, tokenizer, path: Path, arguments: dict, metrics: dict, source: str,
                lora_rank: int, state_dict: dict | None = None):
    if lora_rank:
        net = net.merge_and_unload()  # W + (alpha / r) · B·A folded into W
    from llm4all.models.load import save

    save(net, tokenizer, path, {"made_by": "llm4all train", "source": source, "arguments": arguments,
                                "metrics": metrics}, state_dict)


def _save_bitnet(net, tokenizer, out: Path, arguments: dict, metrics: dict, source: str,
                 state_dict: dict | None) -> None:
    """OUT/model-latent: the latent weights (BitLinear's state is an nn.Linear's); OUT/model: the
    same model ternarised and packed, 2 bits per decoder weight (compress/qlinear.TernaryLinear)."""
    import copy

    from llm4all.compress.quantize.bitnet import ternarize
    from llm4all.models.load import save
    from llm4all.models.packed import save_packed

    info = {"made_by": "llm4all train --bitnet", "source": source, "arguments": arguments,
            "metrics": metrics}
    save(net, tokenizer, out / "model-latent", info, state_dict)
    deployable = copy.deepcopy(net)
    if state_dict is not None:
        deployable.load_state_dict(state_dict)
    save_packed(ternarize(deployable).eval(), tokenizer, out / "model",
                    {"method": {"name": "bitnet"}, "made_by": "llm4all train --bitnet"})


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
