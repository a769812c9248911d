"""``llm4all compress``: quantise, prune or factorise a model and write a packed checkpoint.

The method is one registered entry (``llm4all ls quantizers|pruners|factorizers``) chosen
as ``{name: gptq, bits: 4, group_size: 128}``. Methods that need calibration statistics
read windows from a token-shard directory (``--calib``). The output is a Hugging Face-like
directory: ``config.json``, the tokenizer, ``model.safetensors`` with packed tensors and
``llm4all_quant.json`` describing them (format in docs/compress.md, code in
``llm4all.models.packed``); ``llm4all.models.load.load`` turns it back into a runnable model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import torch

from llm4all.compress.method import Method
from llm4all.errors import UserError, did_you_mean
from llm4all.export.gguf_packed import describe, gguf_mapping
from llm4all.models.packed import save_packed
from llm4all.runs import write_manifest


def build_method(method: dict | str) -> Method:
    """Look ``method['name']`` up in the quantizers, pruners and factorizers registries."""
    from llm4all.catalog import FACTORIZERS, PRUNERS, QUANTIZERS

    spec = {"name": method} if isinstance(method, str) else dict(method or {})
    name = spec.get("name")
    for registry in (QUANTIZERS, PRUNERS, FACTORIZERS):
        if name in registry.names():
            return registry.build(spec)
    valid = QUANTIZERS.names() + PRUNERS.names() + FACTORIZERS.names()
    raise UserError(f"--method: unknown method {name!r}; {did_you_mean(str(name), valid)}")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def _check(chosen: Method, calib, calib_dtype: str, embeddings: str, recover_steps: int, recover_data,
           recover_options) -> None:
    """The options' one-line errors, before any work."""
    from llm4all.models.load import DTYPES

    if calib_dtype not in DTYPES:
        raise UserError(f"--calib-dtype: unknown dtype {calib_dtype!r}; valid: bfloat16, float32")
    if chosen.stats != "none" and calib is None:
        raise UserError(f"--calib: method {chosen.name!r} needs calibration data (a token-shard directory)")
    if embeddings not in ("float16", "int8"):
        raise UserError(f"--embeddings: {embeddings!r} is not valid; valid: float16, int8")
    if recover_steps < 0 or (recover_steps and recover_data is None):
        raise UserError("--recover-steps needs a non-negative count and token shards "
                        "(--recover-data or --calib)")
    if recover_steps:
        from llm4all.compress.recover import check_options

        check_options(recover_options, chosen)


