"""Claim: llama.cpp's K-quants with an importance matrix beat Q4_0 on the fp32 SmolLM2-135M teacher.

The fp32 teacher (``smollm2-135m``) is exported to GGUF F16, Q8_0 and Q4_0 by llm4all's own
exporter, and to Q4_K_M (without, then with an importance matrix from the demo shards' train
split), Q5_K_M and Q6_K through llama.cpp's llama-quantize (``llm4all export --type q4_k_m
[--calib SHARDS]``). Every file is scored by llama.cpp (llama-cpp-python) on the same
validation token ids of the demo shards (512-token windows). The peer is Q4_0, llm4all's
plain round-to-nearest 4-bit export; the last line is Q4_K_M+imatrix's perplexity and size
relative to it.

    .venv/bin/llm4all run recipes/quickstart.yaml --only curate tokenize   # the demo shards
    .venv/bin/python benchmarks/gguf_kquants.py [--shards runs/quickstart/tokenize]
        [--tokens 8192] [--calib-tokens 32768] [--threads 1]

The F32 GGUF and the importance matrix are made once and shared by the llama-quantize rows;
their "export s" include the F32 export (and the importance matrix) once each.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from llm4all.data.shards import TokenShards
    from llm4all.evaluate.llamacpp import llama_cpp_perplexity
    from llm4all.export.gguf import export_gguf
    from llm4all.export.kquants import calibration_text, importance_matrix, quantize, tensor_types
    from llm4all.models.load import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=Path("runs/quickstart/tokenize"))
    parser.add_argument("--tokens", type=int, default=8192, help="validation tokens scored")
    parser.add_argument("--calib-tokens", type=int, default=32768, help="importance-matrix tokens")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    tokens = TokenShards(args.shards).tokens("validation", args.tokens)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)

        def measure(label: str, path: Path, seconds: float) -> None:
            ppl = llama_cpp_perplexity(path, tokens, context=512, threads=args.threads)
            types = ", ".join(f"{n} {t}" for t, n in sorted(tensor_types(path).items()))
            rows.append((label, path.stat().st_size, ppl["ppl"], seconds, types, ppl["tokens"]))
            print(f"{label}: {path.stat().st_size / 2**20:.1f} MiB, ppl {ppl['ppl']:.4f} "
                  f"({seconds:.0f} s; load {os.getloadavg()[0]:.1f})", flush=True)

        for qtype in ("f16", "q8_0", "q4_0"):  # llm4all's own exporter
            start = time.perf_counter()
            export_gguf("smollm2-135m", work / f"{qtype}.gguf", type=qtype)
            label = qtype.upper() + (" (llm4all, RTN)" if qtype == "q4_0" else "")
            measure(label, work / f"{qtype}.gguf", time.perf_counter() - start)
        start = time.perf_counter()
        f32 = work / "f32.gguf"
        params = export_gguf("smollm2-135m", f32, type="f32")["parameters"]  # tied embedding once
        f32_seconds = time.perf_counter() - start
        for qtype in ("q4_0", "q4_k_m"):  # llama-quantize without an importance matrix
            start = time.perf_counter()
            quantize(f32, work / f"{qtype}-plain.gguf", qtype)
            label = "Q4_0 (llama-quantize)" if qtype == "q4_0" else "Q4_K_M"
            measure(label, work / f"{qtype}-plain.gguf", time.perf_counter() - start + f32_seconds)
        start = time.perf_counter()
        text = work / "calibration.txt"
        calib = calibration_text(args.shards, text, load_tokenizer("smollm2-135m"), args.calib_tokens)
        imatrix = importance_matrix(f32, text, work / "imatrix.gguf", threads=args.threads)
        imatrix_seconds = time.perf_counter() - start
        print(f"importance matrix over {calib['tokens']} train tokens: {imatrix_seconds:.0f} s", flush=True)
        for qtype in ("q4_k_m", "q5_k_m", "q6_k"):
            start = time.perf_counter()
            quantize(f32, work / f"{qtype}-imatrix.gguf", qtype, imatrix)
            measure(f"{qtype.upper()} + imatrix", work / f"{qtype}-imatrix.gguf",
                    time.perf_counter() - start + f32_seconds + imatrix_seconds)

    table = Table(title=f"SmolLM2-135M (fp32 teacher) in llama.cpp: {rows[0][5]} validation tokens "
                        f"of {args.shards}, 512-token windows")
    for col in ("GGUF", "MiB", "bits/weight", "ppl", "vs F16", "export s", "tensor types"):
        table.add_column(col, justify="left" if col in ("GGUF", "tensor types") else "right")
    f16 = rows[0][2]
    for label, size, ppl_value, seconds, types, _ in rows:
        table.add_row(label, f"{size / 2**20:.1f}", f"{8 * size / params:.2f}", f"{ppl_value:.4f}",
                      f"{ppl_value / f16 - 1:+.2%}", f"{seconds:.0f}", types)
    Console(width=200).print(table)
    q40 = next(r for r in rows if r[0].startswith("Q4_0 (llm4all"))
    km = next(r for r in rows if r[0] == "Q4_K_M + imatrix")
    plain = next(r for r in rows if r[0] == "Q4_K_M")
    print(f"load average at end: {os.getloadavg()}")
    print(f"Q4_K_M+imatrix vs Q4_0: perplexity {km[2]:.3f} vs {q40[2]:.3f} ({km[2] / q40[2]:.3f}x), "
          f"size {km[1] / q40[1]:.3f}x; Q4_K_M without imatrix {plain[2]:.3f}")


if __name__ == "__main__":
    main()
