"""``llm4all plan ...``: thin command adapters over the pure functions of this package.

Each command prints a rich table (or JSON with ``--json``), returns its result as a dict,
and with ``--out FILE`` writes that dict as JSON (atomically) — a recipe takes its student
size (``params``) and token budget (``tokens``) from there. torch is imported only by
``plan memory --measure``.
"""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import Literal

import numpy as np

from llm4all.errors import UserError
from llm4all.plan import cost as costs
from llm4all.plan import inference as inf
from llm4all.plan import scaling
from llm4all.plan.arch import resolve_arch
from llm4all.plan.hardware import hardware_table, load_hardware
from llm4all.plan.memory import Setup, breakdown, total

GIB = 2**30


def _emit(command: str, title: str, rows: list[tuple], result: dict, json: bool, out: Path | None) -> dict:
    if out is not None:  # a .json file, or a directory (a recipe stage's) that gets plan.json
        from llm4all.runs import write_json, write_manifest

        if Path(out).suffix == ".json":
            write_json(out, result)
        else:
            write_json(Path(out) / "plan.json", result)
            write_manifest(out, f"plan {command}", metrics=result, title=title)
    if json:
        print(jsonlib.dumps(result, indent=2, default=_plain))
        return result
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in rows[0]:
        table.add_column(str(col), style="bold" if col == rows[0][0] else None)
    for row in rows[1:]:
        table.add_row(*[_fmt(v) for v in row])
    Console().print(table)
    return result


def _plain(obj):
    return obj.item() if hasattr(obj, "item") else str(obj)


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool) or v is None:
        return str(v)
    v = float(v)
    return f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 or v == 0 else f"{v:.3e}"


def chinchilla(flops: float = 0.0, params: float = 0.0, tokens: float = 0.0,
               law: str = "chinchilla", json: bool = False, out: Path | None = None) -> dict:
    """Compute-optimal model size and tokens (Chinchilla), or the loss of a given N and D.

    Args:
        flops: training budget C in FLOPs: allocate N*(C), D*(C) along C = 6·N·D.
        params: model parameters N (alone: its compute-optimal tokens; with --tokens: its loss).
        tokens: training tokens D (with --params).
        law: named constants: chinchilla, chinchilla-unrounded, besiroglu, sardana.
        json: print JSON instead of a table.
        out: also write the result as JSON here (a recipe can read params and tokens from it).
    """
    fit = scaling.get_law(law)
    if flops > 0:
        n, d = (float(x) for x in fit.optimal(flops))
    elif params > 0:
        n = params
        d = tokens if tokens > 0 else float(fit.optimal_tokens_for(params))
    else:
        raise UserError("give --flops C, or --params N (optionally with --tokens D)")
    c = 6 * n * d
    result = {"law": law, "params": n, "tokens": d, "flops": c, "tokens_per_param": d / n,
              "loss": float(fit.loss(n, d)), "pf_days": c / scaling.PF_DAY}
    n1, d1, _ = scaling.approach1(flops=c)
    nk, dk, lk = scaling.kaplan_optimal(c)
    result["approach1"] = {"params": float(n1), "tokens": float(d1)}
    result["kaplan"] = {"params_non_embedding": float(nk), "tokens": float(dk), "loss": float(lk)}
    rows = [("allocation", "params N", "tokens D", "tokens/param", "loss (nats)"),
            (f"{law} (L = E + A/N^α + B/D^β)", n, d, d / n, result["loss"]),
            ("Chinchilla Approach 1 (20 tok/param)", n1, d1, 20.0, float(fit.loss(n1, d1))),
            ("Kaplan 2020 (N non-embedding)", nk, dk, dk / nk, lk)]
    title = f"C = {c:.3e} FLOPs = {result['pf_days']:.3g} PF-days"
    return _emit("chinchilla", title, rows, result, json, out)


