"""Inference speed and memory: prefill and decode tokens/s, per-token latency, peak RSS.

- Prefill: one forward pass over a prompt of L tokens (building the KV cache, as generation's
  first step does); tokens/s = B·L / seconds, best of ``repeats`` runs.
- Decode: ``model.generate`` with the KV cache (``use_cache=True``), greedy, exactly N new
  tokens (``min_new_tokens = max_new_tokens``). A stopping criterion stamps the clock after
  every step; the gaps between stamps are the per-token decode latencies (the first step, which
  includes the prefill, is left out). Decode tokens/s = B·(N-1) / (last stamp - first stamp).
  Latency percentiles p50/p90/p99 are over the steps of all repeats.
- Batch sweep: decode tokens/s and per-step latency for each batch size B.
- KV cache (``--kv-dtype``): decode runs with a cache in that dtype (``models/kvcache.py``:
  fp16/bf16/fp32, or KIVI int8/int4); its bytes per cached token are measured from its tensors.
- Energy per decoded token (``evaluate/energy.py``): RAPL's package counters around a batch-1
  decode where the machine exposes them, else an estimate from the decode step's
  multiply-accumulates and bytes moved at Horowitz's (2014) per-operation energies, labelled so.
- Peak memory: the resident-set high-water mark (VmHWM in ``/proc/self/status``) of a
  fresh Python process that loads the model and runs the largest prefill and the largest batch's
  decode, next to the RSS right after loading. It includes the interpreter, torch and
  transformers (a few hundred MB); ``after_load`` minus the RSS before loading is the model.

Timings are wall-clock on whatever else the machine is running: report the load (``uptime``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from llm4all.errors import UserError


def _ids(model, batch: int, length: int, seed: int = 0):
    import torch

    from llm4all.models.device import model_device

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=g).to(model_device(model))


def _clock(model) -> float:
    """``time.perf_counter()`` once the model's device has finished its queued work (CUDA is async)."""
    import torch

    from llm4all.models.device import model_device

    if model_device(model).type == "cuda":
        torch.cuda.synchronize(model_device(model))
    return time.perf_counter()


def prefill_speed(model, length: int, batch: int = 1, repeats: int = 3) -> dict:
    """Best-of-``repeats`` tokens/s of one forward pass over (batch, length) tokens."""
    import torch

    x, best = _ids(model, batch, length), float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            start = _clock(model)
            model(input_ids=x, use_cache=True)
            best = min(best, _clock(model) - start)
    return {"prompt_tokens": length, "batch": batch, "seconds": best, "tokens_per_s": batch * length / best}


def decode_speed(model, new_tokens: int = 32, batch: int = 1, prompt: int = 32, repeats: int = 2,
                 kv_dtype: str = "auto") -> dict:
    """Decode tokens/s and per-step latencies (seconds) of greedy ``generate`` with a KV cache
    (in ``kv_dtype``; its bytes per cached token per sequence measured at the end)."""
    import numpy as np
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    from llm4all.models.kvcache import cache_bytes, kv_cache

    if new_tokens < 2:
        raise UserError("--new-tokens must be at least 2 (the first step includes the prefill)")

    class Stamp(StoppingCriteria):
        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores, **kwargs):
            self.times.append(_clock(model))
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    x = _ids(model, batch, prompt)
    steps, rates = [], []
    pad = model.config.eos_token_id if model.config.pad_token_id is None else model.config.pad_token_id
    pad = pad[0] if isinstance(pad, list) else pad
    for _ in range(repeats):
        stamp, cache = Stamp(), kv_cache(model, kv_dtype)
        with torch.inference_mode():
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, use_cache=True,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad,
                                 stopping_criteria=StoppingCriteriaList([stamp]), cache=cache)
        assert out.shape[1] == prompt + new_tokens and len(stamp.times) == new_tokens
        gaps = np.diff(stamp.times)  # (new_tokens - 1,) seconds per decode step
        steps.extend(gaps.tolist())
        rates.append(batch * len(gaps) / gaps.sum())
    p50, p90, p99 = np.percentile(steps, [50, 90, 99])
    return {"batch": batch, "new_tokens": new_tokens, "tokens_per_s": max(rates),
            "latency_ms": {"p50": 1e3 * p50, "p90": 1e3 * p90, "p99": 1e3 * p99}, "kv_dtype": kv_dtype,
            "kv_bytes_per_token": cache_bytes(cache) / (batch * cache.get_seq_length())}


