"""Build the model a training run starts from: a preset, a checkpoint, or a student of a teacher.

``StudentInit`` is the option group of a student's shape (the ``--init-*`` flags of ``train
--init-from`` and of ``distill``): which teacher layers it keeps — given, every k-th, evenly
spaced, or the most important ones measured on calibration tokens (ShortGPT block influence,
the angular distance of a dropped block) — and, narrower, which heads and MLP channels
(weight norms, or Minitron's activation importance). ``build_model`` returns the model and
what it is (its manifest role and a one-line source).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from llm4all.errors import UserError

Select = Literal["even", "block_influence", "angular"]


@dataclass(frozen=True)
class StudentInit:
    """Which parts of the teacher a student keeps."""

    init_layers: list[int] | None = None
    """keep exactly these teacher layers."""
    init_every: int | None = None
    """keep every k-th teacher layer, DistilBERT-style (the default when nothing else is chosen: 2)."""
    init_keep: int | None = None
    """keep this many teacher layers, chosen by --init-select."""
    init_select: Select = "even"
    """how --init-keep layers are chosen: even (evenly spaced, first and last kept), block_influence
    (highest ShortGPT block influence) or angular (drop the block whose ends are closest in angle)."""
    init_hidden_size: int | None = None
    """a narrower student width (residual stream projected by PCA)."""
    init_intermediate_size: int | None = None
    """MLP channels to keep (default: the teacher's ratio to the width)."""
    init_heads: int | None = None
    """query heads to keep (default: the teacher's ratio to the width)."""
    init_kv_heads: int | None = None
    """key/value heads to keep (default: the fewest whose groups fit)."""
    init_width: Literal["weights", "activations"] = "weights"
    """choose the heads and MLP channels kept by weight norms, or by activation importance on
    calibration tokens (Minitron)."""
    init_calibration_tokens: int = 16384
    """training-split tokens on which importance (and a narrower width's PCA) is measured."""

    def __post_init__(self) -> None:
        chosen = [n for n, v in (("--init-layers", self.init_layers), ("--init-every", self.init_every),
                                 ("--init-keep", self.init_keep)) if v is not None]
        if len(chosen) > 1:
            raise UserError(f"give one of --init-layers, --init-every, --init-keep, "
                            f"not {' and '.join(chosen)}")
        if self.init_select != "even" and self.init_keep is None:
            raise UserError(f"--init-select {self.init_select} chooses --init-keep layers: "
                            "give --init-keep N")
        for name in ("init_every", "init_keep", "init_hidden_size", "init_intermediate_size", "init_heads",
                     "init_kv_heads", "init_calibration_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.init_layers is not None:
            object.__setattr__(self, "init_layers", list(self.init_layers))

    @property
    def needs_calibration(self) -> bool:
        """Whether choosing this student measures the teacher on calibration tokens."""
        return self.init_select != "even" or self.init_width == "activations"

    def describe(self) -> str:
        parts = [f"layers {self.init_layers}" if self.init_layers else
                 f"{self.init_keep} layers by {self.init_select}" if self.init_keep else
                 f"every {self.init_every or 2}"]
        if self.init_hidden_size:
            parts.append(f"hidden {self.init_hidden_size}")
        if self.init_intermediate_size:
            parts.append(f"MLP {self.init_intermediate_size}")
        if self.init_width == "activations":
            parts.append("heads/channels by activation importance")
        return ", ".join(parts)


def evenly_spaced(n_layers: int, keep: int) -> list[int]:
    """``keep`` of ``n_layers`` layer indices, evenly spaced, the first and the last included."""
    if not 1 <= keep <= n_layers:
        raise UserError(f"--init-keep must be in 1..{n_layers} (the teacher's depth), got {keep}")
    if keep == 1:
        return [0]
    return sorted({round(i * (n_layers - 1) / (keep - 1)) for i in range(keep)})


@torch.no_grad()
def student_of(teacher_name: str, init: StudentInit, calibration_ids: torch.Tensor | None = None,
               device: str = "cpu"):
    """A student of ``teacher_name`` shaped by ``init``, on the teacher's ``device``;
    ``calibration_ids`` (n, T) token windows are needed when ``init.needs_calibration``."""
    from llm4all.models.importance import residual_stream, select_layers_by_importance, width_importance
    from llm4all.models.init import select_layers, student_from_teacher
    from llm4all.models.load import load

    teacher, _ = load(teacher_name, device=device)
    ids = calibration_ids
    if init.needs_calibration and ids is None:
        raise UserError("--init-select and --init-width activations measure the teacher on calibration "
                        "tokens: give token shards")
    n_layers = teacher.config.num_hidden_layers
    layers = init.init_layers
    if init.init_keep is not None:
        if init.init_select == "even":
            layers = evenly_spaced(n_layers, init.init_keep)
        else:
            stream = residual_stream(teacher, ids)
            layers = select_layers_by_importance(stream, init.init_keep, init.init_select)
    importance = width_importance(teacher, ids) if init.init_width == "activations" else None
    every = init.init_every if layers is None else None
    student = student_from_teacher(teacher, layers=layers, every=every, hidden_size=init.init_hidden_size,
                                   intermediate_size=init.init_intermediate_size,
                                   num_attention_heads=init.init_heads,
                                   num_key_value_heads=init.init_kv_heads, calibration_ids=ids,
                                   importance=importance)
    student.teacher_layers = select_layers(n_layers, layers, every)  # which teacher layers it kept
    return student


def build_model(model: str, vocab_size: int, seq_len: int, seed: int, init_from: str | None = None,
                student: StudentInit | None = None, calibration_ids: torch.Tensor | None = None,
                device: str = "cpu"):
    """``(model, role, source)``: what ``train`` / ``distill`` train, and how it was made.

    Args:
        model: a preset (``llm4all ls presets``; random init) or a checkpoint (HF directory,
            registered name or .gguf) to continue training.
        vocab_size: the tokenizer's vocabulary (a preset's embedding rows).
        seq_len: the training window (a preset gets at least this many positions).
        seed: seed of the random initialisation and of the calibration windows.
        init_from: initialise a student from this teacher instead of ``model``.
        student: the student's shape (``StudentInit``), when ``init_from`` is given.
        calibration_ids: (n, T) token windows on which importance-based choices are measured.
        device: where a teacher runs to measure them (the model is returned there too).

    ``role`` is the manifest role: ``scratch`` (a preset), ``student`` (from a teacher) or
    ``adapted`` (a checkpoint trained further).
    """
    from llm4all import catalog
    from llm4all.models.load import load

    torch.manual_seed(seed)
    if init_from:
        init = student or StudentInit()
        net = student_of(init_from, init, calibration_ids, device)
        return net, "student", f"student of {init_from} ({init.describe()}: layers {net.teacher_layers})"
    if not Path(model).exists() and model not in catalog.MODELS.names():
        from transformers import AutoModelForCausalLM

        from llm4all.models.load import windowed

        config = catalog.PRESETS.build({"name": model, "vocab_size": vocab_size,
                                        "max_position_embeddings": max(seq_len, 256)})
        config._attn_implementation = "sdpa"
        net = windowed(AutoModelForCausalLM.from_config(config))  # Llama, or Mistral with a window
        return net, "scratch", f"preset {model} (random init, seed {seed})"
    net, _ = load(model, device=device)
    return net, "adapted", f"checkpoint {model}"
