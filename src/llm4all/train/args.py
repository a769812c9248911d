"""``TrainingConfig``: the options of the training loop, shared by ``train`` and ``distill``.

One dataclass, one doc line per field (litgpt's ``args.py`` is the model). ``signature.py``
expands it into the flags and recipe keys of both commands (``--lr``, ``lr:``), so an
option exists in both or in neither, and ``__post_init__`` checks every value once, before
any model is loaded. The loop (``loop.fit``) reads it as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from llm4all.errors import UserError
from llm4all.train.schedule import SCHEDULES, Schedule

Precision = Literal["fp32", "bf16", "fp16"]
Strategy = Literal["ddp", "fsdp"]
LOGGERS = ("tensorboard", "mlflow")


@dataclass(frozen=True)
class TrainingConfig:
    """How the loop trains: batch, schedule, optimizer, precision, evaluation, checkpoints."""

    seq_len: int = 256
    """tokens per training window."""
    micro_batch: int = 8
    """windows per forward pass (per process)."""
    grad_accum: int = 1
    """micro-batches accumulated per optimizer step."""
    steps: int = 200
    """optimizer steps."""
    lr: float = 1e-3
    """peak learning rate."""
    warmup: int = 20
    """linear warm-up steps (capped at steps - 1)."""
    schedule: Schedule = "cosine"
    """cosine, wsd (warmup-stable-decay) or constant."""
    min_lr_ratio: float = 0.1
    """final learning rate as a fraction of the peak."""
    decay_fraction: float = 0.2
    """wsd: fraction of the steps spent decaying."""
    optimizer: str = "adamw"
    """adamw, adafactor, lion, sgd or adamw8bit (`llm4all ls optimizers`)."""
    weight_decay: float = 0.1
    """decoupled weight decay on 2-D weights."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Adam/Lion moment coefficients (beta1, beta2)."""
    grad_clip: float = 1.0
    """maximum global gradient norm (0 disables clipping)."""
    precision: Precision = "bf16"
    """bf16 or fp16 autocast with fp32 master weights, or fp32."""
    activation_checkpointing: bool = False
    """recompute activations in the backward pass to save memory."""
    eval_every: int = 0
    """steps between validation perplexity evaluations (0: at the end only)."""
    eval_tokens: int = 16384
    """validation tokens per evaluation."""
    save_every: int = 0
    """steps between checkpoints (0: at the end only)."""
    keep_last: int = 2
    """checkpoints to keep."""
    stop_after: int | None = None
    """stop after this many steps of this invocation; rerun to resume."""
    seed: int = 0
    """seed of initialisation and sampling."""
    lora_rank: int = 0
    """train LoRA adapters of this rank instead of all weights (0: full training)."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator (scale = alpha / rank)."""
    lora_base: str = ""
    """int4: QLoRA, the frozen base stored as packed 4-bit weights (groups of 64) under the
    adapters, de-quantised layer by layer (models/lora.py); empty: the base in --precision."""
    strategy: Strategy = "ddp"
    """ddp or fsdp when launched with torchrun."""
    peak_tflops: float = 0.0
    """hardware peak (dense bf16 TFLOP/s per process) to report MFU; 0 hides it."""
    log_to: tuple[str, ...] = ()
    """extra loggers: tensorboard, mlflow (local store in OUT)."""
    device: str = "auto"
    """where the model (and a teacher) runs: auto (CUDA when present, else CPU), cpu, cuda or
    cuda:N; under torchrun, cuda means each process's local GPU."""
    pack: bool = True
    """conversations (shards of tokenize --format chat): pack several into each window, kept
    apart by their position ids; --no-pack: one conversation per window, padded."""
    sliding_window: int = 0
    """attend to the last N tokens only (Mistral-style sliding window; the model becomes a Mistral
    sharing its weights, and generation keeps an N-token KV cache); 0: full attention or the
    model's own window."""
    attention_sinks: int = 0
    """with --sliding-window: the first K tokens of each sequence stay visible to every query
    (StreamingLLM's attention sinks; 4 in the paper)."""
    threads: int = 0
    """CPU compute threads (0: the cores other processes leave free, checked again every 50
    steps; the environment variable LLM4ALL_THREADS sets one count for every command)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        object.__setattr__(self, "log_to", tuple(self.log_to or ()))
        for name in ("seq_len", "micro_batch", "grad_accum", "steps", "keep_last", "eval_tokens"):
            _at_least(name, getattr(self, name), 1)
        for name in ("warmup", "eval_every", "save_every", "lora_rank", "threads", "sliding_window",
                     "attention_sinks"):
            _at_least(name, getattr(self, name), 0)
        if self.stop_after is not None:
            _at_least("stop_after", self.stop_after, 1)
        _positive("lr", self.lr)
        for name in ("weight_decay", "grad_clip", "peak_tflops"):
            _finite(name, getattr(self, name), low=0.0)
        _finite("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        _finite("decay_fraction", self.decay_fraction, low=0.0, high=1.0)
        _positive("lora_alpha", self.lora_alpha)
        if self.lora_base and (self.lora_base != "int4" or not self.lora_rank):
            raise UserError(f"--lora-base {self.lora_base!r}: valid is int4 (QLoRA), with --lora-rank > 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"--betas: two numbers in [0, 1), got {list(self.betas)}")
        if self.attention_sinks and not self.sliding_window:
            raise UserError("--attention-sinks needs --sliding-window (sinks are kept beside a window)")
        if self.schedule not in SCHEDULES:
            raise UserError(f"--schedule: {self.schedule!r} is not valid; valid: {', '.join(SCHEDULES)}")
        unknown = [name for name in self.log_to if name not in LOGGERS]
        if unknown:
            raise UserError(f"--log-to: unknown logger {unknown[0]!r}; valid: {', '.join(LOGGERS)}")
        from llm4all.catalog import OPTIMIZERS

        OPTIMIZERS.get(self.optimizer)  # an unknown optimizer names the valid ones

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step in one process."""
        return self.micro_batch * self.grad_accum * self.seq_len


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _at_least(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{_flag(name)} must be an integer ≥ {low}, got {value!r}")


def _positive(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise UserError(f"{_flag(name)} must be a positive number, got {value!r}")


def _finite(name: str, value: float, low: float, high: float = math.inf) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or not low <= value <= high:
        bounds = f"in [{low}, {high}]" if math.isfinite(high) else f"≥ {low}"
        raise UserError(f"{_flag(name)} must be a number {bounds}, got {value!r}")
