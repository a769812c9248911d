"""What one distillation step trains on, per mode: a sampler of batches and a loss.

``build_step(kd, training, ...)`` returns ``(sampler, loss_fn)`` for the shared training loop
(``train.loop.fit``), one builder per mode:

- ``offline``: the teacher's top-k log-probabilities over aligned windows of the training
  shards are cached once (``teacher_cache.py``) and the student trains on ``alpha · sparse KD
  + (1 − alpha) · CE`` through a fused head + loss (fused.py); no teacher in the loop. The
  leftover mass is one extra class by default (``sparse_mode: bucket``): renormalising the
  top-k tells the student nothing about how much mass its tail should get (on the quickstart
  data it left validation perplexity at 1,735 against 394 with the bucket; docs/distill.md).
- ``online``: the teacher runs beside the student every step (no grad); dense KD on full
  distributions, plus optional feature KD (hidden states through learned projections) and
  relation KD (MiniLM self-attention relations of the last layer).
- ``self``: online KD from a frozen copy of the student's own initialisation (Furlanello et
  al. 2018, "Born-Again Neural Networks").
- ``on_policy``: GKD (Agarwal et al. 2024): with probability ``on_policy_fraction`` a batch
  is the student's own samples (continuations of data prefixes), scored by the teacher with
  the divergence (JSD(β) in the paper); otherwise data windows.
- ``sequence``: black-box sequence-level KD (Kim & Rush 2016): the teacher writes greedy
  continuations of prompts drawn from the data once; the student trains on them with CE.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llm4all.data.packing import model_inputs
from llm4all.distill.args import KDConfig
from llm4all.errors import UserError
from llm4all.train.args import TrainingConfig
from llm4all.train.loop import cross_entropy_loss


@dataclass
class Teacher:
    """The teacher by name, loaded on first use (offline KD with a finished cache never loads it)."""

    name: str
    dtype: str = "bfloat16"
    device: str = "cpu"
    """where it runs: the student's device (``distill_student`` sets it)."""
    _model: torch.nn.Module | None = None

    def model(self) -> torch.nn.Module:
        if self._model is None:
            from llm4all.models.load import load

            self._model, _ = load(self.name, dtype=self.dtype, device=self.device)
            self._model.requires_grad_(False)
        return self._model

    def release(self) -> None:
        self._model = None


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


class GenerationSampler:
    """Windows of teacher-written text (sequence-level KD), drawn uniformly per step."""

    def __init__(self, windows: torch.Tensor, seed: int):
        self.windows, self.seed, self.seq_len = windows, seed, windows.shape[1] - 1

    def batch(self, step, micro, micro_batch, accum, rank=0, world=1):
        from llm4all.train.sampler import take

        rng = np.random.default_rng([self.seed, step])
        idx = torch.from_numpy(rng.integers(0, self.windows.shape[0], size=micro_batch * accum * world))
        return take(self.windows[idx], micro, micro_batch, accum, rank)


def offline_loss(kd: KDConfig):
    """``alpha · sparse KD + (1 − alpha) · CE`` against cached top-k teacher log-probabilities.

    A plain causal LM goes through the fused, chunked head + loss (distill/fused.py), which never
    materialises the (B, T, V) logits; a wrapped one (DDP, FSDP, LoRA) through its own forward.
    """
    from torch.distributed.fsdp import FSDPModule

    from llm4all.distill.fused import fused_sparse_kd_ce
    from llm4all.distill.losses import sparse_kd

    options = dict(divergence=kd.divergence, temperature=kd.temperature, mode=kd.sparse_mode, **kd.kd_options)

    def loss_fn(model, inputs, targets):
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        wrapped = isinstance(model, FSDPModule) or hasattr(model, "module")  # DDP, FSDP
        wrapped = wrapped or hasattr(model, "get_base_model")  # peft (LoRA)
        plain = isinstance(head, torch.nn.Linear) and head.bias is None
        if plain and not wrapped and not getattr(model.config, "final_logit_softcapping", None):
            hidden = model.get_decoder()(**model_inputs(inputs)).last_hidden_state  # (B, T, H)
            loss, kd_term, ce = fused_sparse_kd_ce(hidden, head.weight, targets["labels"], targets["ids"],
                                                   targets["logp"], targets["rest"], alpha=kd.alpha,
                                                   **options)
            return loss, {"kd": kd_term.item(), "ce": ce.item()}
        logits = model(**model_inputs(inputs)).logits  # (B, T, V)
        kd_term = sparse_kd(logits, targets["ids"], targets["logp"], rest_logp=targets["rest"],
                            labels=targets["labels"], **options)
        ce = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets["labels"].flatten())
        return kd.alpha * kd_term + (1 - kd.alpha) * ce, {"kd": kd_term.item(), "ce": ce.item()}

    return loss_fn