def kaplan(params: float = 0.0, tokens: float = 0.0, steps: float = 0.0,
           batch_tokens: float = 0.0, flops: float = 0.0, json: bool = False) -> dict:
    """Kaplan et al. 2020 laws: L(N), L(D), L(N,D), critical batch, L(N,S), allocation.

    Args:
        params: non-embedding parameters N.
        tokens: training tokens D.
        steps: optimiser steps S (with --batch-tokens, for L(N, S_min)).
        batch_tokens: tokens per batch B.
        flops: a compute budget C for Kaplan's compute-efficient allocation.
        json: print JSON instead of a table.
    """
    rows, result = [("quantity", "value")], {}
    if params > 0:
        result["L(N)"] = float(scaling.kaplan_loss_n(params))
    if tokens > 0:
        result["L(D)"] = float(scaling.kaplan_loss_d(tokens))
    if params > 0 and tokens > 0:
        result["L(N,D)"] = float(scaling.kaplan_loss_nd(params, tokens))
        result["B_crit tokens"] = float(scaling.kaplan_critical_batch(result["L(N,D)"]))
    if params > 0 and steps > 0 and batch_tokens > 0:
        loss = result.get("L(N,D)", result["L(N)"])
        s_min = float(scaling.kaplan_s_min(steps, batch_tokens, loss))
        result["S_min"], result["L(N,S)"] = s_min, float(scaling.kaplan_loss_ns(params, s_min))
    if flops > 0:
        n, d, loss = scaling.kaplan_optimal(flops)
        result.update({"N_opt": float(n), "D_opt": float(d), "L(C_min)": float(loss)})
    if not result:
        raise UserError("give at least one of --params, --tokens, --flops")
    rows += list(result.items())
    return _emit("kaplan", "Kaplan et al. 2020", rows, result, json, None)


def inference(inference_tokens: float, params: float = 0.0, loss: float = 0.0,
              law: str = "chinchilla", hardware: str = "", inference_hardware: str = "",
              train_mfu: float = 0.4, prefill_mfu: float = 0.5, decode_mfu: float = 0.05,
              input_fraction: float = 0.5, hardware_file: Path | None = None,
              json: bool = False, out: Path | None = None) -> dict:
    """Inference-aware sizing (Sardana et al. 2023): smaller model, more tokens, same loss.

    Args:
        inference_tokens: lifetime inference demand in tokens.
        params: compare against the Chinchilla-optimal model of this size (its loss is the target).
        loss: or give the target loss directly.
        law: named Chinchilla constants (sardana reproduces the paper's Figure 1).
        hardware: optimise dollars instead of FLOPs: training hardware name.
        inference_hardware: serving hardware (default: --hardware).
        train_mfu: training utilisation.
        prefill_mfu: utilisation while processing prompt tokens.
        decode_mfu: utilisation while generating tokens (memory-bound, low).
        input_fraction: fraction of inference tokens that are prompt tokens.
        hardware_file: YAML file adding/overriding hardware entries.
        json: print JSON instead of a table.
        out: also write the result as JSON here.
    """
    fit = scaling.get_law(law)
    wt, wi = 1.0, 1.0
    if hardware:
        _, hw = load_hardware(hardware, hardware_file)
        _, ihw = load_hardware(inference_hardware or hardware, hardware_file)
        wt, wi = inf.cost_weights(hw.flops, train_mfu, hw.price_per_hour, ihw.flops, prefill_mfu,
                                  decode_mfu, ihw.price_per_hour, input_fraction)
    if params > 0:
        result = inf.compare_with_chinchilla(fit, params, inference_tokens, wt, wi)
        chin, opt = result["chinchilla"], result["inference_optimal"]
    elif loss > 0:
        opt = inf.inference_optimal(fit, loss, inference_tokens, wt, wi)
        n, d = fit.optimal(opt["train_flops"])
        chin = inf.chinchilla_point(fit, float(np.asarray(n)))
        result = {"inference_optimal": opt, "chinchilla_same_compute": chin}
    else:
        raise UserError("give --params N (a Chinchilla-optimal model to improve on) or --loss L")
    unit = "$" if hardware else "FLOPs"
    if hardware:
        for p in (chin, opt):
            p["dollars"] = wt * p["train_flops"] + wi * p.get("inference_flops",
                                                             2 * p["params"] * inference_tokens)
    result["unit"] = unit
    result["params"], result["tokens"] = opt["params"], opt["train_tokens"]
    rows = [("model", "params", "train tokens", "tokens/param", "train FLOPs", "loss"),
            ("Chinchilla-optimal" if params > 0 else "Chinchilla, same train FLOPs",
             chin["params"], chin["train_tokens"], chin["tokens_per_param"],
             chin["train_flops"], chin["loss"]),
            ("inference-optimal", opt["params"], opt["train_tokens"], opt["tokens_per_param"],
             opt["train_flops"], opt["loss"])]
    title = f"{inference_tokens:.3g} inference tokens, law {law}"
    if "saved" in result:
        title += f": saves {result['saved']:.3g} {unit} ({100 * result['saved_fraction']:.1f}%)"
    return _emit("inference", title, rows, result, json, out)


