"""``llm4all export``: write a model as a Hugging Face directory or a GGUF file.

The model is anything ``llm4all.models.load`` accepts (a registered name, an HF directory, a
.gguf file, a packed checkpoint). ``--format hf`` writes safetensors in ``--dtype``, and a
packed checkpoint as compressed-tensors (``export/compressed_tensors.py``; vLLM serves it) where
its layout maps exactly. ``--format gguf`` writes one file in ``--type`` for llama.cpp and
transformers' ``gguf_file=``: ``auto`` (the default) writes a compressed checkpoint's codes and
scales in the ggml block types they map to exactly (``gguf_packed.py``; a line names any tensor
that cannot map exactly and the closest type used) and a dense model in F16; the K-quants
(q4_k_m, q5_k_m, q6_k) go through llama.cpp's llama-quantize, with an importance matrix from
``--calib`` token shards (``export/kquants.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from llm4all.errors import UserError

GgufType = Literal["auto", "f32", "f16", "q8_0", "q5_0", "q4_1", "q4_0", "q4_k_m", "q5_k_m", "q6_k"]


def main(
    model: str,
    *,
    out: Path,
    format: Literal["hf", "gguf"] = "gguf",
    type: GgufType = "auto",
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16",
    calib: Path | None = None,
    calib_tokens: int = 32768,
) -> dict:
    """Export a model to a Hugging Face safetensors directory or a llama.cpp GGUF file.

    Args:
        model: a registered name (llm4all ls models), an HF model directory, a .gguf file or a
            packed checkpoint (llm4all compress).
        out: output directory (hf), or .gguf file (gguf; a directory gets model-TYPE.gguf).
        format: hf (config.json + model.safetensors + tokenizer) or gguf (one file, llama arch).
        type: GGUF type of 2-D weights (gguf); auto: a compressed model's exact ggml types, f16
            otherwise; q4_k_m, q5_k_m, q6_k: llama.cpp's K-quants.
        dtype: safetensors dtype (hf only; a packed model's scales stay float16 unless float32).
        calib: token shards (llm4all tokenize) for llama.cpp's importance matrix (K-quants only).
        calib_tokens: calibration tokens read from --calib.
    """
    from llm4all.export.kquants import KQUANTS

    if calib is not None and not (format == "gguf" and type in KQUANTS):
        raise UserError(f"--calib needs --format gguf with a K-quant --type ({', '.join(KQUANTS)})")
    _refuse_sinks(model)
    if format == "hf":
        from llm4all.export.hf import export_hf

        result = export_hf(model, out, dtype=dtype)
    elif format == "gguf":
        result = _gguf(model, Path(out), type, calib, calib_tokens)
    else:
        raise UserError(f"--format {format!r} is not supported; valid: hf, gguf")
    show(result)
    return result


def _refuse_sinks(model: str) -> None:
    """Attention sinks are llm4all's own mask (models/window.py): transformers, vLLM and llama.cpp
    would run the exported model without them, so every number measured here would not hold."""
    import json

    config = Path(model) / "config.json"  # registered names and GGUF files have no sinks
    sinks = json.loads(config.read_text()).get("attention_sinks", 0) if config.is_file() else 0
    if sinks:
        raise UserError(f"{model}: it was trained with {sinks} attention sinks, a mask only llm4all "
                        "applies; other engines would run it without them. Train without "
                        "--attention-sinks to export, or run it with llm4all (generate, serve through chat)")


def _gguf(model: str, out: Path, type: str, calib: Path | None, calib_tokens: int) -> dict:
    """One GGUF file; a directory (a recipe stage's) gets model-<type>.gguf and a manifest."""
    from llm4all.export.gguf import export_gguf
    from llm4all.export.kquants import KQUANTS
    from llm4all.runs import MANIFEST, read_manifest, write_manifest

    stage = out.suffix != ".gguf"
    target = out / f"model-{type}.gguf" if stage else out
    if stage and (out / MANIFEST).exists() and (read_manifest(out) or {}).get("command") != "export":
        raise UserError(f"--out {out}: holds another stage's {MANIFEST}; export to a new directory")
    if type in KQUANTS:
        from llm4all.export.kquants import export_kquant

        result = export_kquant(model, target, type=type, calib=calib, calib_tokens=calib_tokens)
    else:
        result = export_gguf(model, target, type=type)
    if result.get("not_exact"):
        print(f"export: not exact: {not_exact_line(result['not_exact'])}")
    if stage:
        write_manifest(out, "export", models=[{"path": target.name, "role": "export", "format": "gguf",
                                               "type": result.get("type", type), "source": str(model)}],
                       inputs={"model": str(model), "calib": str(calib) if calib else None},
                       metrics={"bytes": result.get("bytes"), "seconds": result.get("seconds")},
                       gguf={k: result[k] for k in ("type", "tensor_types", "lossless", "not_exact")
                             if k in result})
    return result


def not_exact_line(notes: dict[str, int]) -> str:
    """The tensors that could not map exactly, in one line: "N tensors: reason; M tensors: reason"."""
    return "; ".join(f"{n} tensor{'s' * (n > 1)}: {note}" for note, n in notes.items())


def show(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"llm4all export → {result['out']}", show_header=False)
    for key, value in result.items():
        if key == "sha256":
            value = ", ".join(f"{name} {digest[:16]}…" for name, digest in value.items())
        elif key == "tensor_types":
            value = ", ".join(f"{n} {t}" for t, n in sorted(value.items()))
        elif key == "not_exact":
            value = not_exact_line(value) or "-"
        elif key.endswith("bytes"):
            value = f"{value:,} ({value / 2**20:.1f} MiB)"
        table.add_row(key, str(value))
    Console().print(table)
