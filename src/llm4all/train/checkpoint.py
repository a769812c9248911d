"""Atomic checkpoints with everything exact resume needs, and keep-last-N pruning.

A checkpoint directory ``checkpoints/step-000120/`` holds ``model.safetensors`` (full,
unsharded state), ``optimizer.pt`` (loaded with ``weights_only=True``), ``scaler.pt`` for fp16
and ``state.json`` (step, tokens seen, torch RNG state as a list, config hash). The sampler
needs no state: batches are a function of (seed, step). Under DDP/FSDP the full state is
gathered to rank 0 (``torch.distributed.checkpoint.state_dict`` helpers) and written there.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path

import torch

from llm4all.errors import UserError
from llm4all.runs import atomic_dir, write_json

log = logging.getLogger(__name__)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def save(path: Path, model, optimizer, scaler, state: dict, rank: int = 0) -> None:
    """Write a checkpoint (collective under DDP/FSDP: every rank must call it)."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options())
    if rank != 0:
        return
    with atomic_dir(path) as tmp:
        # tied weights share storage; safetensors wants distinct tensors
        tensors = {k: v.detach().clone().contiguous() for k, v in model_sd.items()}
        save_file(tensors, tmp / "model.safetensors")
        torch.save(optim_sd, tmp / "optimizer.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
        write_json(tmp / "state.json", {**state, "torch_rng": torch.get_rng_state().tolist()})


def load(path: Path, model, optimizer, scaler) -> dict:
    """Restore model, optimizer, scaler and RNG from ``path``; returns its state.json."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_state_dict

    model_sd = load_file(path / "model.safetensors")
    optim_sd = torch.load(path / "optimizer.pt", weights_only=True)
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                   options=_options())
    if scaler is not None and (path / "scaler.pt").exists():
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    state = json.loads((path / "state.json").read_text())
    torch.set_rng_state(torch.tensor(state.pop("torch_rng"), dtype=torch.uint8))
    return state


def latest(root: Path) -> Path | None:
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").exists())
    return done[-1] if done else None


def resume(root: Path, model, optimizer, scaler, config_hash: str) -> tuple[Path, dict] | None:
    """Restore the newest intact checkpoint under ``root``: (its path, its state), or None if there
    is none. A damaged one (truncated weights, unreadable optimizer state or state.json) is
    skipped, with a line saying so, for the one before it; a checkpoint of another configuration
    is an error. Checkpoints exist but none loads: an error, rather than training from scratch."""
    from safetensors import SafetensorError

    found = sorted((p for p in root.glob("step-*") if (p / "state.json").exists()), reverse=True)
    for path in found:
        try:
            check_compatible(path, config_hash)
        except (OSError, ValueError) as e:  # state.json unreadable: damaged, not another config
            log.warning("checkpoint %s is damaged (%s: %s); trying the one before", path, type(e).__name__, e)
            continue
        try:
            return path, load(path, model, optimizer, scaler)
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError, EOFError,
                pickle.UnpicklingError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            log.warning("checkpoint %s is damaged (%s: %s); trying the one before", path,
                        type(e).__name__, first)
    if found:
        raise UserError(f"{root}: no intact checkpoint among {len(found)}; remove the folder to train "
                        "from the start")
    return None


def prune(root: Path, keep_last: int) -> None:
    for old in sorted(root.glob("step-*"))[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def check_compatible(path: Path, config_hash: str) -> None:
    state = json.loads((path / "state.json").read_text())
    if state.get("config_hash") != config_hash:
        raise UserError(f"{path}: checkpoint was written with a different configuration; "
                        "resume with the same arguments, or use a new --out")
