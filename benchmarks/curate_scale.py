"""Claim (issue 17 item 5): `llm4all curate` scales with the input and the workers while the
driver's memory stays flat, and its MinHash catches at least as many planted copies as
datatrove's MinHash pipeline on the same input.

Inputs (built once in --work): **1×** the demo corpus (4,252 documents) plus `llm4all plant`
documents (5% per original: exact and near copies, junk); **2×** and **4×**: two and four
variants of the corpus (the original and others with 35% of their words replaced by other words
of the same document, separators kept: no variant is a near copy of another, and every variant
has the original's length and script, so a doubling adds more of the same corpus) each with its
own planted documents. The pipeline is the
quickstart's (eight signals, the published Gopher/C4 filter on English, exact dedup, MinHash at
Jaccard 0.8), run as a fresh `llm4all curate` process (its signal cache removed first: every
run computes everything) with the local engine (2 worker processes) and with Ray (a local
instance of 1 and of 2 CPUs, started and stopped by the command). Reported per run:
documents/s over the command's wall time and over the pipeline's own time (summary.json
``seconds.total``: without the interpreter's start and exit, and Ray's stop, which runs while
the outputs are written; Ray's start is in it), the driver's peak RSS
(VmHWM of the curate process; Ray's workers are other processes) and, sampled every 20 ms, its
peak private memory (RssAnon + RssFile) and the Ray object-store pages it touched (RssShmem:
shared memory owned by Ray's object store, bounded by its capacity, not by the corpus), and
recall: the fraction of planted (copy, original) pairs of which one was removed. A last
llm4all row runs MinHash at Jaccard 0.72, the middle of the S-curve of datatrove's 14 × 8
bands, for recall at the same threshold.

Peer: datatrove's MinHash deduplication (signatures → buckets → clusters → filter, its
defaults: word 5-grams, 14 buckets × 8 hashes, 64-bit SHA-1 shingle hashes as its xxhash path
fails with the installed xxhash; LocalPipelineExecutor with 2 workers; spacy's tokenizer) on the
same documents; its docs/s covers the four stages, its recall the planted copies it removed.
Prints one row per run, the driver's memory growth per doubling of the input, the same Ray
ratio on **8×** (eight variants, 35,712 documents: Ray's start and stop and each shuffle's fixed
cost weigh half as much; ``--no-also-8x`` skips it), and last the ratio of Ray 2 workers to Ray
1 worker on 4× (documents/s over the command's wall time, the medians of ``--repeat`` runs
each, 1 and 2 workers alternating: on two cores one run moves by ±5% with what the machine did
just before).

    .venv/bin/pip install -e ".[bench]"     # datatrove and what its MinHash needs
    flock /tmp/llm4all-bench.lock .venv/bin/python benchmarks/curate_scale.py [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIES = ("exact_copy", "near_copy")
PIPELINE = ["--signals", "char_entropy", "word_entropy", "zlib_ratio", "ttr", "mtld", "flesch",
            "gopher_quality", "gopher_repetition",
            "--steps", "{filter: published, when: {lang: en}}", "{dedup: exact}",
            "{dedup: minhash, threshold: 0.8}"]


def edited_text(text: str, rng: random.Random, rate: float = 0.35) -> str:
    """``text`` with ``rate`` of its words replaced by other words of the same text, its
    whitespace kept. (The first variants drew words from a vocabulary shared by all documents
    and re-joined them with new separators: 2,666 of 4,252 documents became non-ASCII instead of
    914, 17% more characters and 35% more bytes as Python strings, so 1x -> 2x measured that
    change of text as much as the doubling.)"""
    parts = re.split(r"(\s+)", text)
    pool = [w for w in parts[0::2] if w]
    for i in range(0, len(parts), 2):
        if parts[i] and rng.random() < rate:
            parts[i] = rng.choice(pool)
    return "".join(parts)


def build(work: Path) -> dict[str, list[Path]]:
    """The 1× and 4× inputs (document files), built once."""
    from llm4all.data.document import Document
    from llm4all.data.readers import read_documents
    from llm4all.data.writers import write_documents

    inputs: dict[str, list[Path]] = {"1x": [], "2x": [], "4x": [], "8x": []}
    docs = list(read_documents(ROOT / "data/demo"))
    for k in range(8):
        variant, planted = work / f"variant{k}.jsonl.zst", work / f"planted{k}.jsonl.zst"
        if not planted.exists():
            rng = random.Random(k)
            edited = [Document(f"{d.id}/v{k}", edited_text(d.text, rng), d.meta) for d in docs]
            write_documents(variant, docs if k == 0 else edited)
            raw = work / f"planted{k}-raw.jsonl.zst"
            subprocess.run([sys.executable, "-m", "llm4all", "-q", "plant", str(variant), "--out",
                            str(raw), "--seed", str(k)], check=True)
            write_documents(planted, [Document(f"{d.id}/v{k}", d.text, d.meta)  # ids unique per variant
                                      for d in read_documents(raw)])
        inputs["8x"] += [variant, planted]
        if k < 4:
            inputs["4x"] += [variant, planted]
        if k < 2:
            inputs["2x"] += [variant, planted]
        if k == 0:
            inputs["1x"] = [variant, planted]
    return inputs


def planted_copies(files: list[Path]) -> dict[str, str]:
    """Each planted exact or near copy's id -> the id of the document it copies."""
    from llm4all.data.readers import read_documents

    return {d.id: d.meta["of"] for d in read_documents(files) if d.meta.get("planted") in COPIES}


