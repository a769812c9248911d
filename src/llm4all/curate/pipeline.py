"""``llm4all curate``: signals, filters, dedup and selection over documents -- nothing lost.

The run, top to bottom:

1. read every document (a malformed one is an error, or with ``--skip-bad`` a removal at
   step ``read`` with its reason);
2. compute the signal table for all of them (per-document signals in worker processes or
   Ray; model-based ones batched in this process; finished shards cached for reruns);
3. apply the steps in order to the documents still kept; each step answers keep, or drop with
   a reason, for every document it sees;
4. write ``kept.jsonl.zst`` (input order), ``removed.jsonl.zst`` (each with its step and
   reason), ``signals.parquet`` (every document read), the optional curriculum and mixture
   manifests, and ``summary.json``; check ``kept + removed == read``.

A step is a mapping with one of the keys ``filter`` / ``dedup`` / ``select`` naming a
registered entry (``llm4all ls filters|dedupers|selectors``) and that entry's options, e.g.
``{dedup: minhash, threshold: 0.8}``; ``label:`` renames it and ``when: {lang: en}`` applies it
only to documents whose meta matches (the others pass it untouched: Gopher's English
stop-word rule has no business judging French). Dedup and selection are global: this stage holds the
texts of the documents it reads in memory (about their size in bytes, twice); curate larger
corpora in parts.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llm4all.curate.dedup.exact import Decision
from llm4all.curate.engine import Engine, ShardCache, compute_table
from llm4all.errors import UserError
from llm4all.runs import atomic_dir, write_json

DEFAULT_SIGNALS = ["char_entropy", "word_entropy", "zlib_ratio", "ttr", "mtld", "flesch",
                   "gopher_quality", "gopher_repetition"]
DEFAULT_STEPS = [{"filter": "published"}, {"dedup": "exact"}, {"dedup": "minhash"}]
STEP_KINDS = ("filter", "dedup", "select")
StepFn = Callable[[list[str], list[str], dict[str, np.ndarray]], list[Decision]]


def build_step(spec: dict[str, Any], where: str) -> tuple[str, StepFn]:
    """Turn ``{dedup: minhash, threshold: 0.8}`` into (label, fn); options checked now."""
    from llm4all import catalog
    from llm4all.registry import check_options

    if not isinstance(spec, dict):
        raise UserError(f"{where}: a step is a mapping like {{dedup: minhash}}, got {spec!r}")
    if not isinstance(spec.get("when", {}), dict):
        raise UserError(f"{where}.when: expected a mapping like {{lang: en}}, got {spec['when']!r}")
    kinds = [k for k in STEP_KINDS if k in spec]
    if len(kinds) != 1:
        raise UserError(f"{where}: a step needs exactly one of {', '.join(STEP_KINDS)}; got {sorted(spec)}")
    kind = kinds[0]
    options = {k: v for k, v in spec.items() if k not in (kind, "label", "when")}
    name = spec[kind]
    label = str(spec.get("label", f"{kind}:{name}"))
    if kind == "filter":
        fn = catalog.FILTERS.get(name)
        check_options(fn, options, where=f"{where} (filter {name!r})")
        return label, lambda ids, texts, table: fn(ids, table, **options)
    registry = catalog.DEDUPERS if kind == "dedup" else catalog.SELECTORS
    check_options(registry.get(name), options, where=f"{where} ({kind} {name!r})")
    instance = registry.build({"name": name, **options})
    if kind == "dedup":
        return label, lambda ids, texts, table: list(instance(zip(ids, texts, strict=True)))
    return label, instance


class Ledger:
    """Counts and writes every removal, so that kept + removed == read can be checked."""

    def __init__(self, writer):
        self.writer = writer
        self.by_step: dict[str, Counter] = {}
        self.removed = 0

    def remove(self, step: str, doc: dict[str, Any], reason: dict[str, Any]) -> None:
        self.by_step.setdefault(step, Counter())[str(reason.get("reason", "unspecified"))] += 1
        self.removed += 1
        self.writer.write({**doc, "step": step, "reason": reason})


def main(
    data: list[Path],
    *,
    out: Path,
    signals: list[str | dict] | None = None,
    steps: list[dict] | None = None,
    curriculum: dict | None = None,
    mixture: dict | None = None,
    engine: Engine = "local",
    workers: int = 2,
    shard_docs: int = 500,
    text_key: str = "text",
    skip_bad: bool = False,
    max_docs: int | None = None,
) -> dict:
    """Curate documents: signals, filters, dedup, selection; write kept and removed with reasons.

    Args:
        data: document files or folders (.jsonl/.jsonl.gz/.jsonl.zst, .parquet, .txt, HF datasets).
        out: output directory (replaced atomically when the run succeeds).
        signals: signals to compute (`llm4all ls signals`), names or {name: ..., option: ...}.
        steps: steps in order, each {filter|dedup|select: NAME, option: value, ...}.
        curriculum: write curriculum.json: {signal: NAME, order: easy_to_hard|hard_to_easy,
            higher_is_harder: true, pacing: linear|root|step, c0: 0.1}.
        mixture: write mixture.json: {by: lang, method: fixed|proportional|temperature,
            weights: {en: 0.8, fr: 0.2}, tau: 1.0}.
        engine: local (worker processes) or ray (Ray Data) for per-document work.
        workers: processes (local) or CPUs (ray).
        shard_docs: documents per shard (the unit of parallel work and of the rerun cache).
        text_key: the text field of JSONL/parquet records.
        skip_bad: record malformed input records as removed at step 'read' instead of stopping.
        max_docs: read at most this many documents.
    """
    from llm4all.curate import curriculum as curriculum_mod
    from llm4all.curate import mixture as mixture_mod
    from llm4all.curate.signals.compute import resolve
    from llm4all.data.readers import Rejects, read_documents
    from llm4all.data.writers import DocumentWriter

    signals = list(DEFAULT_SIGNALS if signals is None else signals)
    steps = list(DEFAULT_STEPS if steps is None else steps)
    columns = [c for _, fn, _ in resolve(signals) for c in fn.columns]  # unknown names fail here
    if curriculum and curriculum.get("signal") not in columns:
        raise UserError(f"curriculum: no signal column {curriculum.get('signal')!r}; "
                        f"computed columns: {', '.join(columns)}")
    built = [build_step(s, f"steps[{i}]") for i, s in enumerate(steps)]
    labels = [label for label, _ in built]
    if len(set(labels)) != len(labels):
        raise UserError(f"steps: labels must be unique, got {labels}; add label: to repeated steps")
    if workers < 1 or shard_docs < 1:
        raise UserError("--workers and --shard-docs must be at least 1")
    out = Path(out)
    cache = ShardCache(out.parent / f".{out.name}.cache")
    timings: dict[str, float] = {}
    start = time.perf_counter()

    with atomic_dir(out) as tmp, DocumentWriter(tmp / "removed.jsonl.zst") as removed_writer:
        ledger = Ledger(removed_writer)
        # 1. read
        t0 = time.perf_counter()
        rejects = Rejects()
        docs, seen = [], set()
        for doc in read_documents(data, text_key=text_key, skip_bad=skip_bad, rejects=rejects):
            if doc.id in seen:
                raise UserError(f"duplicate document id {doc.id!r}; ids must be unique")
            seen.add(doc.id)
            docs.append(doc)
            if max_docs is not None and len(docs) >= max_docs:
                break
        read = len(docs) + rejects.count
        for n in range(rejects.count):
            ledger.remove("read", {"id": f"rejected/{n}", "text": "", "meta": {}},
                          {"reason": "malformed record"})
        if not docs:
            raise UserError(f"{', '.join(map(str, data))}: no documents to curate")
        ids, texts = [d.id for d in docs], [d.text for d in docs]
        timings["read"] = time.perf_counter() - t0

        # 2. signals
        t0 = time.perf_counter()
        table, engine_stats = compute_table(ids, texts, signals, engine=engine, workers=workers,
                                            shard_docs=shard_docs, cache=cache)
        timings["signals"] = time.perf_counter() - t0
        _write_signals(tmp / "signals.parquet", ids, table)

        # 3. steps
        keep = np.arange(len(docs))
        step_rows = []
        for (label, fn), spec in zip(built, steps, strict=True):
            t0 = time.perf_counter()
            when = spec.get("when") or {}
            seen_idx = np.asarray([i for i in keep if _matches(docs[i].meta, when)], dtype=np.int64)
            sub = {c: v[seen_idx] for c, v in table.items()}
            decisions = fn([ids[i] for i in seen_idx], [texts[i] for i in seen_idx], sub)
            if len(decisions) != len(seen_idx) or any(
                    d.id != ids[i] for d, i in zip(decisions, seen_idx, strict=True)):
                raise RuntimeError(f"step {label!r} did not answer once per document, in order")
            dropped = set()
            for d, i in zip(decisions, seen_idx, strict=True):
                if not d.keep:
                    dropped.add(int(i))
                    ledger.remove(label, docs[i].to_dict(), d.reason or {"reason": label})
            survivors = [int(i) for i in keep if int(i) not in dropped]
            timings[label] = time.perf_counter() - t0
            step_rows.append({"step": label, "in": int(len(keep)), "judged": int(len(seen_idx)),
                              "kept": len(survivors),
                              "removed": int(len(keep) - len(survivors)),
                              "reasons": dict(ledger.by_step.get(label, Counter()).most_common()),
                              "seconds": round(timings[label], 3)})
            keep = np.asarray(survivors, dtype=np.int64)

        # 4. outputs
        with DocumentWriter(tmp / "kept.jsonl.zst") as kept_writer:
            for i in keep:
                kept_writer.write(docs[i])
        if ledger.removed + len(keep) != read:
            raise RuntimeError(f"accounting broken: kept {len(keep)} + removed {ledger.removed} "
                               f"!= read {read}")
        kept_ids = [ids[i] for i in keep]
        kept_table = {c: v[keep] for c, v in table.items()}
        if curriculum:
            write_json(tmp / "curriculum.json", _curriculum(curriculum_mod, kept_ids, kept_table, curriculum))
        if mixture:
            write_json(tmp / "mixture.json", _mixture(mixture_mod, kept_ids, docs, keep, mixture))
        summary = {
            "read": read, "kept": int(len(keep)), "removed": ledger.removed,
            "removed_by_step": {s: dict(c.most_common()) for s, c in ledger.by_step.items()},
            "steps": step_rows, "signals": list(table), "engine": engine, "engine_stats": engine_stats,
            "seconds": {k: round(v, 3) for k, v in timings.items()},
        }
        summary["seconds"]["total"] = round(time.perf_counter() - start, 3)
        write_json(tmp / "summary.json", summary)
    _print_summary(out, summary)
    return summary


def _matches(meta: dict[str, Any], when: dict[str, Any]) -> bool:
    return all(meta.get(k) == v for k, v in when.items())


def _curriculum(mod, ids, table, spec: dict) -> dict:
    options = dict(spec)
    if "signal" not in options:
        raise UserError("curriculum: needs signal: NAME (a computed signal column)")
    allowed = {"signal", "order", "higher_is_harder", "pacing", "c0", "n_steps"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UserError(f"curriculum: unknown key {unknown[0]!r}; valid: {', '.join(sorted(allowed))}")
    if "order" in options:
        options["order_"] = options.pop("order")
    return mod.build(ids, table, **options)


def _mixture(mod, ids, docs, keep, spec: dict) -> dict:
    options = dict(spec)
    allowed = {"by", "method", "weights", "tau"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UserError(f"mixture: unknown key {unknown[0]!r}; valid: {', '.join(sorted(allowed))}")
    if "weights" in options:
        options["weights_"] = options.pop("weights")
    return mod.build(ids, [docs[i].meta for i in keep], [len(docs[i].text) for i in keep], **options)


def _write_signals(path: Path, ids: list[str], table: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llm4all.runs import atomic_path

    columns = {"id": pa.array(ids, pa.string()), **{c: pa.array(v) for c, v in table.items()}}
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns), tmp, compression="zstd")


def _print_summary(out: Path, summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"curate -> {out}")
    for col in ("step", "in", "kept", "removed", "top reasons", "s"):
        table.add_column(col, justify="right" if col not in ("step", "top reasons") else "left")
    for row in summary["steps"]:
        reasons = ", ".join(f"{r} ({n})" for r, n in list(row["reasons"].items())[:3])
        table.add_row(row["step"], f"{row['in']:,}", f"{row['kept']:,}", f"{row['removed']:,}",
                      reasons, f"{row['seconds']:.1f}")
    Console().print(table)
    stats = summary["engine_stats"]
    print(f"read {summary['read']:,} = kept {summary['kept']:,} + removed {summary['removed']:,}; "
          f"signals {summary['seconds']['signals']:.1f} s ({stats['computed']} shards computed, "
          f"{stats['cached']} cached), total {summary['seconds']['total']:.1f} s")
