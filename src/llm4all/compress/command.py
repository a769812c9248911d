"""``llm4all compress``: quantise, prune or factorise a model and write a packed checkpoint.

The method is one registered entry (``llm4all ls quantizers|pruners|factorizers``) chosen
as ``{name: gptq, bits: 4, group_size: 128}``. Methods that need calibration statistics
read windows from a token-shard directory (``--calib``). The output is a Hugging Face-like
directory: ``config.json``, the tokenizer, ``model.safetensors`` with packed tensors and
``llm4all_quant.json`` describing them (format in docs/compress.md); ``load_compressed``
(and ``llm4all.models.load.load``) turns it back into a runnable model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from llm4all.compress.embedding import PackedEmbedding, TiedHead, embedding_spec
from llm4all.compress.formats import FORMAT, dense_from_sparse, sparse_tensors
from llm4all.compress.method import Method
from llm4all.errors import UserError, did_you_mean
from llm4all.runs import atomic_dir, write_json

QUANT_FILE = "llm4all_quant.json"
QUANTIZED = ("int", "int8", "ternary")  # module kinds whose weights stay packed in memory


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


def module_specs(model: nn.Module) -> dict[str, dict]:
    """llm4all_quant.json entries: every compressed module, plus Linears whose shape changed."""
    specs = {}
    for name, m in model.named_modules():
        if hasattr(m, "spec"):
            specs[name] = m.spec()
        elif isinstance(m, nn.Linear) and name != "lm_head":
            kind = getattr(m, "llm4all_kind", "dense")
            if kind == "sparse" or getattr(m, "llm4all_resized", False):
                specs[name] = {"kind": kind, "in_features": m.in_features,
                               "out_features": m.out_features, "bias": m.bias is not None}
    return specs


def save_compressed(model: nn.Module, tokenizer, out: Path, info: dict) -> dict:
    """Write ``model`` (with compressed modules) as a packed checkpoint directory."""
    from safetensors.torch import save_file

    specs = module_specs(model)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    tensors: dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        if tied and key == "lm_head.weight":
            continue
        if specs.get(owner, {}).get("kind") == "sparse" and leaf == "weight":
            for k, v in sparse_tensors(t.detach()).items():
                tensors[f"{owner}.{k}"] = v.contiguous()
            continue
        if t.is_floating_point() and not (owner in specs and leaf == "scales"):
            t = t.to(torch.float16)  # embeddings, norms, dense weights: fp16 on disk
        tensors[key] = t.detach().contiguous()
    with atomic_dir(out) as tmp:
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        write_json(tmp / QUANT_FILE, {"format": FORMAT, "dense_dtype": "float16", **info,
                                      "modules": specs})
    return specs


def load_compressed(path: str | Path, dtype: str = "float32"):
    """Load a packed checkpoint into a runnable model: ``(model, tokenizer)``.

    Packed weights stay packed. In a quantised checkpoint the embedding (and output head) stays
    float16 or int8 too (``embedding.PackedEmbedding``) and returns ``dtype`` activations;
    other dense tensors (norms; every weight of a pruned or factorised model) become ``dtype``.
    """
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llm4all.compress.qlinear import from_spec
    from llm4all.compress.recover import keep_sparsity
    from llm4all.models.load import DTYPES, _quiet

    path = Path(path)
    meta_file = path / QUANT_FILE
    if not meta_file.is_file():
        raise UserError(f"{path}: not a compressed checkpoint (no {QUANT_FILE})")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise UserError(f"{meta_file}: format {meta.get('format')!r}, expected {FORMAT!r}")
    torch_dtype = getattr(torch, DTYPES.get(dtype, "float32"))
    with _quiet(transformers):
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    specs = dict(meta["modules"])
    if any(spec["kind"] in QUANTIZED for spec in specs.values()):
        specs.update(_packed_embedding_specs(model, specs, config))
    with torch.device("meta"):  # empty modules: their tensors come from the file, no zeros first
        for name, spec in specs.items():
            model.set_submodule(name, from_spec(spec, torch_dtype))
    state = load_file(str(path / "model.safetensors"))
    for name, spec in specs.items():
        if spec["kind"] == "sparse":
            shape = (spec["out_features"], spec["in_features"])
            mask, values = state.pop(f"{name}.mask"), state.pop(f"{name}.values")
            state[f"{name}.weight"] = dense_from_sparse(mask, values, shape, torch_dtype)
    for key, t in state.items():
        owner, _, leaf = key.rpartition(".")
        kind = specs.get(owner, {}).get("kind", "dense")
        if t.is_floating_point() and kind in ("dense", "sparse", "lowrank"):
            state[key] = t.to(torch_dtype)
        elif t.is_floating_point() and leaf == "bias":
            state[key] = t.float()
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    del state
    if config.tie_word_embeddings:
        embedding = model.get_input_embeddings()
        if isinstance(embedding, PackedEmbedding):
            model.lm_head = TiedHead(embedding)
        else:
            model.lm_head.weight = embedding.weight
        missing = [k for k in missing if not k.startswith("lm_head.")]
    if missing or unexpected:
        raise UserError(f"{path}: model.safetensors does not match {QUANT_FILE}: "
                        f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, spec in specs.items():
        if spec["kind"] == "sparse":  # training (recovery) keeps pruned weights at zero
            keep_sparsity(model.get_submodule(name))
    for name, attrs in meta.get("attributes", {}).items():  # e.g. per-layer num_key_value_groups
        for attr, value in attrs.items():
            setattr(model.get_submodule(name), attr, value)
    for name, m in list(model.named_modules()):  # non-persistent buffers (rotary inv_freq)
        if any(b.is_meta for b in m.buffers(recurse=False)):
            model.set_submodule(name, type(m)(config=config))
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise UserError(f"{path}: some tensors were not in model.safetensors")
    with _quiet(transformers):
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.eval(), tokenizer


def _packed_embedding_specs(model: nn.Module, specs: dict, config) -> dict:
    """A quantised checkpoint keeps its float16 embedding (and untied head) as stored, not upcast."""
    names = {id(m): n for n, m in model.named_modules()}
    out = {}
    roles = [(model.get_input_embeddings(), "embedding")]
    if not config.tie_word_embeddings and model.get_output_embeddings() is not None:
        roles.append((model.get_output_embeddings(), "head"))
    for module, role in roles:
        name = names[id(module)]
        if name not in specs:
            rows, cols = module.weight.shape
            out[name] = embedding_spec(rows, cols, "float16", role)
    return out


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def main(model: str, *, out: Path, method: dict, calib: Path | None = None, calib_tokens: int = 16384,
         seq_len: int = 128, calib_dtype: Literal["bfloat16", "float32"] = "bfloat16",
         sequential: Literal["quantized", "original"] = "quantized",
         embeddings: Literal["float16", "int8"] = "float16", recover_steps: int = 0,
         recover_data: Path | None = None, recover_options: dict | None = None, threads: int = 0,
         seed: int = 0) -> dict:
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
    """
    from rich.console import Console
    from rich.table import Table

    from llm4all.compress.calibrate import calibration_windows, compress_layers, free_cores, thread_limit
    from llm4all.compress.embedding import pack_embeddings
    from llm4all.models.load import DTYPES, load

    start = time.perf_counter()
    chosen = build_method(method)  # unknown names and options fail before any work
    if calib_dtype not in DTYPES:
        raise UserError(f"--calib-dtype: unknown dtype {calib_dtype!r}; valid: bfloat16, float32")
    if chosen.stats != "none" and calib is None:
        raise UserError(f"--calib: method {chosen.name!r} needs calibration data (a token-shard directory)")
    if embeddings not in ("float16", "int8"):
        raise UserError(f"--embeddings: {embeddings!r} is not valid; valid: float16, int8")
    recover_data = recover_data or calib
    if recover_steps < 0 or (recover_steps and recover_data is None):
        raise UserError("--recover-steps needs a non-negative count and token shards "
                        "(--recover-data or --calib)")
    if recover_steps:
        from llm4all.compress.recover import check_options

        check_options(recover_options, chosen)
    net, tokenizer = load(model)
    unique = {t.data_ptr(): t for t in net.state_dict().values()}  # a tied head counted once
    before = sum(t.numel() * t.element_size() for t in unique.values())
    ids = calibration_windows(Path(calib), calib_tokens, seq_len, seed) if chosen.stats != "none" else None
    console = Console()
    with thread_limit(free_cores(threads)) as n_threads:
        if chosen.transform is not None:
            report = chosen.transform(net, ids)
        else:
            report = compress_layers(net, chosen, ids, dtype=getattr(torch, DTYPES[calib_dtype]),
                                     sequential=sequential,
                                     progress=lambda i, n: console.print(f"layer {i}/{n}", end="\r"))
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
                                   {**(recover_options or {})}, attributes=info["attributes"], spec=spec)
    if embeddings == "int8":
        pack_embeddings(net, "int8")
    save_compressed(net, tokenizer, Path(out), info)
    result = {"out": str(out), "method": info["method"], "seconds": round(time.perf_counter() - start, 1),
              "compress_seconds": report["seconds"], "bytes_fp32_in_memory": before,
              "bytes_on_disk": dir_bytes(Path(out))}
    if recover_steps:
        result["recovered_val_ppl"] = f"{info['recovery']['val_ppl_before']:.2f} -> " \
                                      f"{info['recovery']['val_ppl_after']:.2f}"
    write_json(Path(out) / "llm4all.json", {"compressed_from": str(model), **result})
    table = Table(title=f"compress {model} -> {out}", show_header=False)
    for k, v in result.items():
        table.add_row(k, str(v))
    console.print(table)
    return result
