"""Claim: `llm4all serve` (llama-server, continuous batching) gives ≥ 3× the output tokens/s to 16
concurrent clients as to one client at a time, on 2 CPU cores.

One engine, one run: llama-server started as ``llm4all serve`` starts it (``--parallel 16``), fed
the same requests by 1 client (one request at a time), 4 and 16 concurrent clients through the
``openai`` client; each request a demo validation prompt and 64 output tokens (``ignore_eos``);
each phase ``--repeats`` times, the median throughput reported (the machine is shared).
Reported: output tokens/s, p50/p95 request latency. The model is a GPTQ int4 (group 32)
SmolLM2-135M, served as the GGUF ``llm4all serve`` makes of it today (``serve``: Q8_0 of its
weights) and as Q4_0 (``q4_0``: the block layout of a lossless int4 export; here re-rounded,
which changes the numbers a little, not the speed). Peers in the same run: llama-cpp-python's
own OpenAI server on the same GGUF (``--peer``; needs ``pip install sse-starlette
starlette-context pydantic-settings``), and llm4all's own int4 kernels in process (the packed
GPTQ model, ``model.generate``, one request at a time). The last line is the 16-client over
the one-client throughput of llama-server.

    .venv/bin/llm4all run recipes/quickstart.yaml --only curate tokenize   # the demo shards
    .venv/bin/python benchmarks/serve.py [--shards runs/quickstart/tokenize] [--packed DIR]
        [--threads 2] [--tokens 64] [--repeats 3] [--types serve,q4_0] [--peer]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def prompts_from(shards: Path, tokenizer, n: int, length: int = 32) -> list[str]:
    """``n`` prompts: the first ``length`` tokens of successive validation documents."""
    from llm4all.data.shards import TokenShards

    ts = TokenShards(shards)
    tokens = np.asarray(ts.tokens("validation"))
    starts = np.concatenate([[0], np.flatnonzero(tokens == ts.eos_id) + 1])
    out = []
    for a in starts:
        doc = tokens[a:a + length]
        if len(doc) == length and ts.eos_id not in doc:
            out.append(tokenizer.decode(doc.tolist(), skip_special_tokens=True))
        if len(out) == n:
            return out
    raise SystemExit(f"{shards}: fewer than {n} validation documents of {length} tokens")


def packed_model(path: Path, shards: Path) -> Path:
    """The GPTQ int4 (group 32) teacher, compressed once into ``path``."""
    from llm4all.compress.command import main as compress
    from llm4all.models.packed import is_packed

    if not is_packed(path):
        compress("smollm2-135m", out=path, method={"name": "gptq", "bits": 4, "group_size": 32},
                 calib=shards, calib_tokens=16384)
    return path


def load_phase(client, model: str, prompts: list[str], clients: int, per_client: int, tokens: int,
               extra: dict) -> dict:
    """``clients`` threads, each sending ``per_client`` requests one after another."""
    def one(i: int) -> tuple[float, int]:
        start = time.perf_counter()
        out = client.completions.create(model=model, prompt=prompts[i % len(prompts)], max_tokens=tokens,
                                        temperature=0, extra_body=extra)
        return time.perf_counter() - start, out.usage.completion_tokens

    def worker(c: int) -> list[tuple[float, int]]:
        return [one(c * per_client + r) for r in range(per_client)]

    load = os.getloadavg()[0]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(worker, range(clients)) for r in rs]
    wall = time.perf_counter() - start
    latency = np.array([r[0] for r in results])
    out_tokens = sum(r[1] for r in results)
    return {"clients": clients, "requests": len(results), "tokens": out_tokens, "seconds": wall,
            "tok_s": out_tokens / wall, "p50": float(np.percentile(latency, 50)),
            "p95": float(np.percentile(latency, 95)), "load": (load + os.getloadavg()[0]) / 2}


def run_engine(name: str, command: list[str], url: str, health: str, model: str, prompts: list[str],
               tokens: int, extra: dict, log: Path, repeats: int) -> list[dict]:
    from openai import OpenAI

    from llm4all.serve.process import running

    client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=3600)
    phases = []
    with running(command, url, log, timeout=300, health=health):
        load_phase(client, model, prompts, 1, 1, 8, extra)  # warm-up
        for clients, per_client in ((1, 16), (4, 4), (16, 2)):
            runs = [load_phase(client, model, prompts, clients, per_client, tokens, extra)
                    for _ in range(repeats)]
            phase = sorted(runs, key=lambda r: r["tok_s"])[len(runs) // 2]  # the median run
            phases.append({"engine": name, **phase})
            print(f"{name}, {clients} clients: {phase['tok_s']:.1f} tok/s, p50 {phase['p50']:.2f} s, "
                  f"p95 {phase['p95']:.2f} s (load {phase['load']:.1f})", flush=True)
    return phases


def in_process(packed: Path, prompts: list[str], tokens: int, threads: int, n: int = 8) -> dict:
    """llm4all's int4 kernels: greedy ``model.generate`` with the KV cache, one request at a time."""
    import torch

    from llm4all.models.load import load

    torch.set_num_threads(threads)
    model, tokenizer = load(packed)
    latencies, out_tokens, load_avg = [], 0, os.getloadavg()[0]
    start = time.perf_counter()
    for prompt in prompts[:n]:
        t0 = time.perf_counter()
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        latencies.append(time.perf_counter() - t0)
        out_tokens += out.shape[1] - ids.shape[1]
    wall = time.perf_counter() - start
    return {"engine": "llm4all int4 kernels (in process)", "clients": 1, "requests": n, "tokens": out_tokens,
            "seconds": wall, "tok_s": out_tokens / wall, "p50": float(np.percentile(latencies, 50)),
            "p95": float(np.percentile(latencies, 95)), "load": (load_avg + os.getloadavg()[0]) / 2}


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from llm4all.export.gguf import export_gguf
    from llm4all.export.kquants import tensor_types
    from llm4all.models.load import load_tokenizer
    from llm4all.serve.engines import EngineOptions, LlamaServer
    from llm4all.serve.prepare import gguf_for
    from llm4all.serve.process import free_port, url_of

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=Path("runs/quickstart/tokenize"))
    parser.add_argument("--packed", type=Path, default=Path("runs/bench/serve-gptq4"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each phase (median reported)")
    parser.add_argument("--types", default="serve,q4_0", help="GGUFs served: serve (what llm4all serve "
                        "exports), q4_0")
    parser.add_argument("--peer", action="store_true", help="also llama-cpp-python's server")
    args = parser.parse_args()

    print(f"load average at start: {os.getloadavg()}", flush=True)
    packed = packed_model(args.packed, args.shards)
    prompts = prompts_from(args.shards, load_tokenizer("smollm2-135m"), 32)
    logs = args.packed.parent / "serve-logs"
    rows, ggufs = [], {}
    for kind in args.types.split(","):
        if kind == "serve":
            ggufs[kind] = gguf_for(packed)
        else:
            ggufs[kind] = args.packed.parent / f"{args.packed.name}-{kind}.gguf"
            if not ggufs[kind].is_file():
                export_gguf(packed, ggufs[kind], type=kind)
        options = EngineOptions(port=free_port(), parallel=16, context=256, threads=args.threads, alias="m")
        types = "+".join(sorted(t for t in tensor_types(ggufs[kind]) if t != "F32"))
        rows += run_engine(f"llama-server, {kind} GGUF ({types})", LlamaServer.command(ggufs[kind], options),
                           url_of(options.host, options.port), "/health", "m", prompts, args.tokens,
                           {"ignore_eos": True}, logs / "llama-server.log", args.repeats)
    gguf = next(iter(ggufs.values()))
    if args.peer:
        port = free_port()
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                   "--port", str(port), "--n_threads", str(args.threads), "--n_ctx", "2048"]
        rows += run_engine("llama-cpp-python server", command, url_of("127.0.0.1", port), "/v1/models",
                           str(gguf), prompts, args.tokens, {}, logs / "llama-cpp-python.log", args.repeats)
    rows.append(in_process(packed, prompts, args.tokens, args.threads))

    table = Table(title=f"GPTQ int4 SmolLM2-135M, {args.tokens} output tokens per request, "
                        f"{args.threads} threads, 2 cores, median of {args.repeats} runs per row")
    for col in ("engine", "clients", "requests", "out tok/s", "vs 1 client", "p50 s", "p95 s", "load avg"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    base = {r["engine"]: r["tok_s"] for r in rows if r["clients"] == 1}
    for r in rows:
        table.add_row(r["engine"], str(r["clients"]), str(r["requests"]), f"{r['tok_s']:.1f}",
                      f"{r['tok_s'] / base[r['engine']]:.2f}x", f"{r['p50']:.2f}", f"{r['p95']:.2f}",
                      f"{r['load']:.1f}")
    Console(width=160).print(table)
    print(f"load average at end: {os.getloadavg()}")
    ratios = []
    for kind in ggufs:
        server = {r["clients"]: r["tok_s"] for r in rows if r["engine"].startswith(f"llama-server, {kind} ")}
        ratios.append(f"{kind} GGUF {server[16] / server[1]:.2f}x ({server[16]:.0f} vs {server[1]:.0f})")
    print(f"llama-server 16 clients / 1 client output tokens/s: {'; '.join(ratios)}")


if __name__ == "__main__":
    main()
