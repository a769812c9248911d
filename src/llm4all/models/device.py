"""Where a model runs: ``--device auto|cpu|cuda|cuda:N``, resolved once per command.

Every command that runs a model takes ``device`` and resolves it here; the model, its inputs,
the teacher, the caches and the calibration batches then follow the resolved device. ``auto``
is what the environment variable ``LLM4ALL_DEVICE`` names (one setting for every stage of a
recipe), else the first CUDA GPU when torch sees one, else the CPU. Stages whose models run
inside registry entries or worker processes (curate's model signals and embeddings, the
diversity probe) receive the device through that variable (``device_env``).

Packed checkpoints run on CUDA through torch's GPU kernels where they exist (``models.packed``:
int4 weight-only, int8 × int8); any other packed layer de-quantises on the GPU at each call
and says so in one warning line.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from llm4all.errors import UserError

if TYPE_CHECKING:
    import torch

DEVICES = "auto, cpu, cuda, cuda:N"
DEVICE_ENV = "LLM4ALL_DEVICE"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is ``$LLM4ALL_DEVICE`` if set, else CUDA when torch sees a GPU, else the CPU;
    anything else is a torch device.

    A device this machine does not have is a one-line ``UserError`` naming ``--device`` (or
    the environment variable it came from).
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto" and os.environ.get(DEVICE_ENV, "auto") != "auto":
        try:
            return resolve_device(os.environ[DEVICE_ENV])
        except UserError as e:
            raise UserError(f"{DEVICE_ENV}={os.environ[DEVICE_ENV]}: {e}") from None
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a torch device; valid: {DEVICES}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu or auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} "
                            f"CUDA GPU(s), numbered from 0")
    elif resolved.type != "cpu":
        raise UserError(f"--device {device}: llm4all runs models on {DEVICES}")
    return resolved


def default_dtype(device: torch.device) -> str:
    """The dtype ``auto`` means on ``device``: bfloat16 on a GPU, float32 on the CPU."""
    return "bfloat16" if device.type == "cuda" else "float32"


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model with neither)."""
    import itertools

    import torch

    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


@contextlib.contextmanager
def device_env(device: str = "auto") -> Iterator[None]:
    """Name ``device`` in ``LLM4ALL_DEVICE`` for the block (worker processes started inside inherit
    it; checked now, resolved where a model loads); the variable's old value comes back after.
    ``auto`` leaves the variable as it is."""
    if device == "auto":
        yield
        return
    resolved = resolve_device(device)
    old = os.environ.get(DEVICE_ENV)
    os.environ[DEVICE_ENV] = str(resolved)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(DEVICE_ENV, None)
        else:
            os.environ[DEVICE_ENV] = old
