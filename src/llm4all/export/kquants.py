"""K-quant GGUF (Q4_K_M, Q5_K_M, Q6_K) through llama.cpp's own quantizer, with an importance matrix.

K-quants (llama.cpp PR #1684, Kawrakow 2023) store 256-weight super-blocks of 16/32-weight
sub-blocks whose scales (and minimums) are themselves quantised; the ``_M`` mixes keep some
tensors at a higher type (``attn_v``, half of ``ffn_down`` at Q6_K for Q4_K_M; ``output`` at
Q6_K). The ``gguf`` Python package cannot write them, so this module does what llama.cpp users
do: write a lossless F32 GGUF with our own exporter (``export/gguf.py``), then run

    llama-imatrix -m model-f32.gguf -f calibration.txt -o imatrix.gguf     (with --calib)
    llama-quantize [--imatrix imatrix.gguf] model-f32.gguf model-q4_k_m.gguf Q4_K_M

The importance matrix (llama.cpp PR #4861) is, per weight column, the mean of the squared
activations that column multiplies over the calibration text, sum_t x_tj^2; the quantizer then
minimises the activation-weighted error sum_j imatrix_j (w_j - q_j)^2 instead of the plain one.
Calibration text comes from our token shards, detokenised document by document.

A tensor whose rows do not split into 256-weight super-blocks (SmolLM2's hidden size 576, for
one) cannot be a K-quant: llama-quantize falls back to a 32-block type for it (Q4_K → Q5_0,
Q5_K → Q5_1, Q6_K → Q8_0), so the tensor types of the result are read back and reported.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from llm4all.errors import UserError
from llm4all.models.llamacpp import run_tool
from llm4all.progress import progress
from llm4all.runs import atomic_path

#: our --type name → llama-quantize's type name
KQUANTS = {"q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K"}
#: every type :func:`quantize` accepts (the 32-block types too, to compare with llm4all's own)
QUANTIZE_TYPES = {**KQUANTS, "q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q8_0": "Q8_0"}


def calibration_text(shards: str | Path, out: Path, tokenizer, max_tokens: int = 32768,
                     split: str = "train") -> dict:
    """Write the first ``max_tokens`` tokens of ``shards`` as text, one document per paragraph.

    The shards' tokens are split at EOS and each document is decoded without special tokens
    (llama-imatrix tokenises the file as plain text); documents are separated by a blank line.
    """
    from llm4all.data.shards import TokenShards

    ts = TokenShards(shards)
    vocab = ts.index.get("vocab_size")
    if vocab is not None and int(vocab) != len(tokenizer):
        raise UserError(f"--calib {shards}: shards made with a tokenizer of {vocab} tokens, the model's "
                        f"has {len(tokenizer)}; tokenize the calibration data with the model's tokenizer")
    tokens = np.asarray(ts.tokens(split, max_tokens), dtype=np.int64)
    ends = np.flatnonzero(tokens == ts.eos_id)
    starts = np.concatenate([[0], ends + 1])
    stops = np.concatenate([ends, [len(tokens)]])
    docs = [tokenizer.decode(tokens[a:b].tolist(), skip_special_tokens=True)
            for a, b in zip(starts, stops, strict=True) if b > a]
    docs = [d.strip() for d in docs if d.strip()]
    if not docs:
        raise UserError(f"--calib {shards}: split {split!r} decodes to no text")
    out.write_text("\n\n".join(docs) + "\n")
    return {"tokens": int(len(tokens)), "documents": len(docs), "bytes": out.stat().st_size}


def importance_matrix(model_gguf: Path, text: Path, out: Path, context: int = 512,
                      threads: int | None = None, log: Path | None = None) -> Path:
    """Run llama-imatrix over ``text`` and write the importance matrix (GGUF format) to ``out``."""
    args = ["-m", model_gguf, "-f", text, "-o", out, "-c", context, "--no-ppl",
            "-t", threads or os.cpu_count()]
    run_tool("llama-imatrix", args, log=log)
    if not out.is_file():
        raise UserError(f"llama-imatrix wrote no {out}: is the calibration text shorter than "
                        f"one {context}-token chunk?")
    return out


def quantize(model_gguf: Path, out: Path, type: str, imatrix: Path | None = None,
             threads: int | None = None, log: Path | None = None) -> Path:
    """Run llama-quantize from ``model_gguf`` (F32/F16) to ``out`` in ``type`` (QUANTIZE_TYPES)."""
    if type not in QUANTIZE_TYPES:
        raise UserError(f"--type {type!r}: llama-quantize types here: {', '.join(QUANTIZE_TYPES)}")
    with atomic_path(out) as tmp:
        args = (["--imatrix", imatrix] if imatrix else []) + [model_gguf, tmp, QUANTIZE_TYPES[type],
                                                              threads or os.cpu_count()]
        run_tool("llama-quantize", args, log=log)
    return out


def tensor_types(path: str | Path) -> dict[str, int]:
    """How many tensors of each GGML type the GGUF at ``path`` holds."""
    import gguf

    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


def export_kquant(model: str | Path, out: str | Path, type: str = "q4_k_m", calib: str | Path | None = None,
                  calib_tokens: int = 32768, calib_split: str = "train", context: int = 512) -> dict:
    """Write ``model`` as a K-quant GGUF at ``out``: our F32 GGUF, then llama.cpp's quantizer.

    Args:
        model: a registered name, an HF directory, a packed checkpoint or a .gguf file.
        out: the .gguf file to write.
        type: q4_k_m, q5_k_m or q6_k.
        calib: token shards (``llm4all tokenize``) for an importance matrix; None quantises
            without one.
        calib_tokens: calibration tokens read from ``calib``.
        calib_split: the shards' split to calibrate on (keep validation for evaluation).
        context: llama-imatrix's chunk length in tokens.
    """
    from llm4all.export.gguf import export_gguf
    from llm4all.models.load import load_tokenizer

    if type not in KQUANTS:
        raise UserError(f"--type {type!r} is not a K-quant; valid: {', '.join(KQUANTS)}")
    out = Path(out)
    if out.suffix != ".gguf":
        raise UserError(f"--out {out}: a GGUF export is a single file ending in .gguf")
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".log")  # llama-imatrix's and llama-quantize's output
    log.unlink(missing_ok=True)
    result: dict = {"format": "gguf", "out": str(out), "source": str(model), "type": type}
    steps = 3 if calib is not None else 2  # f32 file, [importance matrix,] llama-quantize
    with (tempfile.TemporaryDirectory(prefix=".kquant-", dir=out.parent) as work,
          progress(f"export {type}", steps, "steps") as advance):
        f32 = Path(work) / "model-f32.gguf"
        result["parameters"] = export_gguf(model, f32, type="f32")["parameters"]
        advance()
        imatrix = None
        if calib is not None:
            text = Path(work) / "calibration.txt"
            result["calibration"] = calibration_text(calib, text, load_tokenizer(model), calib_tokens,
                                                     calib_split)
            imatrix = importance_matrix(f32, text, Path(work) / "imatrix.gguf", context,
                                        log=log)
            advance()
        quantize(f32, out, type, imatrix, log=log)
        advance()
    result.update(imatrix=calib is not None, tensor_types=tensor_types(out), bytes=out.stat().st_size,
                  log=str(log), seconds=round(time.perf_counter() - start, 2))
    return result
