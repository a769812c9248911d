"""``llm4all distill``: a student learns from a teacher through the shared training loop.

Modes (``--mode``):

- ``offline`` (default): the teacher's top-k log-probabilities over aligned windows of the
  training shards are cached once (``llm4all teacher-cache``, built here if absent) and the
  student trains on ``alpha · sparse KD + (1 − alpha) · CE`` through a fused head + loss
  (distill/fused.py); no teacher in the loop. The sparse KD keeps the teacher's leftover mass
  as one extra class by default (``--sparse-mode bucket``): renormalising the top-k instead
  tells the student nothing about how much mass its tail should get, and on the quickstart
  data (8-layer student, top-32, 60 steps) it left validation perplexity at 1,735 against 394
  with the bucket (docs/distill.md).
- ``online``: the teacher runs beside the student every step (bf16, no grad); dense KD on full
  distributions, plus optional feature KD (hidden states through learned projections) and
  relation KD (MiniLM self-attention relations of the last layer).
- ``self``: online KD from a frozen copy of the student's own initialisation (Furlanello et
  al. 2018, "Born-Again Neural Networks").
- ``on_policy``: GKD (Agarwal et al. 2024): with probability ``lambda`` a batch is the
  student's own samples (continuations of data prefixes), scored by the teacher with
  ``divergence`` (default JSD(β = 0.5)); otherwise data windows.
- ``sequence``: black-box sequence-level KD (Kim & Rush 2016): the teacher writes greedy
  continuations of prompts drawn from the data once; the student trains on them with CE.

The student is initialised from the teacher by default (every 2nd layer at the teacher's
width, DistilBERT-style; ``--init-hidden-size`` for a narrower one) or built from a preset.
Logit KD needs the teacher's vocabulary: a different one is an error before any work.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
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

Mode = Literal["offline", "online", "self", "on_policy", "sequence"]


class CacheSampler:
    """The teacher cache's rows in epochs: each epoch a fresh permutation of all rows.

    Every cached window costs a teacher forward pass, so each is used once per epoch rather
    than drawn with replacement (which leaves 1/e ≈ 37% of them unseen per epoch). The draw
    is a pure function of (seed, step), so a resumed run sees the same windows.
    """

    def __init__(self, cache, seed: int):
        self.cache, self.seed, self.seq_len = cache, seed, cache.seq_len
        self._epoch: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.cache.n_windows))
        return self._epoch[1]

    def rows(self, step: int, count: int) -> np.ndarray:
        """Cache rows of the ``count`` windows of optimizer step ``step``."""
        n = self.cache.n_windows
        draws = step * count + np.arange(count)  # global draw numbers
        return np.asarray([self._order(int(d // n))[d % n] for d in draws])

    def batch(self, step, micro, micro_batch, accum, rank=0, world=1):
        windows = self.rows(step, micro_batch * accum * world)
        first = (rank * accum + micro) * micro_batch
        idx = windows[first : first + micro_batch]
        inputs, labels = self.cache.tokens(idx)
        ids, logp, rest = self.cache.batch(idx)
        return inputs, {"labels": labels, "ids": ids, "logp": logp, "rest": rest}


def offline_loss(alpha: float, temperature: float, divergence: str, sparse_mode: str, options: dict):
    """``alpha · sparse KD + (1 − alpha) · CE`` against cached top-k teacher log-probabilities.

    A plain causal LM goes through the fused, chunked head + loss (distill/fused.py), which never
    materialises the (B, T, V) logits; a wrapped one (DDP, FSDP, LoRA) through its own forward.
    """
    from torch.distributed.fsdp import FSDPModule

    from llm4all.distill.fused import fused_sparse_kd_ce
    from llm4all.distill.losses import sparse_kd

    def loss_fn(model, inputs, targets):
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        wrapped = isinstance(model, FSDPModule) or hasattr(model, "module")  # DDP, FSDP
        wrapped = wrapped or hasattr(model, "get_base_model")  # peft (LoRA)
        plain = isinstance(head, torch.nn.Linear) and head.bias is None
        if plain and not wrapped and not getattr(model.config, "final_logit_softcapping", None):
            hidden = model.get_decoder()(input_ids=inputs).last_hidden_state  # (B, T, H)
            loss, kd, ce = fused_sparse_kd_ce(hidden, head.weight, targets["labels"], targets["ids"],
                                              targets["logp"], targets["rest"], alpha=alpha, mode=sparse_mode,
                                              divergence=divergence, temperature=temperature, **options)
            return loss, {"kd": kd.item(), "ce": ce.item()}
        logits = model(input_ids=inputs).logits  # (B, T, V)
        kd = sparse_kd(logits, targets["ids"], targets["logp"], rest_logp=targets["rest"], mode=sparse_mode,
                       divergence=divergence, temperature=temperature, **options)
        ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets["labels"].flatten())
        return alpha * kd + (1 - alpha) * ce, {"kd": kd.item(), "ce": ce.item()}

    return loss_fn


def online_loss(teacher, alpha: float, temperature: float, divergence: str, options: dict,
                feature_weight: float = 0.0, relation_weight: float = 0.0, projector=None,
                relation_heads: int = 0):
    from llm4all.distill.features import attention_relation_loss, capture_qkv, feature_loss
    from llm4all.distill.losses import kd_and_ce

    def loss_fn(model, inputs, labels):
        want_hidden = feature_weight > 0
        with torch.no_grad(), capture_qkv(teacher, -1) if relation_weight else _null() as t_qkv:
            t_out = teacher(input_ids=inputs, output_hidden_states=want_hidden)
        with capture_qkv(model, -1) if relation_weight else _null() as s_qkv:
            s_out = model(input_ids=inputs, output_hidden_states=want_hidden)
        kd, ce = kd_and_ce(divergence, s_out.logits, t_out.logits, labels, temperature=temperature, **options)
        loss = alpha * kd + (1 - alpha) * ce
        parts = {"kd": kd.item(), "ce": ce.item()}
        if feature_weight:
            feat = feature_loss(s_out.hidden_states, t_out.hidden_states, projector)
            loss = loss + feature_weight * feat
            parts["feature"] = feat.item()
        if relation_weight:
            qkv = ("q", "k", "v")
            rel = attention_relation_loss([s_qkv[k] for k in qkv], [t_qkv[k] for k in qkv],
                                          n_relation_heads=relation_heads)
            loss = loss + relation_weight * rel
            parts["relation"] = rel.item()
        return loss, parts

    return loss_fn


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def on_policy_loss(teacher, sampler_prefix: int, lam: float, divergence: str, temperature: float,
                   options: dict, seed: int):
    """GKD: with probability ``lam`` replace the batch by the student's own continuations."""
    from llm4all.distill.losses import kd_and_ce

    rng = np.random.default_rng(seed)

    def loss_fn(model, inputs, labels):
        if rng.random() < lam:
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            with torch.no_grad():
                was = base.training
                base.eval()
                sample = base.generate(inputs[:, :sampler_prefix], do_sample=True, top_k=0, top_p=1.0,
                                       temperature=1.0, max_new_tokens=inputs.shape[1] - sampler_prefix + 1,
                                       min_new_tokens=inputs.shape[1] - sampler_prefix + 1,
                                       pad_token_id=0)
                base.train(was)
            inputs, labels = sample[:, :-1], sample[:, 1:].clone()
            labels[:, : sampler_prefix - 1] = -100  # score only the student's own tokens
        with torch.no_grad():
            t_logits = teacher(input_ids=inputs).logits
        s_logits = model(input_ids=inputs).logits
        kd, ce = kd_and_ce(divergence, s_logits, t_logits, labels, temperature=temperature, **options)
        return kd, {"kd": kd.item(), "ce": ce.item()}

    return loss_fn


