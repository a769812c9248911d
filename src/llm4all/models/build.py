"""Build the model a training run starts from: a preset, a checkpoint, or a student of a teacher."""

from __future__ import annotations

from pathlib import Path

import torch


def build_model(model: str, vocab_size: int, seq_len: int, seed: int, init_from: str | None = None,
                init_every: int | None = None, init_layers: list[int] | None = None,
                init_hidden_size: int | None = None):
    """``(model, role, source)``: what ``train`` / ``distill`` train, and how it was made.

    Args:
        model: a preset (``llm4all ls presets``; random init) or a checkpoint (HF directory,
            registered name or .gguf) to continue training.
        vocab_size: the tokenizer's vocabulary (a preset's embedding rows).
        seq_len: the training window (a preset gets at least this many positions).
        seed: seed of the random initialisation.
        init_from: initialise a student from this teacher instead of ``model``.
        init_every: student = every k-th teacher layer.
        init_layers: student = exactly these teacher layers.
        init_hidden_size: a narrower student width (embeddings projected by PCA).

    ``role`` is the manifest role: ``scratch`` (a preset), ``student`` (from a teacher) or
    ``adapted`` (a checkpoint trained further).
    """
    from llm4all import catalog
    from llm4all.models.load import load

    torch.manual_seed(seed)
    if init_from:
        from llm4all.models.init import student_from_teacher

        teacher, _ = load(init_from)
        student = student_from_teacher(teacher, every=init_every, layers=init_layers,
                                       hidden_size=init_hidden_size)
        return student, "student", f"student of {init_from}"
    if not Path(model).exists() and model not in catalog.MODELS.names():
        from transformers import LlamaForCausalLM

        config = catalog.PRESETS.build({"name": model, "vocab_size": vocab_size,
                                        "max_position_embeddings": max(seq_len, 256)})
        config._attn_implementation = "sdpa"
        return LlamaForCausalLM(config), "scratch", f"preset {model} (random init, seed {seed})"
    net, _ = load(model)
    return net, "adapted", f"checkpoint {model}"