def online_loss(teacher: torch.nn.Module, kd: KDConfig, projector=None, relation_heads: int = 0):
    """``alpha · KD + (1 − alpha) · CE`` on the teacher's full distribution, plus feature/relation KD."""
    from llm4all.distill.features import attention_relation_loss, capture_qkv, feature_loss
    from llm4all.distill.losses import kd_and_ce

    def qkv(model):
        return capture_qkv(model, -1) if kd.relation_weight else contextlib.nullcontext()

    def loss_fn(model, inputs, labels):
        want_hidden = kd.feature_weight > 0
        kwargs = model_inputs(inputs)  # packed conversations: their position ids too
        with torch.no_grad(), qkv(teacher) as t_qkv:
            t_out = teacher(**kwargs, output_hidden_states=want_hidden)
        with qkv(model) as s_qkv:
            s_out = model(**kwargs, output_hidden_states=want_hidden)
        kd_term, ce = kd_and_ce(kd.divergence, s_out.logits, t_out.logits, labels, temperature=kd.temperature,
                                **kd.kd_options)
        loss = kd.alpha * kd_term + (1 - kd.alpha) * ce
        parts = {"kd": kd_term.item(), "ce": ce.item()}
        if kd.feature_weight:
            feat = feature_loss(s_out.hidden_states, t_out.hidden_states, projector)
            loss = loss + kd.feature_weight * feat
            parts["feature"] = feat.item()
        if kd.relation_weight:
            names = ("q", "k", "v")
            rel = attention_relation_loss([s_qkv[k] for k in names], [t_qkv[k] for k in names],
                                          n_relation_heads=relation_heads)
            loss = loss + kd.relation_weight * rel
            parts["relation"] = rel.item()
        return loss, parts

    return loss_fn


def on_policy_loss(teacher: torch.nn.Module, kd: KDConfig, seed: int):
    """GKD (Agarwal et al. 2024, Algorithm 1): with probability ``on_policy_fraction`` the KD term
    is computed on the student's own samples (continuations of the data prefixes, sampled at
    temperature 1), scored by the teacher token by token with the divergence (JSD(β) in the
    paper); otherwise on the data windows. Like every mode the loss is ``alpha · KD + (1 − alpha)
    · CE``, the cross-entropy always on the data (the ground truth, never the student's samples:
    that would be self-training on its own errors)."""
    from llm4all.distill.losses import kd_and_ce

    rng = np.random.default_rng(seed)
    prefix = kd.prompt_tokens

    def loss_fn(model, inputs, labels):
        kd_inputs, kd_labels = inputs, labels
        if rng.random() < kd.on_policy_fraction:
            kd_inputs, kd_labels = student_samples(model, inputs, prefix)
        with torch.no_grad():
            t_logits = teacher(input_ids=kd_inputs).logits
        s_logits = model(input_ids=kd_inputs).logits
        kd_term, ce = kd_and_ce(kd.divergence, s_logits, t_logits, kd_labels, temperature=kd.temperature,
                                **kd.kd_options)
        if kd_inputs is not inputs and kd.alpha < 1:  # the CE term on the data itself
            ce = torch.nn.functional.cross_entropy(model(input_ids=inputs).logits.flatten(0, 1).float(),
                                                   labels.flatten(), ignore_index=-100)
        loss = kd.alpha * kd_term + (1 - kd.alpha) * ce
        return loss, {"kd": kd_term.item(), "ce": ce.item(), "on_policy": float(kd_inputs is not inputs)}

    return loss_fn


