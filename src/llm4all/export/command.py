"""``llm4all export``: write a model as a Hugging Face directory or a GGUF file.

The model is anything ``llm4all.models.load`` accepts (a registered name, an HF directory, a
.gguf file): dense weights in, so a compressed checkpoint is exported after it loads back as a
dense model. ``--format hf`` writes safetensors in ``--dtype``; ``--format gguf`` writes one
file in ``--type`` (f32, f16, q8_0, q4_0) for llama.cpp, and transformers' ``gguf_file=``;
the K-quants (q4_k_m, q5_k_m, q6_k) go through llama.cpp's llama-quantize, with an importance
matrix from ``--calib`` token shards (``export/kquants.py``).
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
    type: Literal["f32", "f16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"] = "f16",
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16",
    calib: Path | None = None,
    calib_tokens: int = 32768,
) -> dict:
    """Export a model to a Hugging Face safetensors directory or a llama.cpp GGUF file.

    Args:
        model: a registered name (llm4all ls models), an HF model directory or a .gguf file.
        out: output directory (hf), or .gguf file (gguf; a directory gets model-TYPE.gguf).
        format: hf (config.json + model.safetensors + tokenizer) or gguf (one file, llama arch).
        type: GGUF tensor type for 2-D weights; norms stay f32 (gguf only).
        dtype: safetensors dtype (hf only).
        calib: token shards (llm4all tokenize) for llama.cpp's importance matrix (K-quants only).
        calib_tokens: calibration tokens read from --calib.
    """
    from llm4all.export.kquants import KQUANTS

    if calib is not None and not (format == "gguf" and type in KQUANTS):
        raise UserError(f"--calib needs --format gguf with a K-quant --type ({', '.join(KQUANTS)})")
    if format == "hf":
        from llm4all.export.hf import export_hf

        result = export_hf(model, out, dtype=dtype)
    elif format == "gguf":
        from llm4all.export.gguf import export_gguf

        # a directory (e.g. a recipe stage's) gets model-<type>.gguf inside it
        target = Path(out) if Path(out).suffix == ".gguf" else Path(out) / f"model-{type}.gguf"
        if type in KQUANTS:
            from llm4all.export.kquants import export_kquant

            result = export_kquant(model, target, type=type, calib=calib, calib_tokens=calib_tokens)
        else:
            result = export_gguf(model, target, type=type)
    else:
        raise UserError(f"--format {format!r} is not supported; valid: hf, gguf")
    show(result)
    return result


def show(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"llm4all export → {result['out']}", show_header=False)
    for key, value in result.items():
        if key == "sha256":
            value = ", ".join(f"{name} {digest[:16]}…" for name, digest in value.items())
        elif key == "tensor_types":
            value = ", ".join(f"{n} {t}" for t, n in sorted(value.items()))
        elif key.endswith("bytes"):
            value = f"{value:,} ({value / 2**20:.1f} MiB)"
        table.add_row(key, str(value))
    Console().print(table)