def weight_bytes(model) -> int:
    """Bytes of the weights one decode step reads: parameters and buffers (packed codes), counted
    once when shared, without the input embedding unless it is also the output head."""
    def tensors(module) -> set[int]:  # a packed embedding holds int8 rows and scales, no weight
        return {id(t) for t in [*module.parameters(), *module.buffers()]} if module is not None else set()

    embedding = tensors(model.get_input_embeddings())
    skip = embedding - tensors(model.get_output_embeddings())  # a tied head reads them
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen and id(t) not in skip:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def decode_energy(model, dtype: str, new_tokens: int, kv_dtype: str = "auto", prompt: int = 32,
                  decoded: dict | None = None) -> dict:
    """Joules per decoded token at batch 1: RAPL around a decode run where readable, else an
    estimate. ``decoded``: a batch-1 ``decode_speed`` result of the same run, whose cache size
    the estimate reuses instead of decoding again."""
    from llm4all.evaluate.energy import Rapl, compute_type, estimate

    rapl = Rapl.find()
    if rapl is None and decoded is not None:
        return estimate(model.config, weight_bytes=weight_bytes(model), context=prompt + new_tokens // 2,
                        kv_bytes_per_token=decoded["kv_bytes_per_token"], compute=compute_type(dtype))
    before = rapl.read() if rapl is not None else None
    start = _clock(model)
    run = decode_speed(model, new_tokens, 1, prompt, repeats=1, kv_dtype=kv_dtype)
    if rapl is not None:
        joules, seconds = rapl.joules_since(before), _clock(model) - start
        return {"joules_per_token": joules / new_tokens, "watts": joules / seconds, "tokens": new_tokens,
                "source": f"RAPL ({len(rapl.files)} counters: the whole package, other processes and "
                          f"idle power included; {prompt}-token prompt + {new_tokens} tokens)"}
    return estimate(model.config, weight_bytes=weight_bytes(model), context=prompt + new_tokens // 2,
                    kv_bytes_per_token=run["kv_bytes_per_token"], compute=compute_type(dtype))