def main(
    data: Path,
    *,
    out: Path,
    teacher: str = "smollm2-135m",
    student: str | None = None,
    init_every: int | None = 2,
    init_layers: list[int] | None = None,
    init_hidden_size: int | None = None,
    mode: Mode = "offline",
    cache: Path | None = None,
    top_k: int = 64,
    max_windows: int | None = None,
    divergence: str = "forward_kl",
    kd_options: dict | None = None,
    alpha: float = 0.5,
    temperature: float = 1.0,
    sparse_mode: Literal["renormalize", "bucket"] = "bucket",
    feature_weight: float = 0.0,
    relation_weight: float = 0.0,
    relation_heads: int = 0,
    on_policy_fraction: float = 0.5,
    prompt_tokens: int = 32,
    seq_len: int = 256,
    micro_batch: int = 8,
    grad_accum: int = 1,
    steps: int = 200,
    lr: float = 1e-3,
    warmup: int = 20,
    schedule: Schedule = "cosine",
    optimizer: str = "adamw",
    weight_decay: float = 0.1,
    precision: Precision = "bf16",
    teacher_dtype: Literal["bfloat16", "float32"] = "bfloat16",
    eval_every: int = 0,
    eval_tokens: int = 16384,
    save_every: int = 0,
    stop_after: int | None = None,
    seed: int = 0,
) -> dict:
    """Distil TEACHER into a smaller student on token shards DATA.

    Args:
        data: token-shard directory (tokenized with the teacher's tokenizer).
        out: run directory: metrics.jsonl, checkpoints/, model/ (the student), result.json.
        teacher: the teacher (registered name, HF directory or .gguf).
        student: a preset or HF directory for the student; default: initialised from the teacher.
        init_every: student = every k-th teacher layer (when --student is not given).
        init_layers: student = exactly these teacher layers.
        init_hidden_size: narrower student width (PCA-projected from the teacher).
        mode: offline (top-k cache), online, self, on_policy (GKD) or sequence (black-box).
        cache: teacher cache directory for offline mode (built in OUT/teacher_cache if absent).
        top_k: log-probabilities cached per token (offline).
        max_windows: cache at most this many windows of seq-len tokens, drawn uniformly (offline).
        divergence: forward_kl, reverse_kl, jsd, skew_kl, skew_reverse_kl, total_variation.
        kd_options: options of the divergence, e.g. {beta: 0.5} for jsd.
        alpha: weight of the KD term; 1 - alpha weighs the cross-entropy on the data.
        temperature: softening temperature of both distributions (KD scaled by T²).
        sparse_mode: offline: one class for the teacher's leftover mass (T = 1), or renormalize the top-k.
        feature_weight: online: weight of hidden-state feature KD (learned projections).
        relation_weight: online: weight of MiniLM attention-relation KD (last layer).
        relation_heads: relation heads for relation KD (0: the student's head count).
        on_policy_fraction: on_policy: probability that a batch is the student's own samples.
        prompt_tokens: on_policy/sequence: tokens of data used as the prompt.
        seq_len: tokens per training window.
        micro_batch: windows per forward pass.
        grad_accum: micro-batches per optimizer step.
        steps: optimizer steps.
        lr: peak learning rate.
        warmup: warm-up steps.
        schedule: cosine, wsd or constant.
        optimizer: adamw, adafactor, lion, sgd, adamw8bit.
        weight_decay: decoupled weight decay.
        precision: bf16, fp16 or fp32 for the student.
        teacher_dtype: teacher weights' dtype (online modes and cache building).
        eval_every: steps between validation perplexities (0: at the end).
        eval_tokens: validation tokens per evaluation.
        save_every: steps between checkpoints (0: at the end).
        stop_after: stop after this many steps of this invocation; rerun to resume.
        seed: seed of initialisation and sampling.
    """
    arguments = {k: str(v) if isinstance(v, Path) else v for k, v in locals().items()}  # params only
    from llm4all.catalog import KD_LOSSES, OPTIMIZERS
    from llm4all.data.shards import TokenShards
    from llm4all.models.load import load, load_tokenizer
    from llm4all.models.load import save as save_model

    KD_LOSSES.get(divergence)
    OPTIMIZERS.get(optimizer)
    if not 0 <= alpha <= 1:
        raise UserError(f"--alpha must be in [0, 1], got {alpha}")
    if mode == "offline" and sparse_mode == "bucket" and temperature != 1.0:
        raise UserError(f"--sparse-mode bucket needs --temperature 1 (the cached leftover mass is at T = 1), "
                        f"got {temperature}; use --sparse-mode renormalize for other temperatures")
    out = Path(out)
    dist_ = setup_distributed("ddp")
    shards = TokenShards(data)
    tokenizer = load_tokenizer(shards.index["tokenizer_path"])
    t_model, t_tok = load(teacher, dtype=teacher_dtype)
    t_model.requires_grad_(False)
    if mode != "sequence":  # the shards' tokenizer is the student's; logit KD needs the teacher's
        from llm4all.models.init import check_shared_vocabulary

        check_shared_vocabulary(t_tok, tokenizer)
    torch.manual_seed(seed)
    if student is None:
        from llm4all.models.init import student_from_teacher

        teacher_fp32, _ = load(teacher)
        net = student_from_teacher(teacher_fp32, every=None if init_layers else init_every,
                                   layers=init_layers, hidden_size=init_hidden_size)
        del teacher_fp32
        kept = f"layers {init_layers}" if init_layers else f"every {init_every}"
        width = f", hidden {init_hidden_size}" if init_hidden_size else ""
        source = f"student of {teacher} ({kept}{width})"
    else:
        from llm4all.train.command import build_model

        net, source = build_model(student, len(tokenizer), seq_len, seed, None, None, None, None)
    options = dict(kd_options or {})
    evaluate = validation_fn(shards.tokens("validation", eval_tokens), seq_len, precision)

    start = time.perf_counter()
    if mode == "offline":
        from llm4all.distill.teacher_cache import TeacherCache, build_cache

        cache_dir = Path(cache) if cache else out / "teacher_cache"
        index = cache_dir / "index.json"
        if not index.exists() or not json.loads(index.read_text()).get("complete"):
            build_cache(t_model, data, cache_dir, seq_len=seq_len, top_k=top_k, max_windows=max_windows,
                        dtype=teacher_dtype, teacher_name=teacher, seed=seed)
        tc = TeacherCache(cache_dir)
        if tc.seq_len != seq_len:
            raise UserError(f"{cache_dir}: cached windows have seq_len {tc.seq_len}, not --seq-len {seq_len}")
        del t_model
        sampler, loss_fn = CacheSampler(tc, seed), offline_loss(alpha, temperature, divergence, sparse_mode,
                                                                 options)
    else:
        from llm4all.train.sampler import WindowSampler

        sampler = WindowSampler(shards, seq_len, seed, total_steps=steps)
        if mode == "self":
            t_model = copy.deepcopy(net).eval().requires_grad_(False)
        if mode in ("online", "self"):
            projector = None
            if feature_weight:
                from llm4all.distill.features import FeatureProjector, default_layer_map

                projector = FeatureProjector(net.config.hidden_size, t_model.config.hidden_size,
                                             default_layer_map(net.config.num_hidden_layers,
                                                               t_model.config.num_hidden_layers))
                net.add_module("kd_projector", projector)  # trained with the student, dropped on save
            heads = relation_heads or net.config.num_attention_heads
            loss_fn = online_loss(t_model, alpha, temperature, divergence, options, feature_weight,
                                  relation_weight, projector, heads)
        elif mode == "on_policy":
            if not 0 < prompt_tokens < seq_len:
                raise UserError(f"--prompt-tokens must be in (0, --seq-len), got {prompt_tokens}")
            loss_fn = on_policy_loss(t_model, prompt_tokens, on_policy_fraction, divergence, temperature,
                                     options, seed)
        else:  # sequence-level: the teacher writes the training data once
            sampler = _teacher_generations(t_model, tokenizer, shards, out / "teacher_generations",
                                           seq_len, prompt_tokens, max_windows or 256, seed)
            loss_fn = cross_entropy_loss
    cfg = LoopConfig(steps=steps, micro_batch=micro_batch, grad_accum=grad_accum, lr=lr,
                     warmup=min(warmup, steps - 1), schedule=schedule, optimizer=optimizer,
                     weight_decay=weight_decay, precision=precision, eval_every=eval_every,
                     save_every=save_every, stop_after=stop_after,
                     flops_per_token=flops_per_token(net, seq_len),
                     config_hash=config_hash(arguments))
    n_params = sum(p.numel() for p in net.parameters())
    print(f"{source}: {n_params / 1e6:.1f} M parameters; mode {mode}, {divergence}, "
          f"alpha {alpha}, T {temperature}")
    metrics = fit(net, loss_fn, sampler, cfg, out, eval_fn=evaluate, dist_=dist_, params=arguments)
    if metrics["step"] < steps:
        print(f"stopped at step {metrics['step']} of {steps}; rerun the same command to resume")
        return metrics
    if hasattr(net, "kd_projector"):
        del net.kd_projector
    save_model(net, tokenizer, out / "model", {"made_by": "llm4all distill", "teacher": teacher,
                                                "source": source, "arguments": arguments,
                                                "metrics": metrics})
    result = {**metrics, "mode": mode, "student_params": n_params,
              "seconds_total": round(time.perf_counter() - start, 2)}
    write_json(out / "result.json", result)
    print(f"student val ppl {metrics.get('val_ppl', float('nan')):.2f} after {steps} steps "
          f"({metrics['avg_tokens_per_s']:.0f} tok/s) -> {out / 'model'}")
    return result


