"""Benchmark: llm4all compress on SmolLM2-135M against fp32, bf16, optimum-quanto and torchao.

Claim (issue 7): GPTQ int4 beats RTN int4 at the same group size; GPTQ runs in ≤ 60 s on
2 CPU cores; the int4 perplexity increase is below optimum-quanto's qint4.

Every method is compressed in this process (timed; calibration as `llm4all compress`
defaults, 16,384 tokens), then evaluated in its own subprocess: perplexity on the first
``--eval-tokens`` tokens of the demo validation split (context 512, non-overlapping windows),
size on disk, model RSS (resident bytes added by loading the weights, measured after the
modeling code, tokenizer and a weightless skeleton are already in memory), peak RSS (VmHWM)
the latency of one forward pass over 512 tokens, and the decode latency (greedy, batch 1, KV
cache: the median of 32 single-token steps after a 64-token prompt). Peers quantise the fp32 model in their
subprocess (their RSS therefore includes what the fp32 load left behind; their size on disk
is their own state dict saved with safetensors / torch.save).

Run: .venv/bin/python benchmarks/compress.py [--only ROW ...] [--resume] [--calib-tokens N]
(rows are appended to /tmp/llm4all-compress-bench/rows.jsonl; --resume keeps them, so the run
can be split into several shorter ones). Last line: gptq int4 ppl increase / quanto qint4's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHARDS = Path("/tmp/demo-shards")
WORK = Path("/tmp/llm4all-compress-bench")
G = 64  # group size: 576 = 9·64 (128 does not divide SmolLM2-135M's hidden size 576)

METHODS = {
    "rtn int8": {"name": "int8"},
    "rtn int4 g64": {"name": "rtn", "bits": 4, "group_size": G},
    "gptq int4 g64": {"name": "gptq", "bits": 4, "group_size": G},
    "gptq int4 g64 act-order": {"name": "gptq", "bits": 4, "group_size": G, "act_order": True},
    "gptq int4 g64 + int8 embeddings": {"name": "gptq", "bits": 4, "group_size": G, "embeddings": "int8"},
    "llm.int8": {"name": "llm_int8"},
    "w8a8": {"name": "w8a8"},
    "magnitude 50%": {"name": "magnitude", "sparsity": 0.5},
    "wanda 50%": {"name": "wanda", "sparsity": 0.5},
    "sparsegpt 2:4": {"name": "sparsegpt", "prunen": 2, "prunem": 4},
    "structured ffn 25%": {"name": "structured", "ffn": 0.25},
    "svd energy 0.5": {"name": "svd", "energy": 0.5},
    "bitnet post-hoc": {"name": "bitnet"},
}
PEERS = ["quanto qint8", "quanto qint4", "torchao int8"]
# torchao 0.18 int4 weight-only has no CPU path: "plain" needs mslk >= 1.0.0, "plain_int32" says
# "does not support device 'cpu' yet", "tile_packed_to_4d" calls torch.cuda (AssertionError).


def evaluate(kind: str, path: str, eval_tokens: int) -> dict:
    """Runs in a subprocess: load one model, measure ppl, latency, model RSS and peak RSS."""
    import gc

    import psutil
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    import llm4all.models.packed  # noqa: F401  (code, not weights: imported before the baseline)
    from llm4all.data.shards import TokenShards
    from llm4all.evaluate.perplexity import perplexity
    from llm4all.models.load import load, resolve
    from llm4all.models.quiet import quiet_transformers

    size = None
    source = resolve("smollm2-135m" if kind in ("fp32", "bf16") or kind.startswith(("quanto", "torchao"))
                     else path)
    with quiet_transformers():  # modeling code, tokenizer and a weightless skeleton: not the model
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
        AutoTokenizer.from_pretrained(source)
    gc.collect()
    before = psutil.Process().memory_info().rss
    if kind in ("fp32", "bf16"):
        net, _ = load("smollm2-135m", "float32" if kind == "fp32" else "bfloat16")
        unique = {t.data_ptr(): t for t in net.state_dict().values()}  # the tied head counted once
        size = sum(t.numel() * t.element_size() for t in unique.values())
    elif kind.startswith(("quanto", "torchao")):
        net, _ = load("smollm2-135m")
        size = peer_quantize(net, kind, Path(path))
    else:
        net, _ = load(path)
    for t in net.state_dict().values():  # fault in lazily mmap'd weights before measuring
        with contextlib.suppress(Exception):
            t.reshape(-1)[::256].sum()
    gc.collect()
    loaded = psutil.Process().memory_info().rss - before  # resident bytes the weights added
    if kind.startswith("quanto"):  # quanto's qtensors fail under inference_mode ("Cannot set
        torch.inference_mode = lambda *a, **k: torch.no_grad()  # version_counter"): use no_grad
    tokens = TokenShards(SHARDS).tokens("validation", eval_tokens)
    t0 = time.perf_counter()
    result = perplexity(net, tokens, context=512, stride=512, batch_size=4)
    ppl_seconds = time.perf_counter() - t0
    ids = torch.from_numpy(tokens[:512].astype("int64"))[None]
    times = []
    with torch.inference_mode():
        for _ in range(1):  # warm already: the perplexity pass ran the same shapes
            t = time.perf_counter()
            net(input_ids=ids)
            times.append(time.perf_counter() - t)
    # decode: greedy, batch 1, KV cache, 64-token prompt, median of 32 single-token steps
    from transformers import DynamicCache

    cache, steps = DynamicCache(config=net.config), []
    with torch.inference_mode():
        nxt = net(input_ids=ids[:, :64], past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
        for _ in range(33):
            t = time.perf_counter()
            nxt = net(input_ids=nxt, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
            steps.append(time.perf_counter() - t)
    decode_ms = 1000 * sorted(steps[1:])[len(steps[1:]) // 2]
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child would report
    # the (large) benchmark parent's RSS at fork time
    status = Path("/proc/self/status").read_text()
    rss = int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1]) * 1024
    return {"ppl": result["ppl"], "latency_ms": 1000 * min(times), "decode_ms": decode_ms,
            "model_rss": loaded, "peak_rss": rss, "disk": size, "ppl_seconds": ppl_seconds}


def peer_quantize(net, kind: str, out: Path) -> int:
    """Quantise with optimum-quanto or torchao in place; returns the saved state dict's bytes."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    if kind.startswith("quanto"):
        from optimum.quanto import freeze, qint4, qint8, quantize
        from safetensors.torch import save_file

        quantize(net, weights=qint4 if kind.endswith("qint4") else qint8)
        freeze(net)
        state = {k: v.contiguous() for k, v in net.state_dict().items() if k != "lm_head.weight"}
        try:
            save_file(state, str(out / "model.safetensors"))
            return (out / "model.safetensors").stat().st_size
        except Exception:  # quanto's qtensors may not serialise flat: fall back to torch.save
            torch.save(net.state_dict(), out / "model.pt")
            return (out / "model.pt").stat().st_size
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(net, Int8WeightOnlyConfig())
    torch.save(net.state_dict(), out / "model.pt")
    return (out / "model.pt").stat().st_size