def run_llm4all(files: list[Path], out: Path, engine: str, workers: int, threshold: float = 0.8) -> dict:
    pipeline = [x.replace("threshold: 0.8", f"threshold: {threshold}") for x in PIPELINE]
    cmd = [sys.executable, "-m", "llm4all", "-q", "curate", *map(str, files), "--out", str(out),
           "--engine", engine, "--workers", str(workers), *pipeline]
    subprocess.run(["rm", "-rf", str(out.parent / f".{out.name}.cache")], check=True)  # no cached signals
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak = {"private": 0, "shared": 0}
    while proc.poll() is None:  # the driver's private and shared (object-store) pages, every 20 ms
        try:
            status = dict(x.split(":", 1) for x in Path(f"/proc/{proc.pid}/status").read_text().splitlines())
            kib = {k: int(status[k].split()[0]) for k in ("RssAnon", "RssFile", "RssShmem")}
        except (OSError, KeyError, ValueError):  # exiting
            break
        peak["private"] = max(peak["private"], kib["RssAnon"] + kib["RssFile"])
        peak["shared"] = max(peak["shared"], kib["RssShmem"])
        time.sleep(0.02)
    if proc.wait():
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    seconds = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    import zstandard

    removed = zstandard.ZstdDecompressor().stream_reader((out / "removed.jsonl.zst").read_bytes()).read()
    removed_ids = {json.loads(x)["id"] for x in removed.decode().splitlines()}
    return {"docs_per_s": summary["read"] / seconds, "seconds": seconds, "read": summary["read"],
            "pipeline_docs_per_s": summary["read"] / summary["seconds"]["total"],
            "driver_mib": summary.get("driver_peak_rss_mib"), "private_mib": peak["private"] / 1024,
            "shared_mib": peak["shared"] / 1024, "removed": removed_ids}