def _teacher_generations(teacher, tokenizer, shards, out: Path, seq_len: int, prompt_tokens: int,
                         n: int, seed: int):
    """Greedy teacher continuations of ``n`` data prompts, as a sampler over them (cached)."""
    from llm4all.train.sampler import take

    path = out / "generations.pt"
    if not path.exists():
        tokens = torch.from_numpy(np.asarray(shards.tokens("train"), dtype=np.int64))
        rng = np.random.default_rng(seed)
        starts = rng.integers(0, tokens.numel() - prompt_tokens - 1, size=n)
        rows = []
        from rich.progress import track

        for i in track(range(0, n, 8), description="teacher generations"):
            prompts = torch.stack([tokens[s : s + prompt_tokens] for s in starts[i : i + 8]])
            with torch.no_grad():
                gen = teacher.generate(prompts, do_sample=False, max_new_tokens=seq_len + 1 - prompt_tokens,
                                       min_new_tokens=seq_len + 1 - prompt_tokens, pad_token_id=0)
            rows.append(gen[:, : seq_len + 1])
        out.mkdir(parents=True, exist_ok=True)
        from llm4all.runs import atomic_path

        with atomic_path(path) as tmp:
            torch.save(torch.cat(rows), tmp)
    windows = torch.load(path, weights_only=True)

    class GenerationSampler:
        seq_len = windows.shape[1] - 1

        def batch(self, step, micro, micro_batch, accum, rank=0, world=1):
            rng = np.random.default_rng([seed, step])
            idx = torch.from_numpy(rng.integers(0, windows.shape[0], size=micro_batch * accum * world))
            return take(windows[idx], micro, micro_batch, accum, rank)

    return GenerationSampler()
