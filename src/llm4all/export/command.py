"""``llm4all export``: write a model as a Hugging Face directory or a GGUF file.

The model is anything ``llm4all.models.load`` accepts (a registered name, an HF directory, a
.gguf file). ``--format hf`` writes safetensors in ``--dtype``, and a packed checkpoint as
compressed-tensors (``export/compressed_tensors.py``; vLLM serves it) where its layout maps
exactly. ``--format gguf`` writes one file in ``--type`` for llama.cpp, and transformers'
``gguf_file=``: ``auto`` (the default) writes a compressed checkpoint's codes and scales in the
ggml block types they map to exactly (``gguf_packed.py``; a line names any tensor that cannot
map exactly and the closest type used) and a dense model in F16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from llm4all.errors import UserError


def main(
    model: str,
    *,
    out: Path,
    format: Literal["hf", "gguf"] = "gguf",
    type: Literal["auto", "f32", "f16", "q8_0", "q5_0", "q4_1", "q4_0"] = "auto",
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16",
) -> dict:
    """Export a model to a Hugging Face safetensors directory or a llama.cpp GGUF file.

    Args:
        model: a registered name (llm4all ls models), an HF model directory or a .gguf file.
        out: output directory (hf), or .gguf file (gguf; a directory gets model-TYPE.gguf).
        format: hf (config.json + model.safetensors + tokenizer) or gguf (one file, llama arch).
        type: GGUF type of 2-D weights (gguf); auto: a compressed model's exact ggml types, f16
            otherwise.
        dtype: safetensors dtype (hf only; a packed model's scales stay float16 unless float32).
    """
    if format == "hf":
        from llm4all.export.hf import export_hf

        result = export_hf(model, out, dtype=dtype)
    elif format == "gguf":
        from llm4all.export.gguf import export_gguf
        from llm4all.runs import read_manifest, write_manifest

        # a directory (e.g. a recipe stage's) gets model-<type>.gguf inside it, and a manifest
        stage = Path(out).suffix != ".gguf"
        target = Path(out) / f"model-{type}.gguf" if stage else Path(out)
        manifest = read_manifest(out) if stage else None
        if stage and (Path(out) / "llm4all.json").exists() and (manifest or {}).get("command") != "export":
            raise UserError(f"--out {out}: holds another stage's llm4all.json; export to a new directory")
        result = export_gguf(model, target, type=type)
        if result.get("not_exact"):
            print(f"export: not exact: {not_exact_line(result['not_exact'])}")
        if stage:
            write_manifest(out, "export", models=[{"path": target.name, "role": "export", "format": "gguf",
                                                   "type": result.get("type", type), "source": str(model)}],
                           inputs={"model": str(model)},
                           metrics={"bytes": result["bytes"], "seconds": result["seconds"]},
                           gguf={k: result[k] for k in ("type", "tensor_types", "lossless", "not_exact")
                                 if k in result})
    else:
        raise UserError(f"--format {format!r} is not supported; valid: hf, gguf")
    show(result)
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