def student_samples(model: torch.nn.Module, inputs: torch.Tensor,
                    prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of the student's own continuations of ``inputs[:, :prefix]``, as long as
    ``inputs``; labels mask the prefix (-100): only the student's tokens are scored."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    new = inputs.shape[1] - prefix + 1
    with torch.no_grad():
        was = base.training
        base.eval()
        sample = base.generate(inputs[:, :prefix], do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                               max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
        base.train(was)
    labels = sample[:, 1:].clone()
    labels[:, : prefix - 1] = -100
    return sample[:, :-1], labels


def teacher_generations(teacher: torch.nn.Module, tokens: np.ndarray, path: Path, seq_len: int,
                        prompt_tokens: int, n: int, seed: int) -> torch.Tensor:
    """Greedy teacher continuations of ``n`` data prompts, (n, seq_len + 1) ids, cached at ``path``."""
    if not path.exists():
        from rich.progress import track

        from llm4all.models.device import model_device
        from llm4all.runs import atomic_path

        tokens = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
        starts = np.random.default_rng(seed).integers(0, tokens.numel() - prompt_tokens - 1, size=n)
        new = seq_len + 1 - prompt_tokens
        rows = []
        for i in track(range(0, n, 8), description="teacher generations"):
            prompts = torch.stack([tokens[s : s + prompt_tokens] for s in starts[i : i + 8]])
            prompts = prompts.to(model_device(teacher))
            with torch.no_grad():
                gen = teacher.generate(prompts, do_sample=False, max_new_tokens=new, min_new_tokens=new,
                                       pad_token_id=0)
            rows.append(gen[:, : seq_len + 1].cpu())
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(torch.cat(rows), tmp)
    return torch.load(path, weights_only=True)


# ---- one builder per mode: (sampler, loss_fn) ------------------------------------------------

def _offline(kd: KDConfig, cfg: TrainingConfig, teacher: Teacher, student, shards, out: Path):
    from llm4all.distill.teacher_cache import TeacherCache, build_cache

    cache_dir = Path(kd.cache) if kd.cache else out / "teacher_cache"
    index = cache_dir / "index.json"
    if not index.exists() or not json.loads(index.read_text()).get("complete"):
        build_cache(teacher.model(), shards.path, cache_dir, seq_len=cfg.seq_len, top_k=kd.top_k,
                    max_windows=kd.max_windows, dtype=teacher.dtype, teacher_name=teacher.name,
                    seed=cfg.seed)
    teacher.release()  # the cache replaces the teacher: its memory is free for the student
    cache = TeacherCache(cache_dir)
    if cache.seq_len != cfg.seq_len:
        raise UserError(f"{cache_dir}: cached windows have seq_len {cache.seq_len}, "
                        f"not --seq-len {cfg.seq_len}")
    return CacheSampler(cache, cfg.seed), offline_loss(kd)


def _window_sampler(cfg: TrainingConfig, shards):
    """Windows of plain token shards, or packed conversations (the KD and CE terms then count
    the assistant's tokens only: their labels are the only ones not −100)."""
    from llm4all.data.packing import ConversationSampler
    from llm4all.train.sampler import WindowSampler

    if shards.is_chat:
        return ConversationSampler(shards, cfg.seq_len, cfg.seed, pack=cfg.pack)
    return WindowSampler(shards, cfg.seq_len, cfg.seed, total_steps=cfg.steps)


def _plain_windows_only(kd: KDConfig, shards) -> None:
    if shards.is_chat:
        raise UserError(f"{shards.path}: conversations (tokenize --format chat) distil with --mode "
                        f"offline, online or self (--mode {kd.mode} works on plain token windows)")


def _online(kd: KDConfig, cfg: TrainingConfig, teacher: Teacher, student, shards, out: Path):
    t_model = copy.deepcopy(student).eval().requires_grad_(False) if kd.mode == "self" else teacher.model()
    projector = None
    if kd.feature_weight:
        from llm4all.distill.features import FeatureProjector, default_layer_map

        projector = FeatureProjector(student.config.hidden_size, t_model.config.hidden_size,
                                     default_layer_map(student.config.num_hidden_layers,
                                                       t_model.config.num_hidden_layers))
        student.add_module("kd_projector", projector)  # trained with the student, dropped on save
    heads = kd.relation_heads or student.config.num_attention_heads
    return _window_sampler(cfg, shards), online_loss(t_model, kd, projector, heads)


def _on_policy(kd: KDConfig, cfg: TrainingConfig, teacher: Teacher, student, shards, out: Path):
    _plain_windows_only(kd, shards)
    return _window_sampler(cfg, shards), on_policy_loss(teacher.model(), kd, cfg.seed)


def _sequence(kd: KDConfig, cfg: TrainingConfig, teacher: Teacher, student, shards, out: Path):
    _plain_windows_only(kd, shards)
    path = out / "teacher_generations" / "generations.pt"
    windows = teacher_generations(teacher.model(), shards.tokens("train"), path, cfg.seq_len,
                                  kd.prompt_tokens, kd.max_windows or 256, cfg.seed)
    teacher.release()
    return GenerationSampler(windows, cfg.seed), cross_entropy_loss


BUILDERS: dict[str, Callable] = {"offline": _offline, "online": _online, "self": _online,
                                 "on_policy": _on_policy, "sequence": _sequence}


def build_step(kd: KDConfig, cfg: TrainingConfig, teacher: Teacher, student: torch.nn.Module, shards,
               out: Path):
    """``(sampler, loss_fn)`` of ``kd.mode`` for ``fit`` (may add a ``kd_projector`` to the student)."""
    return BUILDERS[kd.mode](kd, cfg, teacher, student, shards, out)
