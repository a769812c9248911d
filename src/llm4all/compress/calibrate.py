"""Calibration: capture every Linear's inputs layer by layer and compress as we go.

The decoder stack is run one layer at a time, as in the GPTQ reference code (Frantar et al.
2023, section 4 "Step 3", and its ``llama.py``). With ``sequential="quantized"`` (the default)
each layer runs **once** over all calibration windows, and each group of Linears reading the
same tensor (q/k/v, gate/up; found by a probe forward of a few tokens) is compressed in a
forward pre-hook, from statistics of exactly the tensor it is about to read, before it runs:
o_proj sees the attention output of the already-compressed q/k/v, down_proj the product of
the compressed gate/up, and layer l + 1 the outputs of the compressed layer l. This is the
reference code's ``--true-sequential`` order, which its README reports slightly better for
LLaMA, and it costs one forward per layer instead of two. ``"original"`` feeds every Linear
the uncompressed model's activations (statistics gathered in batches of ``batch_size``
windows, then the layer is compressed).

Precision: the weights are compressed from their original fp32 values; the residual stream
(the captured layer inputs) stays fp32; with ``dtype=torch.bfloat16`` (the default) the
matrix products of the calibration forward run in bf16 under autocast (2.3× faster than fp32
on this CPU: 200 vs 85 GFLOP/s) and the rotary cos/sin are bf16, as in a bf16 model (12%
faster than fp32 rotary products). The Hessian XᵀX is accumulated in fp32 by BLAS ``ssyrk``
(one triangle: half a GEMM's FLOPs). A bf16 product is *not* used for it: rounding its output
to bf16 made the damped Hessian indefinite for SmolLM2's o_proj inputs and raised GPTQ's layer
error up to 3.9× (measured here), while fp32 sums of the same bf16 inputs changed it < 1%.

Device: the calibration forward runs where the model is (``compress --device``), so on a GPU
the forward passes over the calibration windows run there; each Linear's inputs are summed
into XᵀX on the CPU, and the per-Linear solvers (GPTQ, SparseGPT, ...) run in fp32 on CPU
copies of one group of Linears at a time, whose results go back to the device: the methods
have one code path, the one the tests check.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from llm4all.compress.method import InputStats, Method
from llm4all.errors import UserError
from llm4all.models.device import model_device
from llm4all.models.layers import decoder_layers, linears

PROBE_TOKENS = 8  # tokens of the forward that finds which Linears share an input


class _Stop(Exception):
    pass


@torch.no_grad()
def layer0_inputs(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Hidden states entering layer 0 ((n, T, H) fp32) and the layer's keyword arguments."""
    seen: list = []

    def hook(module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"], kwargs))
        raise _Stop

    handle = decoder_layers(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with contextlib.suppress(_Stop):
            model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    hidden, kwargs = seen[0]
    return hidden.float(), {k: v for k, v in kwargs.items() if k != "hidden_states"}


class Accumulator:
    """Running statistics of one Linear input: XᵀX (fp32, BLAS syrk), or Σx² and max |x| per column."""

    def __init__(self, cols: int, hessian: bool):
        self.xtx = np.zeros((cols, cols), dtype=np.float32, order="F") if hessian else None
        self.sumsq, self.absmax, self.tokens = torch.zeros(cols), torch.zeros(cols), 0

    def add(self, x: torch.Tensor) -> None:
        from scipy.linalg import blas

        x = x.reshape(-1, x.shape[-1]).float().cpu().contiguous()  # (N, in)
        if self.xtx is not None:  # x.numpy().T is X as an (in, N) column-major matrix: C += XᵀX
            self.xtx = blas.ssyrk(1.0, x.numpy().T, beta=1.0, c=self.xtx, trans=0, lower=0, overwrite_c=1)
        else:  # (Σx² of a Hessian is its diagonal)
            self.sumsq += x.square().sum(0)
            self.absmax = torch.maximum(self.absmax, x.abs().amax(0))
        self.tokens += x.shape[0]

    def result(self) -> InputStats:
        if self.xtx is None:
            return InputStats(None, self.sumsq, self.absmax, self.tokens)
        upper = torch.from_numpy(np.triu(self.xtx))
        xtx = upper + upper.triu(1).T
        return InputStats(xtx * (2.0 / max(self.tokens, 1)), xtx.diagonal().clone(), None, self.tokens)


@torch.no_grad()
def linear_groups(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> list[list[str]]:
    """The layer's Linears in call order, grouped by the tensor they read (q/k/v, o, gate/up, down)."""
    calls: list[tuple[str, torch.Tensor]] = []
    handles = [lin.register_forward_pre_hook(lambda m, a, name=name: calls.append((name, a[0])))
               for name, lin in linears(layer)]
    try:
        layer(hidden, **kwargs)
    finally:
        for h in handles:
            h.remove()
    groups: dict[int, list[str]] = {}
    for name, x in calls:
        if name not in sum(groups.values(), []):
            groups.setdefault(id(x), []).append(name)
    return list(groups.values())


def _compress_group(method: Method, prefix: str, layer: nn.Module, group: list[str],
                    stats: InputStats | None) -> list[nn.Module]:
    """The group's compressed modules, on the layer's device (computed on CPU copies: module docstring)."""
    device = model_device(layer)
    lins = [layer.get_submodule(n) for n in group]
    if device.type != "cpu":
        lins = [copy.deepcopy(lin).cpu() for lin in lins]
    names = [prefix + n for n in group]
    if method.compress_group is not None and len(group) > 1:
        news = method.compress_group(names, lins, stats)
    else:
        news = [method.compress(n, lin, stats) for n, lin in zip(names, lins, strict=True)]
    return [new.to(device) for new in news]


def _output(out) -> torch.Tensor:
    return (out[0] if isinstance(out, tuple) else out).float()


def _batch_slice(kwargs: dict, n: int, i: int, j: int) -> dict:
    """kwargs for windows i:j of n: tensors with a leading batch dimension of n are sliced."""
    return {k: v[i:j] if torch.is_tensor(v) and v.dim() > 1 and v.shape[0] == n else
            tuple(t[i:j] if torch.is_tensor(t) and t.dim() > 1 and t.shape[0] == n else t for t in v)
            if isinstance(v, tuple) else v for k, v in kwargs.items()}


def _quantized_pass(layer, groups, hidden, kwargs, method, prefix, autocast, clock) -> torch.Tensor:
    """One forward over all windows; each group is compressed in a pre-hook just before it runs."""
    replaced: dict[str, nn.Module] = {}

    def hook_for(group: list[str]) -> Callable:
        @torch.autocast(model_device(layer).type, enabled=False)  # the method's arithmetic stays fp32
        def hook(module, args):
            t0 = time.perf_counter()
            acc = Accumulator(args[0].shape[-1], method.stats == "hessian")
            acc.add(args[0])
            t1 = time.perf_counter()
            news = _compress_group(method, prefix, layer, group, acc.result())
            for name, new in zip(group, news, strict=True):
                replaced[name] = new
                old = layer.get_submodule(name)
                if new is not old:  # the rest of this forward runs on the compressed weight
                    old.weight.copy_(new.dense_weight() if hasattr(new, "dense_weight") else new.weight)
            clock["stats"] += t1 - t0
            clock["compress"] += time.perf_counter() - t1

        return hook

    handles = [layer.get_submodule(g[0]).register_forward_pre_hook(hook_for(g)) for g in groups]
    try:
        with autocast():
            out = _output(layer(hidden, **kwargs))
    finally:
        for h in handles:
            h.remove()
    for name, new in replaced.items():
        layer.set_submodule(name, new)
    return out


def _original_pass(layer, groups, hidden, kwargs, method, prefix, autocast, clock,
                   batch_size) -> torch.Tensor:
    """Statistics from the uncompressed layer (in batches), then every group is compressed."""
    accs = {g[0]: Accumulator(layer.get_submodule(g[0]).in_features, method.stats == "hessian")
            for g in groups}

    def hook(module, args, name):
        t0 = time.perf_counter()
        accs[name].add(args[0])
        clock["stats"] += time.perf_counter() - t0

    handles = [layer.get_submodule(name).register_forward_pre_hook(lambda m, a, name=name: hook(m, a, name))
               for name in accs]
    n, outs = len(hidden), []
    try:
        with autocast():
            for i in range(0, n, batch_size):
                part = _batch_slice(kwargs, n, i, i + batch_size)
                outs.append(_output(layer(hidden[i : i + batch_size], **part)))
    finally:
        for h in handles:
            h.remove()
    t0 = time.perf_counter()
    for group in groups:
        news = _compress_group(method, prefix, layer, group, accs[group[0]].result())
        for name, new in zip(group, news, strict=True):
            layer.set_submodule(name, new)
    clock["compress"] += time.perf_counter() - t0
    return torch.cat(outs)


@torch.no_grad()
def compress_layers(model: nn.Module, method: Method, ids: torch.Tensor | None = None, *,
                    dtype: torch.dtype = torch.bfloat16, batch_size: int = 32,
                    sequential: str = "quantized", progress: Callable[[int, int], None] | None = None
                    ) -> dict:
    """Replace every Linear of every decoder layer by ``method.compress``; returns timings.

    The calibration forward runs on the model's device (``ids`` are moved there)."""
    layers = decoder_layers(model)
    device = model_device(model)
    start = time.perf_counter()
    if method.stats == "none":
        for index, layer in enumerate(layers):
            for name, _ in linears(layer):
                layer.set_submodule(name, _compress_group(method, f"model.layers.{index}.", layer, [name],
                                                          None)[0])
            if progress:
                progress(index + 1, len(layers))
        return {"seconds": round(time.perf_counter() - start, 2), "calibration_tokens": 0}
    if ids is None:
        raise UserError(f"{method.name} needs calibration data (--calib: a token-shard directory)")
    if sequential not in ("quantized", "original"):
        raise UserError(f"sequential must be 'quantized' or 'original', got {sequential!r}")

    def autocast():
        on = dtype != torch.float32
        return torch.autocast(device.type, dtype=dtype) if on else contextlib.nullcontext()

    ids = ids.to(device)
    hidden, kwargs = layer0_inputs(model, ids)
    if dtype != torch.float32:  # RoPE cos/sin in the products' dtype, as a bf16 model has them
        kwargs = {k: tuple(t.to(dtype) for t in v) if k == "position_embeddings" else v
                  for k, v in kwargs.items()}
    probe, probe_kwargs = layer0_inputs(model, ids[:1, :PROBE_TOKENS])
    clock = {"stats": 0.0, "compress": 0.0}
    for index, layer in enumerate(layers):
        groups = linear_groups(layer, probe, probe_kwargs)
        prefix = f"model.layers.{index}."
        if sequential == "quantized":
            hidden = _quantized_pass(layer, groups, hidden, kwargs, method, prefix, autocast, clock)
        else:
            hidden = _original_pass(layer, groups, hidden, kwargs, method, prefix, autocast, clock,
                                    batch_size)
        if progress:
            progress(index + 1, len(layers))
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "calibration_tokens": int(ids.numel()),
            "forward_seconds": round(seconds - clock["stats"] - clock["compress"], 2),
            "stats_seconds": round(clock["stats"], 2), "compress_seconds": round(clock["compress"], 2)}
