"""Claim (issue 19 item 4): `eval speed` reports joules per decoded token — from RAPL where the
machine exposes it, otherwise estimated (Horowitz 2014 per-operation energies) and labelled — and
the 4-bit GGUF in llama.cpp costs several times less energy per token than the fp32 model in torch.

Peer: the same SmolLM2-135M-Instruct as fp32 and bf16 weights in torch (the baseline a user
starts from) against its shipped Q4_1 GGUF in llama.cpp. Each row is `eval speed`'s batch-1
decode of `--tokens` tokens after a 32-token prompt; energy per token is RAPL's package counters
around that decode when readable, else the estimate (multiply-accumulates at the compute type's
add + multiply energy, plus every weight byte and the KV cache read from DRAM per token). This VM
exposes no /sys/class/powercap, so here every number is the estimate: read them as orders of
magnitude and for the comparison between formats.

Prints one row per format and last the ratio of the fp32 torch model's joules per token to the
GGUF's.

    flock /tmp/llm4all-bench.lock .venv/bin/python benchmarks/energy.py [--tokens 64]
"""

from __future__ import annotations

import argparse
import os
import time

MODEL = "smollm2-135m"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    from llm4all.evaluate.energy import Rapl
    from llm4all.evaluate.llamacpp import gguf_speed
    from llm4all.evaluate.speed import decode_energy, decode_speed
    from llm4all.models.load import load, smollm2_135m
    from llm4all.threads import free_cores

    load_before, start, rows = os.getloadavg(), time.perf_counter(), {}
    for dtype in ("float32", "bfloat16"):
        net, _ = load(MODEL, dtype=dtype)
        decode_speed(net, 4, 1, 8, repeats=1)  # warm-up
        rate = decode_speed(net, args.tokens, 1, 32, repeats=1)["tokens_per_s"]
        rows[f"torch {dtype}"] = (decode_energy(net, dtype, args.tokens), rate)
    gguf = gguf_speed(smollm2_135m(), [32], args.tokens, 1, free_cores(), energy=True)
    rows["llama.cpp Q4_1 GGUF"] = (gguf["energy"], gguf["decode"][0]["tokens_per_s"])
    print(f"\nSmolLM2-135M, batch-1 decode of {args.tokens} tokens; RAPL: "
          f"{'yes' if Rapl.find() else 'not exposed here (estimates)'}; load average {load_before[0]:.2f} "
          f"before, {os.getloadavg()[0]:.2f} after; {time.perf_counter() - start:.0f} s")
    print(f"{'format':<22} {'mJ/token':>9} {'range':>17} {'arith.':>8} {'memory':>8} {'tok/s':>7}  source")
    for name, (e, rate) in rows.items():
        span = f"{1e3 * e['low']:.1f}-{1e3 * e['high']:.1f}" if "low" in e else ""
        parts = [f"{1e3 * e[k]:.2f}" if k in e else "" for k in ("arithmetic_joules", "memory_joules")]
        print(f"{name:<22} {1e3 * e['joules_per_token']:>9.2f} {span:>17} {parts[0]:>8} {parts[1]:>8} "
              f"{rate:>7.1f}  {e['source']}")
    fp32, q4 = rows["torch float32"][0], rows["llama.cpp Q4_1 GGUF"][0]
    print(f"fp32 torch / Q4_1 GGUF joules per token: {fp32['joules_per_token'] / q4['joules_per_token']:.2f}")


if __name__ == "__main__":
    main()
