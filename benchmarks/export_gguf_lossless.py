"""Claim: a GPTQ int4 checkpoint exported with ``--type auto`` runs in llama.cpp at llm4all's perplexity.

The peer is the packed model itself, run by llm4all (``llm4all eval perplexity`` on the same
token ids, 512-token windows). Each packed checkpoint is exported twice: the lossless export
(``export --type auto``: codes and scales re-expressed as ggml blocks) and the old path
(``densify`` then ggml's Q4_0 round-to-nearest quantiser on the de-quantised weights). Each
file is evaluated by llama.cpp (llama-cpp-python) and by transformers' GGUF loader. The packed
models are SmolLM2-135M-Instruct compressed with GPTQ int4 on the demo corpus' shards: groups
of 64 asymmetric (the quickstart's setting; maps to Q5_0, or to Q4_1 with ``gguf_exact``) and
groups of 32 symmetric (maps to Q4_0; with ``--embeddings int8`` the embedding maps to Q8_0,
the old path's size). The last line is the ratio of llama.cpp's perplexity of
the lossless export to llm4all's perplexity of the packed model (the first checkpoint run:
the quickstart's setting by default).

    .venv/bin/python benchmarks/export_gguf_lossless.py [--tokens 4096] [--threads 2] [--work DIR]
        [--checkpoints gptq4-g64 gptq4-g64-exact gptq4-g32-sym gptq4-g32-sym-emb8]

``--work`` keeps the shards and checkpoints between runs (about 25 s to tokenize the demo
corpus and 1-2 min per GPTQ run on 2 cores).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

METHODS = {  # name → compress --method, --embeddings
    "gptq4-g64": ("{name: gptq, bits: 4, group_size: 64}", "float16"),
    "gptq4-g64-exact": ("{name: gptq, bits: 4, group_size: 64, gguf_exact: true}", "float16"),
    "gptq4-g32-sym": ("{name: gptq, bits: 4, group_size: 32, symmetric: true}", "float16"),
    "gptq4-g32-sym-emb8": ("{name: gptq, bits: 4, group_size: 32, symmetric: true}", "int8"),
}


def llm4all(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).with_name("llm4all")), *args], check=True,
                   stdout=subprocess.DEVNULL)


def prepare(work: Path, names: list[str]) -> Path:
    """Token shards of the demo corpus and one packed checkpoint per METHODS entry, made once."""
    shards = work / "shards"
    if not (shards / "index.json").exists():
        llm4all("tokenize", "data/demo", "--out", str(shards), "--tokenizer", "smollm2-135m",
                "--workers", "1")
    for name in names:
        method, embeddings = METHODS[name]
        if not (work / name / "llm4all_quant.json").exists():
            llm4all("compress", "smollm2-135m", "--out", str(work / name), "--method", method,
                    "--embeddings", embeddings, "--calib", str(shards), "--calib-tokens", "8192",
                    "--seq-len", "128")
    return shards


def gguf_ppl(path: Path, tokens: np.ndarray, threads: int) -> tuple[float, float]:
    """(llama.cpp perplexity or nan without llama-cpp-python, transformers GGUF-loader perplexity)."""
    import torch
    from transformers import AutoModelForCausalLM

    from llm4all.evaluate.perplexity import perplexity

    try:
        from llm4all.evaluate.llamacpp import llama_cpp_perplexity

        cpp = llama_cpp_perplexity(path, tokens, context=512, threads=threads)["ppl"]
    except ImportError:
        cpp = math.nan
    except Exception as e:  # llm4all's UserError when llama-cpp-python is missing
        if "llama-cpp-python" not in str(e):
            raise
        cpp = math.nan
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return cpp, perplexity(model, tokens, context=512)["ppl"]


def main() -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    from llm4all.data.shards import TokenShards
    from llm4all.evaluate.perplexity import perplexity
    from llm4all.export.gguf import export_gguf, write_gguf
    from llm4all.models.load import load
    from llm4all.models.packed.dense import densify

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--checkpoints", nargs="+", choices=list(METHODS), default=list(METHODS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="llm4all-lossless-"))
    tokens = np.asarray(TokenShards(prepare(work, args.checkpoints)).tokens("validation", args.tokens),
                        dtype=np.int64)

    rows = []
    for name in args.checkpoints:
        packed = work / name
        net, tokenizer = load(packed)
        ref = perplexity(net, tokens, context=512)["ppl"]  # llm4all's CPU int4 kernels (bf16 activations)
        os.environ["LLM4ALL_QKERNEL"] = "0"
        exact = perplexity(net, tokens, context=512)["ppl"]  # exact de-quantisation, fp32
        os.environ.pop("LLM4ALL_QKERNEL")
        lossless = export_gguf(packed, work / f"{name}-auto.gguf", type="auto")
        kinds = "+".join(t for t in sorted(lossless["tensor_types"]) if t != "F32")
        densify(net)  # the old path: de-quantise, then ggml's Q4_0 rounding of the dense weights
        old = write_gguf(net, tokenizer, work / f"{name}-old-q4_0.gguf", "q4_0", model_dir=packed)
        for label, result, path in ((f"lossless ({kinds})", lossless, work / f"{name}-auto.gguf"),
                                    ("old: densify + Q4_0", old, work / f"{name}-old-q4_0.gguf")):
            cpp, hf = gguf_ppl(path, tokens, args.threads)
            rows.append((name, label, result["bytes"], ref, exact, cpp, hf, result.get("lossless", False)))
        del net

    table = Table(title=f"SmolLM2-135M GPTQ int4 → GGUF: perplexity on {args.tokens} validation tokens "
                        f"of the demo shards (512-token windows, {args.threads} threads)")
    for col in ("checkpoint", "GGUF", "MiB", "llm4all packed", "llm4all exact", "llama.cpp",
                "transformers GGUF", "llama.cpp / packed", "bitwise"):
        table.add_column(col, justify="left" if col in ("checkpoint", "GGUF") else "right")
    for name, label, size, ref, exact, cpp, hf, bitwise in rows:
        table.add_row(name, label, f"{size / 2**20:.1f}", f"{ref:.3f}", f"{exact:.3f}", f"{cpp:.3f}",
                      f"{hf:.3f}", f"{cpp / ref:.4f}", "yes" if bitwise else "no")
    Console(width=160).print(table)
    main_row = rows[0]
    print(f"llama.cpp perplexity of the lossless GGUF / llm4all perplexity of the packed GPTQ int4 model: "
          f"{main_row[5] / main_row[3]:.4f}")


if __name__ == "__main__":
    main()