def main(model: str, *, out: Path, method: dict, calib: Path | None = None, calib_tokens: int = 16384,
         seq_len: int = 128, calib_dtype: Literal["bfloat16", "float32"] = "bfloat16",
         sequential: Literal["quantized", "original"] = "quantized",
         embeddings: Literal["float16", "int8"] = "float16", recover_steps: int = 0,
         recover_data: Path | None = None, recover_options: dict | None = None, threads: int = 0,
         seed: int = 0, device: str = "auto") -> dict:
    """Compress MODEL with one quantizer, pruner or factorizer and write a packed checkpoint.

    Args:
        model: a registered name, an HF directory or a .gguf file.
        out: output directory (config.json, tokenizer, model.safetensors, llm4all_quant.json).
        method: the method and its options as YAML, e.g. "{name: gptq, bits: 4, group_size: 64}".
        calib: token-shard directory for calibration (needed by gptq, wanda, sparsegpt, llm_int8, ...).
        calib_tokens: calibration tokens, drawn as windows of seq_len from the train split.
        seq_len: calibration window length in tokens.
        calib_dtype: dtype of the calibration forward's matrix products (bfloat16 or float32).
        sequential: each Linear sees the "quantized" outputs of the Linears before it, or the "original" ones.
        embeddings: storage of the embedding (and untied head): float16, or int8 rows with a scale each.
        recover_steps: after pruning/factorising, distil from MODEL for this many steps (0: no recovery).
        recover_data: token shards for recovery (default: --calib).
        recover_options: llm4all distill options for recovery as YAML, e.g. "{lr: 5e-5, mode: offline}".
        threads: compute threads (0: the cores not busy with other processes, from the load average).
        seed: seed for the calibration windows.
        device: where the calibration forward and the recovery run: auto (CUDA when present, else
            CPU), cpu, cuda or cuda:N. The per-Linear solvers and structured pruning run on the CPU.
    """
    from rich.console import Console
    from rich.table import Table

    from llm4all.compress.calibrate import compress_layers
    from llm4all.data.shards import calibration_windows
    from llm4all.models.device import resolve_device
    from llm4all.models.load import DTYPES, load
    from llm4all.models.packed.embedding import pack_embeddings
    from llm4all.progress import progress
    from llm4all.threads import free_cores, thread_limit

    start = time.perf_counter()
    chosen = build_method(method)  # unknown names and options fail before any work
    recover_data = recover_data or calib
    _check(chosen, calib, calib_dtype, embeddings, recover_steps, recover_data, recover_options)
    where = resolve_device(device)
    net, tokenizer = load(model, device=str(where))
    unique = {t.data_ptr(): t for t in net.state_dict().values()}  # a tied head counted once
    before = sum(t.numel() * t.element_size() for t in unique.values())
    ids = calibration_windows(Path(calib), calib_tokens, seq_len, seed) if chosen.stats != "none" else None
    n_layers = len(net.model.layers) if hasattr(net, "model") and hasattr(net.model, "layers") else None
    with thread_limit(free_cores(threads)) as n_threads, progress(f"compress ({chosen.name})", n_layers,
                                                                   "layers") as advance:
        if chosen.transform is not None:
            report = chosen.transform(net.cpu(), ids)
        else:
            report = compress_layers(net, chosen, ids, dtype=getattr(torch, DTYPES[calib_dtype]),
                                     sequential=sequential, progress=lambda i, n: advance())
    report["threads"] = n_threads
    info = {"method": {"name": chosen.name, **chosen.options}, "source": str(model),
            "calibration": {"data": str(calib) if calib else None,
                            "tokens": report.get("calibration_tokens", 0), "seq_len": seq_len,
                            "dtype": calib_dtype, "sequential": sequential, "seed": seed},
            "embeddings": embeddings, "attributes": report.pop("attributes", {}), "report": report,
            "notes": chosen.notes}
    if recover_steps:
        from llm4all.compress.recover import recover

        work = Path(f"{out}.recovery")  # the distill run and the checkpoint before recovery
        spec = {"source": str(model), "method": info["method"], "calibration": info["calibration"]}
        info["recovery"] = recover(net, tokenizer, str(model), work, recover_steps, Path(recover_data),
                                   {"device": device, **(recover_options or {})},
                                   attributes=info["attributes"], spec=spec)
    net.cpu()  # saved from host memory
    if embeddings == "int8":
        pack_embeddings(net, "int8")
    info["gguf_type"] = gguf_mapping(net)  # the GGUF types `export --type auto` writes, exact or closest
    save_packed(net, tokenizer, Path(out), info)
    result = {"out": str(out), "method": info["method"], "seconds": round(time.perf_counter() - start, 1),
              "compress_seconds": report["seconds"], "bytes_fp32_in_memory": before,
              "bytes_on_disk": dir_bytes(Path(out)), "gguf_type": describe(info["gguf_type"])}
    if recover_steps:
        result["recovered_val_ppl"] = f"{info['recovery']['val_ppl_before']:.2f} -> " \
                                      f"{info['recovery']['val_ppl_after']:.2f}"
    write_manifest(out, "compress", metrics=result, compressed_from=str(model),
                   models=[{"path": ".", "role": "compressed", "format": "packed", "source": str(model),
                            "method": info["method"]}],
                   inputs={"model": str(model), "calib": str(calib) if calib else None})
    table = Table(title=f"compress {model} -> {out}", show_header=False)
    for k, v in result.items():
        table.add_row(k, str(v))
    Console().print(table)
    return result