def fit(runs: Path, n_boot: int = 100, flops: float = 0.0, params: float = 0.0,
        tokens: float = 0.0, plot: Path | None = None, seed: int = 0, json: bool = False,
        out: Path | None = None) -> dict:
    """Fit L(N, D) = E + A/N^α + B/D^β to your own runs, with bootstrap 95% intervals.

    Args:
        runs: CSV (header) or JSONL file of runs with columns params, tokens, loss.
        n_boot: bootstrap resamples for the confidence intervals.
        flops: also allocate this budget with the fitted law (N*, D* with intervals).
        params: also predict the loss of this many parameters (with --tokens).
        tokens: training tokens for the prediction.
        plot: write a PNG of the fit against the runs here.
        seed: bootstrap random seed.
        json: print JSON instead of a table.
        out: also write the result as JSON here.
    """
    from llm4all.plan.fit import fit_law, plot_fit, read_runs

    data = read_runs(runs)
    f = fit_law(data, n_boot=n_boot, seed=seed)
    rows = [("quantity", "estimate", "95% low", "95% high")]
    result: dict = {"n_runs": len(data)}
    for key in ("E", "A", "B", "alpha", "beta"):
        est = f.interval(lambda law, k=key: getattr(law, k))
        result[key] = est
        rows.append((key, *est))
    if flops > 0:
        for key, idx in (("params", 0), ("tokens", 1)):
            est = f.interval(lambda law, i=idx: float(law.optimal(flops)[i]))
            result[key] = est
            rows.append((f"{key} at C={flops:.3g}", *est))
    if params > 0 and tokens > 0:
        result["predicted_loss"] = f.interval(lambda law: float(law.loss(params, tokens)))
        rows.append((f"loss(N={params:.3g}, D={tokens:.3g})", *result["predicted_loss"]))
    if plot is not None:
        result["plot"] = str(plot_fit(f, plot))
    return _emit("fit", f"fit of {len(data)} runs from {runs}", rows, result, json, out)


def memory(model: str = "", mode: Literal["train", "inference"] = "train", batch: int = 1,
           seq: int = 2048,
           dtype: Literal["fp32", "fp16", "bf16", "int8", "int4", "ternary"] = "bf16",
           master_weights: bool = True,
           optimizer: Literal["adamw", "adamw8bit", "adafactor", "lion", "sgd"] = "adamw",
           recompute: Literal["none", "selective", "full"] = "none",
           attention: Literal["flash", "math"] = "flash", lora_rank: int = 0,
           base_dtype: str = "",
           sharding: Literal["none", "zero1", "zero2", "zero3", "fsdp"] = "none",
           gpus: int = 1, kv_dtype: str = "", head: Literal["hf", "fused"] = "hf",
           hardware: str = "", hardware_file: Path | None = None, hidden: int | None = None,
           layers: int | None = None, heads: int | None = None, kv_heads: int | None = None,
           intermediate: int | None = None, vocab: int | None = None,
           tied_embeddings: bool = False, measure: bool = False, steps: int = 3,
           device: str = "auto", json: bool = False, out: Path | None = None) -> dict:
    """Peak memory as a per-component breakdown (summed), a verdict and the fixes that fit.

    Args:
        model: preset name (smollm2-135m, llama-3.2-1b, ...), HF model directory or .gguf file.
        mode: train or inference.
        batch: micro-batch per GPU (sequences).
        seq: sequence length (inference: prompt + generated tokens held in the KV cache).
        dtype: weights/activations dtype: fp32, fp16, bf16 (int8, int4, ternary for inference).
        master_weights: keep an fp32 master copy when training in 16-bit (mixed precision).
        optimizer: adamw, adamw8bit, adafactor, lion or sgd.
        recompute: activation recomputation: none, selective or full (checkpointing).
        attention: flash (SDPA/FlashAttention, no s² memory) or math (eager attention).
        lora_rank: > 0 trains LoRA adapters of this rank on every linear layer.
        base_dtype: frozen base dtype under LoRA, e.g. int4 for QLoRA (default: --dtype).
        sharding: none, zero1, zero2, zero3 or fsdp (over --gpus).
        gpus: data-parallel GPUs.
        kv_dtype: KV-cache dtype for inference (default: --dtype); int8/int4 count KIVI's fp16
            scale and minimum per 32 values, as `generate --kv-dtype` and `eval kv-cache` run it.
        head: output head + loss in training: hf (full logits, as transformers computes them) or
            fused (llm4all train's chunked head + loss, which never holds all the logits).
        hardware: name from the hardware table: say whether it fits, and how to make it fit.
        hardware_file: YAML file adding/overriding hardware entries.
        hidden: hidden size (instead of, or overriding, --model).
        layers: number of layers.
        heads: attention heads.
        kv_heads: key/value heads (grouped-query attention).
        intermediate: MLP width.
        vocab: vocabulary size.
        tied_embeddings: the output layer shares the input embedding (with explicit numbers).
        measure: run this configuration on this machine for a few steps and print measured peak
            memory and throughput beside the prediction.
        steps: steps to run with --measure.
        device: where --measure runs: auto (CUDA when present, else CPU), cpu, cuda or cuda:N.
        json: print JSON instead of a table.
        out: also write the result as JSON here.
    """
    arch = resolve_arch(model, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                        intermediate=intermediate, vocab=vocab, tied_embeddings=tied_embeddings)
    setup = Setup(mode=mode, batch=batch, seq=seq, dtype=dtype, master_weights=master_weights,
                  optimizer=optimizer, recompute=recompute, attention=attention,
                  lora_rank=lora_rank, base_dtype=base_dtype, sharding=sharding, gpus=gpus,
                  kv_dtype=kv_dtype, head=head)
    parts = breakdown(arch, setup)
    need = total(parts)
    result = {"params": arch.n_params(), "arch": arch.to_dict(), "setup": setup.__dict__,
              "components_bytes": parts, "total_bytes": need}
    rows = [("component", "GiB", "share")]
    rows += [(k, v / GIB, f"{100 * v / need:.1f}%") for k, v in parts.items()]
    rows.append(("total (sum)", need / GIB, "100%"))
    if measure:
        from llm4all.models.device import resolve_device
        from llm4all.plan.measure import measure as run_measure

        m = run_measure(arch, setup, steps=steps, device=str(resolve_device(device)))
        result["measured"] = m
        rows.append(("measured peak (this machine)", m["peak_bytes"] / GIB,
                     f"ratio {m['peak_bytes'] / need:.3f}"))
        rows.append(("measured tokens/s", m["tokens_per_s"], ""))
    if hardware:
        name, hw = load_hardware(hardware, hardware_file)
        v = costs.verdict(arch, setup, hw)
        result["verdict"] = {"hardware": name, "fits": v["fits"], "usable_bytes": v["usable_bytes"],
                             "fixes": [{k: (f[k] if k != "setup" else f[k].__dict__) for k in f}
                                       for f in v["fixes"]]}
        rows.append((f"{name}: {'FITS' if v['fits'] else 'DOES NOT FIT'}",
                     v["usable_bytes"] / GIB, "usable"))
        for i, f in enumerate(v["fixes"], 1):
            rows.append((f"fix {i}: {f['change']}", f["total_bytes"] / GIB, f["tradeoff"]))
    title = f"{mode} memory: {arch.n_params() / 1e6:.1f}M params, batch {batch} × seq {seq}, {dtype}"
    return _emit("memory", title, rows, result, json, out)