def run_datatrove(files: list[Path], out: Path, workers: int = 2) -> dict:
    """datatrove's four MinHash stages on ``files`` (jsonl.zst with id, text, meta)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    data = out / "input"
    data.mkdir(parents=True, exist_ok=True)
    for f in files:
        (data / f.name).write_bytes(f.read_bytes())
    from datatrove.utils.hashing import HashConfig

    # sha1: datatrove's xxhash path passes str where the installed xxhash wants bytes
    config = MinhashConfig(hash_config=HashConfig(precision=64, hash_fc="sha1"))
    tasks = len(files)

    def reader():
        return JsonlReader(str(data), compression="zstd", glob_pattern="*.jsonl.zst")

    start = time.perf_counter()
    LocalPipelineExecutor([reader(), MinhashDedupSignature(str(out / "sigs"), config=config)], tasks=tasks,
                          workers=workers, logging_dir=str(out / "logs1")).run()
    LocalPipelineExecutor([MinhashDedupBuckets(str(out / "sigs"), str(out / "buckets"), config=config)],
                          tasks=config.num_buckets, workers=workers, logging_dir=str(out / "logs2")).run()
    LocalPipelineExecutor([MinhashDedupCluster(str(out / "buckets"), str(out / "remove"), config=config)],
                          tasks=1, logging_dir=str(out / "logs3")).run()
    LocalPipelineExecutor([reader(), MinhashDedupFilter(str(out / "remove"),
                                                        exclusion_writer=JsonlWriter(str(out / "removed"))),
                           JsonlWriter(str(out / "kept"))], tasks=tasks, workers=workers,
                          logging_dir=str(out / "logs4")).run()
    seconds = time.perf_counter() - start
    from llm4all.data.readers import read_documents

    removed = {d.id for d in read_documents(out / "removed")} if (out / "removed").exists() else set()
    kept = sum(1 for _ in read_documents(out / "kept"))
    return {"docs_per_s": (kept + len(removed)) / seconds, "seconds": seconds, "read": kept + len(removed),
            "pipeline_docs_per_s": None, "driver_mib": None, "removed": removed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/llm4all-curate-scale"))
    parser.add_argument("--sizes", default="1x,2x,4x")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each Ray row on 4x for the ratio")
    parser.add_argument("--also-8x", action=argparse.BooleanOptionalAction, default=True,
                        help="the Ray ratio on 8x as well (printed before 4x's)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    inputs = build(args.work)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    rows = {}
    for size in args.sizes.split(","):
        files = inputs[size]
        copies = planted_copies(files)
        runs = {"local, 2 processes": lambda o, f=files: run_llm4all(f, o, "local", 2),
                "ray, 1 worker": lambda o, f=files: run_llm4all(f, o, "ray", 1),
                "ray, 2 workers": lambda o, f=files: run_llm4all(f, o, "ray", 2),
                "local, minhash at 0.72": lambda o, f=files: run_llm4all(f, o, "local", 2, 0.72),
                "datatrove minhash, 2 workers": lambda o, f=files: run_datatrove(f, o)}
        for name, run in runs.items():
            out = args.work / f"out-{size}-{name.split(',')[0].split()[0]}-{len(rows)}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            r = run(out)
            removed = r.pop("removed")  # a pair is caught when either of the two went (datatrove
            # keeps the later document of a cluster, llm4all the first)
            recall = sum(c in removed or o in removed for c, o in copies.items()) / max(len(copies), 1)
            rows[(size, name)] = {**r, "recall": recall}
            memory = (f"driver {r['driver_mib']:.0f} MiB (private {r['private_mib']:.0f}, "
                      f"object store {r['shared_mib']:.0f})" if r["driver_mib"] else "")
            inner = r["pipeline_docs_per_s"]
            pipeline = f" ({inner:,.0f} in the pipeline)" if inner else ""
            print(f"{size:<3} {name:<29} {r['read']:>7,} docs {r['docs_per_s']:>6,.0f} docs/s{pipeline:<24} "
                  f"recall {recall:.3f} ({len(copies)} copies)  {memory}", flush=True)
    sizes = [s for s in ("1x", "2x", "4x") if (s, "ray, 2 workers") in rows]
    for name in ("local, 2 processes", "ray, 1 worker", "ray, 2 workers"):
        steps = []
        for a, b in zip(sizes, sizes[1:], strict=False):
            rss, private = (rows[(b, name)][k] / rows[(a, name)][k] - 1
                            for k in ("driver_mib", "private_mib"))
            steps.append(f"{a}->{b} peak RSS {rss:+.1%}, private {private:+.1%}")
        print(f"driver memory per doubling, {name}: " + ", ".join(steps))
    if args.also_8x:  # the same ratio on twice the input: how much of 4x's is Ray's fixed cost
        ratio(args.work, "8x", inputs["8x"], rows, args.repeat)
    if ("4x", "ray, 1 worker") in rows and ("4x", "ray, 2 workers") in rows:
        ratio(args.work, "4x", inputs["4x"], rows, args.repeat)


def ratio(work: Path, size: str, files: list[Path], rows: dict, repeat: int) -> None:
    """Ray 2 workers / 1 worker on ``size``: its pair of runs above (if any) and more pairs up to
    ``repeat``, alternating 1 and 2 workers (so a drift of the machine reaches both), compared by
    their medians; each pair's ratio is printed too."""
    runs = {w: [rows[(size, f"ray, {w} worker{'s' * (w > 1)}")]] if (size, "ray, 1 worker") in rows else []
            for w in (1, 2)}
    for k in range(len(runs[1]), repeat):
        for w in (1, 2):
            out = work / f"out-{size}-ray-repeat{k}-{w}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            runs[w].append(run_llm4all(files, out, "ray", w))
    for key, label in (("docs_per_s", "command wall time"), ("pipeline_docs_per_s", "pipeline time")):
        one, two = ([r[key] for r in runs[w]] for w in (1, 2))
        pairs = ", ".join(f"{b / a:.2f}" for a, b in zip(one, two, strict=True))
        print(f"{size}, ray 2 workers / 1 worker, {label}: per pair {pairs}; medians "
              f"{statistics.median(two):,.0f} / {statistics.median(one):,.0f} docs/s")
    one, two = (statistics.median(r["docs_per_s"] for r in runs[w]) for w in (1, 2))
    print(f"ratio ({size}, ray 2 workers / 1 worker, median docs/s over {repeat} runs each, command wall "
          f"time): {two / one:.2f}")

if __name__ == "__main__":
    main()
