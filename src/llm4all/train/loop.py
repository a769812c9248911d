"""The training loop: one explicit function, read top to bottom, shared by train and distil.

``fit()`` runs optimizer steps; each step accumulates ``grad_accum`` micro-batches under
autocast (bf16/fp16 compute, fp32 master weights: Micikevicius et al. 2018, "Mixed Precision
Training"), clips the gradient norm, sets the learning rate from the schedule and steps the
optimizer. It evaluates validation perplexity every ``eval_every`` steps, logs tokens/s and
MFU, writes ``metrics.jsonl`` and atomic checkpoints, and resumes exactly from the last one.
What it trains on is the caller's business: ``loss_fn(model, inputs, labels) -> (loss,
metrics)`` -- cross-entropy for ``llm4all train``, a KD loss for ``llm4all distill``.

Multi-process: launched by ``torchrun``, the model is wrapped in DDP or FSDP (gloo on CPU,
nccl on GPU); every process takes its slice of the same global batch (see sampler.py), so
N processes × k accumulation steps train exactly like 1 process × N·k.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llm4all.malloc import keep_freed_memory
from llm4all.models.device import model_device, resolve_device
from llm4all.threads import free_cores, thread_limit
from llm4all.train import checkpoint
from llm4all.train.args import Precision, Strategy, TrainingConfig
from llm4all.train.optim import build_optimizer
from llm4all.train.schedule import lr_factor

log = logging.getLogger(__name__)

LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def setup_distributed(device: str = "auto") -> Dist:
    """Join the torchrun process group if launched by torchrun; else a single process.

    ``device`` (``--device``): one process runs there; under torchrun, a CUDA device means each
    process's local GPU (NCCL) and cpu means gloo on the CPU.
    """
    resolved = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=resolved)
    import torch.distributed as dist

    backend = "nccl" if resolved.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    rank = dist.get_rank()
    local = int(os.environ.get("LOCAL_RANK", 0))
    resolved = torch.device(f"cuda:{local}") if backend == "nccl" else torch.device("cpu")
    return Dist(rank=rank, world=world, device=resolved)


def wrap(model: torch.nn.Module, dist_: Dist, strategy: Strategy) -> torch.nn.Module:
    if dist_.world == 1:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[dist_.device.index] if dist_.device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    for layer in getattr(getattr(model, "model", model), "layers", []):
        fully_shard(layer)
    fully_shard(model)
    return model


def autocast(precision: Precision, device: torch.device):
    """The autocast context of ``precision`` on ``device`` (none for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class _Loggers:
    """metrics.jsonl always; TensorBoard and MLflow (local store) when asked."""

    def __init__(self, out: Path, log_to: list[str], resume_step: int, rank: int, params: dict):
        self.rank, self.tb, self.mlflow = rank, None, None
        if rank != 0:
            return
        self.path = out / "metrics.jsonl"
        if self.path.exists():  # drop lines after the resumed step: the rerun writes them again
            keep = [ln for ln in self.path.read_text().splitlines() if json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        if "tensorboard" in log_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        if "mlflow" in log_to:
            import mlflow

            mlflow.set_tracking_uri((out / "mlruns").resolve().as_uri())
            mlflow.start_run()
            mlflow.log_params({k: str(v)[:250] for k, v in params.items()})
            self.mlflow = mlflow

    def log(self, step: int, metrics: dict) -> None:
        if self.rank != 0:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        if self.tb:
            for k, v in numbers.items():
                self.tb.add_scalar(k, v, step)
        if self.mlflow:
            self.mlflow.log_metrics(numbers, step=step)

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.mlflow:
            self.mlflow.end_run()


RECHECK_STEPS = 50  # steps between two looks at how many cores other processes leave free


class _Threads:
    """Compute threads of one training process on a CPU: as many as cores are free, looked at again
    every RECHECK_STEPS as the machine's load changes (OpenMP threads wait on each other, so two
    threads on two cores run slower than one while another process holds a core: issue 16,
    docs/benchmarks.md). Several processes or a GPU keep torch's own setting."""

    def __init__(self, cfg: TrainingConfig, dist_: Dist):
        alone_on_cpu = dist_.device.type == "cpu" and dist_.world == 1
        self.adaptive = alone_on_cpu and not cfg.threads
        self.n = free_cores(cfg.threads) if alone_on_cpu else torch.get_num_threads()

    def recheck(self, step: int, steps_done: int) -> None:
        if not (self.adaptive and steps_done and steps_done % RECHECK_STEPS == 0):
            return
        now = free_cores()
        if now != self.n:
            log.info("step %d: %d free core(s): computing with %d thread(s), not %d", step, now, now, self.n)
            self.n = now
            torch.set_num_threads(now)


def fit(model: torch.nn.Module, loss_fn: LossFn, sampler, cfg: TrainingConfig, out: Path, *,
        eval_fn: Callable[[torch.nn.Module], dict] | None = None, dist_: Dist | None = None,
        flops_per_token: float = 0.0, config_hash: str = "", params: dict | None = None) -> dict:
    """Train ``model`` for ``cfg.steps`` optimizer steps; returns the last metrics.

    ``flops_per_token`` (with ``cfg.peak_tflops``) gives MFU; ``config_hash`` ties the
    checkpoints in ``out`` to one configuration, so a rerun resumes only its own run.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    dist_ = dist_ or Dist()
    if dist_.device.type == "cpu":
        keep_freed_memory()  # large temporaries without page faults (malloc.py)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_root = out / "checkpoints"
    model.to(dist_.device)
    net = wrap(model, dist_, cfg.strategy)
    optimizer = build_optimizer(cfg.optimizer, net, cfg.lr, cfg.weight_decay, cfg.betas)
    scaler = torch.amp.GradScaler(dist_.device.type) if cfg.precision == "fp16" else None
    peak_flops = cfg.peak_tflops * 1e12 * dist_.world

    # resume from the newest checkpoint of this configuration
    step, tokens_seen = 0, 0
    resumed = checkpoint.resume(ckpt_root, net, optimizer, scaler, config_hash)
    if resumed is not None:
        last, state = resumed
        step, tokens_seen = state["step"], state["tokens_seen"]
        if dist_.rank == 0:
            log.info("resumed from %s (step %d)", last, step)
    loggers = _Loggers(out, list(cfg.log_to), step, dist_.rank, params or {})
    tokens_per_step = cfg.micro_batch * cfg.grad_accum * dist_.world * sampler.seq_len
    warmup = min(cfg.warmup, cfg.steps - 1)
    metrics: dict = {}
    started, start_step = time.perf_counter(), step
    columns = (TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    threads = _Threads(cfg, dist_)
    with thread_limit(threads.n), Progress(*columns, disable=dist_.rank != 0, transient=True) as bar:
        task = bar.add_task("train", total=cfg.steps, completed=step, info="")
        while step < cfg.steps:
            threads.recheck(step, step - start_step)
            if cfg.stop_after is not None and step - start_step >= cfg.stop_after:
                break
            t0 = time.perf_counter()
            lr = cfg.lr * lr_factor(step, cfg.steps, cfg.schedule, warmup, cfg.min_lr_ratio,
                                    cfg.decay_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_avg, grad_norm, extra = _optimizer_step(net, loss_fn, sampler, optimizer, scaler, cfg,
                                                         step, dist_)
            step += 1
            tokens_seen += tokens_per_step
            dt = time.perf_counter() - t0
            metrics = {"loss": loss_avg, "lr": lr, "grad_norm": grad_norm, "tokens": tokens_seen,
                       "tokens_per_s": tokens_per_step / dt, "threads": threads.n, **extra}
            if flops_per_token and peak_flops:
                metrics["mfu"] = flops_per_token * tokens_per_step / dt / peak_flops
            if eval_fn is not None and (step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0)):
                metrics.update(eval_fn(_unwrap(net)))
            loggers.log(step, metrics)
            info = f"loss {loss_avg:.3f}  {metrics['tokens_per_s']:,.0f} tok/s"
            if "val_ppl" in metrics:
                info += f"  val ppl {metrics['val_ppl']:.2f}"
            bar.update(task, completed=step, info=info)
            if step == cfg.steps or (cfg.save_every and step % cfg.save_every == 0):
                checkpoint.save(ckpt_root / f"step-{step:06d}", net, optimizer, scaler,
                                {"step": step, "tokens_seen": tokens_seen, "config_hash": config_hash},
                                dist_.rank)
                if dist_.rank == 0:
                    checkpoint.prune(ckpt_root, cfg.keep_last)
    loggers.close()
    if not metrics:  # resumed at the last step (a finished run again): its own last record stands
        metrics = _last_record(out / "metrics.jsonl", step)
        metrics["tokens"] = tokens_seen
        if eval_fn is not None and "val_ppl" not in metrics:
            metrics.update(eval_fn(_unwrap(net)))
    elapsed = time.perf_counter() - started
    metrics["steps_this_run"] = step - start_step
    metrics["seconds"] = round(elapsed, 2)
    metrics["avg_tokens_per_s"] = (step - start_step) * tokens_per_step / max(elapsed, 1e-9)
    metrics["step"] = step
    return metrics


def _last_record(path: Path, step: int) -> dict:
    """The metrics logged at ``step`` in a metrics.jsonl ({} if none), without the step key."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    last = next((r for r in reversed(rows) if r.get("step") == step), {})
    return {k: v for k, v in last.items() if k != "step"}


def _optimizer_step(net, loss_fn: LossFn, sampler, optimizer, scaler, cfg: TrainingConfig, step: int,
                    dist_: Dist) -> tuple[float, float, dict]:
    """One optimizer step over ``grad_accum`` micro-batches: (mean loss, gradient norm, loss parts)."""
    net.train()
    loss_sum, extra = 0.0, {}
    for micro in range(cfg.grad_accum):
        inputs, labels = sampler.batch(step, micro, cfg.micro_batch, cfg.grad_accum, dist_.rank, dist_.world)
        inputs, labels = _to(inputs, dist_.device), _to(labels, dist_.device)
        last_micro = micro == cfg.grad_accum - 1
        # DDP: all-reduce gradients only on the last micro-batch
        no_sync = hasattr(net, "no_sync") and not last_micro
        with net.no_sync() if no_sync else contextlib.nullcontext():
            with autocast(cfg.precision, dist_.device):
                loss, parts = loss_fn(net, inputs, labels)
            scaled = loss / cfg.grad_accum
            (scaler.scale(scaled) if scaler else scaled).backward()
        loss_sum += loss.item() / cfg.grad_accum
        for k, v in parts.items():
            extra[k] = extra.get(k, 0.0) + float(v) / cfg.grad_accum
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = (torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                 if cfg.grad_clip > 0 else torch.tensor(float("nan")))
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss_avg = _all_mean(loss_sum, dist_)
    if not math.isfinite(loss_avg):
        from llm4all.errors import UserError

        raise UserError(f"training diverged: loss is {loss_avg} at step {step + 1}; lower --lr, "
                        "raise --warmup, or use --precision bf16 instead of fp16")
    return loss_avg, float(grad_norm), {k: _all_mean(v, dist_) for k, v in extra.items()}


def _to(x, device: torch.device):
    """Move a tensor, or a dict/tuple of tensors (distillation targets), to ``device``."""
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return type(x)(_to(v, device) for v in x)
    return x.to(device)


def _unwrap(net: torch.nn.Module) -> torch.nn.Module:
    return net.module if hasattr(net, "module") else net


def _all_mean(value: float, dist_: Dist) -> float:
    if dist_.world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return (t / dist_.world).item()


def cross_entropy_loss(model: torch.nn.Module, inputs, labels: torch.Tensor):
    """Next-token cross-entropy, the mean over the positions whose label is not −100 (all of them
    for pre-training windows; the assistant's tokens for conversations), the softmax in fp32.

    ``inputs`` is a (B, T) tensor of token ids, or for packed conversations a dict of
    ``input_ids`` and ``position_ids`` (``data/packing.py``). An unwrapped causal LM goes through
    the fused, chunked head + loss (fused_ce.py), which never materialises the (B, T, V) logits,
    on the counted positions only; a DDP/FSDP-wrapped one through its own forward.
    """
    from torch.distributed.fsdp import FSDPModule

    from llm4all.data.packing import model_inputs
    from llm4all.models.fused_ce import fused_linear_cross_entropy

    kwargs = model_inputs(inputs)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft (LoRA)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    wrapped = hasattr(model, "module") or isinstance(model, FSDPModule)
    plain_head = isinstance(head, torch.nn.Linear) and head.bias is None
    counted = labels != -100
    if plain_head and not wrapped and not getattr(base.config, "final_logit_softcapping", None):
        hidden = base.get_decoder()(**kwargs).last_hidden_state  # (B, T, H)
        if counted.all():
            return fused_linear_cross_entropy(hidden, head.weight, labels), {}
        if not counted.any():  # nothing to learn in this micro-batch: a zero that keeps the graph
            return hidden.sum() * 0.0, {}
        return fused_linear_cross_entropy(hidden[counted], head.weight, labels[counted]), {}
    logits = model(**kwargs).logits  # (B, T, V)
    if not counted.any():
        return logits.sum() * 0.0, {}
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
    return loss, {}


def validation_fn(tokens, seq_len: int, precision: Precision, batch_size: int = 8):
    """Perplexity on ``tokens`` with disjoint windows of ``seq_len`` (see evaluate/perplexity)."""
    from llm4all.evaluate.perplexity import perplexity

    def evaluate(model: torch.nn.Module) -> dict:
        was_training = model.training
        model.eval()
        from torch.distributed.fsdp import FSDPModule

        with autocast(precision, model_device(model)):
            result = perplexity(model, tokens, context=seq_len, stride=seq_len, batch_size=batch_size,
                                full_forward=isinstance(model, FSDPModule))
        model.train(was_training)
        return {"val_loss": result["nll"], "val_ppl": result["ppl"]}

    return evaluate


def response_validation_fn(sampler, precision: Precision, batch_size: int = 8):
    """Perplexity of the assistant's tokens of held-out conversations (``sampler``: a
    ``ConversationSampler`` of the validation split; see evaluate.perplexity.response_perplexity)."""
    from llm4all.evaluate.perplexity import response_perplexity

    def evaluate(model: torch.nn.Module) -> dict:
        was_training = model.training
        model.eval()
        with autocast(precision, model_device(model)):
            result = response_perplexity(model, sampler, batch_size)
        model.train(was_training)
        return {"val_loss": result["nll"], "val_ppl": result["ppl"]}

    return evaluate


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6·N (non-embedding) + 12·L·d·T for attention (PaLM, Chowdhery
    et al. 2022, app. B)."""
    cfg = model.config
    embed = model.get_input_embeddings().weight.numel()
    n = sum(p.numel() for p in model.parameters()) - embed
    if not getattr(cfg, "tie_word_embeddings", False):
        n -= model.get_output_embeddings().weight.numel()
    n += model.get_output_embeddings().weight.numel()  # the output head is a matmul every token
    return 6.0 * n + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * seq_len