def run_eval(kind: str, path: str, eval_tokens: int) -> dict:
    cmd = [sys.executable, __file__, "--eval", kind, path, "--eval-tokens", str(eval_tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:160]}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval", nargs=2)
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--calib-tokens", type=int, default=None, help="default: llm4all compress's own")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in rows.jsonl")
    args = ap.parse_args()
    if args.eval:
        print(json.dumps(evaluate(args.eval[0], args.eval[1], args.eval_tokens)))
        return
    from llm4all.compress.command import main as compress

    if not (SHARDS / "index.json").exists():
        subprocess.run([sys.executable, "-m", "llm4all", "tokenize", "data/demo", "--out", str(SHARDS),
                        "--max-docs", "800"], check=True)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  load average {os.getloadavg()[0]:.1f}  "
          f"torch threads {__import__('torch').get_num_threads()}", flush=True)
    rows: dict[str, dict] = {}
    log = WORK / "rows.jsonl"
    if args.resume and log.exists():
        rows = {r["method"]: r for r in map(json.loads, log.read_text().splitlines())}
    WORK.mkdir(parents=True, exist_ok=True)

    def done(name: str, row: dict) -> None:
        rows[name] = row
        print(name, row, flush=True)
        with log.open("a") as f:
            f.write(json.dumps({"method": name, **row}) + "\n")

    for kind in ["fp32", "bf16"]:
        if kind not in rows:
            done(kind, {**run_eval(kind, "-", args.eval_tokens), "compress_s": 0.0})
    for name, spec in METHODS.items():
        if (args.only and name not in args.only) or name in rows:
            continue
        out = WORK / name.replace(" ", "_").replace("%", "pct").replace(":", "-")
        t = time.perf_counter()
        try:
            tokens = {"calib_tokens": args.calib_tokens} if args.calib_tokens else {}
            spec = dict(spec)
            extra = {"embeddings": spec.pop("embeddings")} if "embeddings" in spec else {}
            compress("smollm2-135m", out=out, method=spec, calib=SHARDS, **tokens, **extra)
        except Exception as e:  # a failing method is reported, not fatal to the benchmark
            done(name, {"error": f"{type(e).__name__}: {e}"[:160]})
            continue
        seconds = time.perf_counter() - t
        report = json.loads((out / "llm4all_quant.json").read_text())["report"]
        done(name, {**run_eval(name, str(out), args.eval_tokens), "compress_s": seconds,
                    "disk": sum(f.stat().st_size for f in out.glob("*.safetensors")),
                    "load": os.getloadavg()[0], "report": report})
    for peer in PEERS:
        if (args.only and peer not in args.only) or peer in rows:
            continue
        row = run_eval(peer, str(WORK / peer.replace(" ", "_")), args.eval_tokens)
        done(peer, {**row, "compress_s": None})
    base = rows["fp32"]["ppl"]
    print("\n| method | ppl | Δppl vs fp32 | disk MB | model RSS MB | peak RSS MB | "
          "latency ms / 512 tok | decode ms / token | compress s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        if "error" in r:
            print(f"| {name} | error: {r['error']} | | | | | | | |")
            continue
        disk = f"{r['disk'] / 2**20:.0f}" if r.get("disk") else "n/a"
        cs = f"{r['compress_s']:.0f}" if r.get("compress_s") is not None else "–"
        print(f"| {name} | {r['ppl']:.3f} | {100 * (r['ppl'] / base - 1):+.1f}% | {disk} | "
              f"{r.get('model_rss', 0) / 2**20:.0f} | {r['peak_rss'] / 2**20:.0f} | "
              f"{r['latency_ms']:.0f} | {r.get('decode_ms', float('nan')):.1f} | {cs} |")
    json_path = WORK / "results.json"
    json_path.write_text(json.dumps(rows, indent=2))
    g, q = rows.get("gptq int4 g64", {}), rows.get("quanto qint4", {})
    if "ppl" in g and "ppl" in q and q["ppl"] > base:
        ratio = (g["ppl"] - base) / (q["ppl"] - base)
        print(f"gptq int4 ppl increase / quanto qint4 ppl increase: {ratio:.3f} "
              f"(+{100 * (g['ppl'] / base - 1):.1f}% vs +{100 * (q['ppl'] / base - 1):.1f}%)")
    else:
        print(f"gptq int4 ppl increase / quanto qint4 ppl increase: n/a ({g.get('error') or q.get('error')})")


if __name__ == "__main__":
    main()