def peak_memory(model: str, dtype: str, length: int, batch: int, new_tokens: int,
                device: str = "cpu") -> dict:
    """RSS (MiB) before and after loading, and the high-water mark, of a fresh process (on CUDA,
    also the peak of torch's allocations on the GPU)."""
    code = ("import json,sys;from llm4all.evaluate.speed import _child;"
            "print(json.dumps(_child(*json.loads(sys.argv[1]))))")
    args = json.dumps([str(model), dtype, length, batch, new_tokens, device])
    proc = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True,
                          env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    if proc.returncode:
        raise RuntimeError(f"peak-memory subprocess failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rss_mib() -> float:
    from llm4all.plan.measure import proc_status

    return proc_status("VmRSS") / 2**20


def _child(model: str, dtype: str, length: int, batch: int, new_tokens: int, device: str = "cpu") -> dict:
    import torch  # (counted in the baseline)

    from llm4all.models.load import load

    before = _rss_mib()
    net, _ = load(model, dtype=dtype, device=device)
    after = _rss_mib()
    prefill_speed(net, length, 1, repeats=1)
    decode_speed(net, new_tokens, batch, repeats=1)
    from llm4all.plan.measure import peak_rss_mib

    result = {"rss_before_load_mib": before, "rss_after_load_mib": after, "peak_rss_mib": peak_rss_mib()}
    if torch.device(device).type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def main(
    model: str,
    *,
    dtypes: list[str] | None = None,
    prompt_lengths: list[int] | None = None,
    new_tokens: int = 32,
    batch_sizes: list[int] | None = None,
    repeats: int = 2,
    memory: bool = True,
    kv_dtype: Literal["auto", "fp32", "fp16", "bf16", "int8", "int4"] = "auto",
    energy: bool = True,
    engine: Literal["auto", "torch", "llama.cpp"] = "auto",
    device: str = "auto",
    out: Path | None = None,
) -> dict:
    """Prefill and decode speed, decode latency percentiles, a batch sweep and peak memory of MODEL.

    Args:
        model: a registered name, an HF directory or a .gguf file.
        dtypes: weight dtypes to measure (float32, bfloat16); default both.
        prompt_lengths: prompt lengths for the prefill measurement (default 64 256 1024).
        new_tokens: tokens generated per decode run (forced with min_new_tokens).
        batch_sizes: batch sizes for the decode sweep (default 1 2 4 8).
        repeats: timed runs per measurement (the best prefill, the best decode rate are kept).
        memory: also measure the peak RSS in a fresh process (costs a model load per dtype).
        kv_dtype: KV cache dtype while decoding: auto (the model's), fp32, fp16, bf16, or int8 /
            int4 (KIVI in torch; llama.cpp's q8_0 / q4_0 for a .gguf).
        energy: also report joules per decoded token (RAPL where readable, else a labelled estimate).
        engine: torch (llm4all's forward: packed int4/int8 kernels included), llama.cpp (a .gguf file
            in llama.cpp, batch 1, the weights' own types), or auto (llama.cpp for a .gguf, else torch).
        device: where the torch engine runs: auto (CUDA when present, else CPU), cpu, cuda, cuda:N.
        out: directory for speed.json (nothing written if not given).
    """
    import torch
    from rich.console import Console

    from llm4all.models.device import resolve_device
    from llm4all.models.load import DTYPES, load
    from llm4all.progress import progress

    dtypes = dtypes or ["float32", "bfloat16"]
    prompt_lengths = prompt_lengths or [64, 256, 1024]
    batch_sizes = batch_sizes or [1, 2, 4, 8]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise UserError(f"--dtypes: unknown dtype {bad[0]!r}; valid: {', '.join(DTYPES)}")
    if min(prompt_lengths) < 1 or min(batch_sizes) < 1 or repeats < 1:
        raise UserError("--prompt-lengths, --batch-sizes and --repeats must be at least 1")
    if engine == "llama.cpp" or (engine == "auto" and str(model).endswith(".gguf")):
        result = _in_llama_cpp(str(model), prompt_lengths, new_tokens, repeats, memory, kv_dtype, energy)
        _show(Console(), f"{model} in llama.cpp", result, result["dtypes"]["gguf"], memory)
        _write(out, model, result)
        return result
    where = str(resolve_device(device))
    result = {"model": str(model), "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
              "runtime": "torch", "device": where, "kv_dtype": kv_dtype, "dtypes": {}}
    console = Console()
    steps = len(dtypes) * (len(prompt_lengths) + len(batch_sizes) + memory)
    with progress("eval speed", total=steps, unit="measurements") as advance:
        for dtype in dtypes:
            net, _ = load(model, dtype=dtype, device=where)
            limit = getattr(net.config, "max_position_embeddings", max(prompt_lengths))
            lengths = [n for n in prompt_lengths if n <= limit] or [limit]
            decode_speed(net, 2, 1, 4, repeats=1, kv_dtype=kv_dtype)  # warm-up
            r = {"prefill": [], "decode": []}
            for n in lengths:
                r["prefill"].append(prefill_speed(net, n, 1, repeats))
                advance()
            advance(len(prompt_lengths) - len(lengths))
            for b in batch_sizes:
                r["decode"].append(decode_speed(net, new_tokens, b, repeats=repeats, kv_dtype=kv_dtype))
                advance()
            if energy:
                b1 = next((d for d in r["decode"] if d["batch"] == 1), None)  # the estimate needs no rerun
                r["energy"] = decode_energy(net, dtype, new_tokens, kv_dtype, decoded=b1)
            if memory:
                r["memory"] = peak_memory(model, dtype, max(lengths), max(batch_sizes), new_tokens, where)
                advance()
            result["dtypes"][dtype] = r
            _show(console, f"{model} {dtype}", result, r, memory)
            del net
    _write(out, model, result)
    return result


def _show(console, title: str, result: dict, r: dict, memory: bool) -> None:
    from rich.table import Table

    load_avg = result["load_average"][0]
    table = Table(title=f"{title} ({result['threads']} threads, load average {load_avg:.1f})")
    for col in ("measure", "size", "tokens/s", "p50 ms", "p90 ms", "p99 ms"):
        table.add_column(col, justify="right")
    for p in r["prefill"]:
        table.add_row("prefill", f"L={p['prompt_tokens']}", f"{p['tokens_per_s']:.0f}", "", "", "")
    for d in r["decode"]:
        lat = d["latency_ms"]
        table.add_row("decode", f"B={d['batch']}", f"{d['tokens_per_s']:.1f}", f"{lat['p50']:.1f}",
                      f"{lat['p90']:.1f}", f"{lat['p99']:.1f}")
    if r.get("decode"):
        d = r["decode"][0]
        table.add_row("KV bytes/token", d.get("kv_dtype", "auto"), f"{d['kv_bytes_per_token']:,.0f}",
                      "", "", "")
    if r.get("energy"):
        e = r["energy"]
        label = "RAPL" if e["source"].startswith("RAPL") else "estimate"
        table.add_row("energy mJ/token", label, f"{1e3 * e['joules_per_token']:.2f}", "", "", "")
    if memory:
        m = r["memory"]
        table.add_row("peak RSS MiB", f"{m['peak_rss_mib']:.0f}",
                      f"model +{m['rss_after_load_mib'] - m['rss_before_load_mib']:.0f}", "", "", "")
    console.print(table)


def _write(out: Path | None, model: str, result: dict) -> None:
    from llm4all.runs import write_json, write_manifest

    if out is not None:
        write_json(Path(out) / "speed.json", result)
        write_manifest(out, "eval speed", inputs={"model": str(model)}, metrics=headline(result),
                       results=result)


def _in_llama_cpp(model: str, prompt_lengths: list[int], new_tokens: int, repeats: int, memory: bool,
                  kv_dtype: str = "auto", energy: bool = True) -> dict:
    """Prefill and batch-1 decode of a GGUF in llama.cpp; peak RSS of a fresh process running it."""
    from llm4all.evaluate.llamacpp import gguf_speed
    from llm4all.threads import free_cores

    if not Path(model).is_file():
        raise UserError(f"--engine llama.cpp runs a .gguf file; {model!r} is not one")
    threads = free_cores()
    gguf_speed(model, [8], 4, 1, threads, kv_dtype)  # warm-up
    r = gguf_speed(model, prompt_lengths, new_tokens, repeats, threads, kv_dtype, energy)
    if memory:
        code = ("import json,sys;from llm4all.evaluate.llamacpp import gguf_memory_child as f;"
                "print(json.dumps(f(*json.loads(sys.argv[1]))))")
        args = json.dumps([model, max(prompt_lengths), new_tokens, threads, kv_dtype])
        proc = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"peak-memory subprocess failed:\n{proc.stderr[-2000:]}")
        r["memory"] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"model": model, "threads": threads, "load_average": os.getloadavg(), "runtime": "llama.cpp",
            "kv_dtype": kv_dtype, "dtypes": {"gguf": r}}


def headline(result: dict) -> dict:
    """The numbers a model comparison needs: batch-1 decode latency and rate, peak RSS (float32 first)."""
    runs = result.get("dtypes") or {}
    if not runs:
        return {}
    dtype = "float32" if "float32" in runs else next(iter(runs))
    r = runs[dtype]
    runtime = result.get("runtime", "torch")
    out: dict = {"dtype": dtype, "runtime": "torch (llm4all kernels)" if runtime == "torch" else runtime,
                 "threads": result.get("threads"),
                 "load_average": list(result.get("load_average") or [])}
    b1 = [d for d in r.get("decode", []) if d.get("batch") == 1]
    if b1:
        out["decode_tokens_per_s"] = b1[0]["tokens_per_s"]
        out["decode_ms_per_token"] = b1[0]["latency_ms"]["p50"]
    if r.get("memory"):
        out["peak_rss_bytes"] = int(r["memory"]["peak_rss_mib"] * 2**20)
    if r.get("energy"):
        out["joules_per_token"] = r["energy"]["joules_per_token"]
        out["energy_source"] = r["energy"]["source"]
    return out