def cost(flops: float = 0.0, params: float = 0.0, tokens: float = 0.0, hardware: str = "a100-80gb",
         mfu: float = 0.4, gpus: int = 1, hardware_file: Path | None = None,
         json: bool = False) -> dict:
    """Training cost: FLOPs (6·N·D) to PF-days, GPU-hours, wall-clock and money.

    Args:
        flops: training FLOPs (or give --params and --tokens).
        params: model parameters N.
        tokens: training tokens D.
        hardware: name from the hardware table (llm4all plan hardware lists it).
        mfu: model FLOPs utilisation, 0-1.
        gpus: GPUs used in parallel (wall-clock = GPU-hours / gpus).
        hardware_file: YAML file adding/overriding hardware entries.
        json: print JSON instead of a table.
    """
    if flops <= 0:
        if params <= 0 or tokens <= 0:
            raise UserError("give --flops, or both --params and --tokens")
        flops = 6 * params * tokens
    name, hw = load_hardware(hardware, hardware_file)
    result = {"hardware": name, "mfu": mfu, "gpus": gpus, **costs.training_cost(flops, hw, mfu, gpus)}
    rows = [("quantity", "value")] + [(k, v) for k, v in result.items() if k != "hardware"]
    return _emit("cost", f"cost on {gpus} × {name} at {100 * mfu:.0f}% MFU", rows, result, json, None)


def hardware(hardware_file: Path | None = None, json: bool = False) -> dict:
    """List the hardware table (peak FLOP/s, memory, price), with your YAML overrides applied.

    Args:
        hardware_file: YAML file adding/overriding hardware entries.
        json: print JSON instead of a table.
    """
    table = hardware_table(hardware_file)
    result = {k: v.__dict__ for k, v in table.items()}
    rows = [("name", "peak FLOP/s", "memory GiB", "$/hour", "note")]
    rows += [(k, v.flops, v.memory_gib, v.price_per_hour, v.note) for k, v in table.items()]
    return _emit("hardware", "hardware", rows, result, json, None)
