"""``llm4all curate``: signals, filters, dedup and selection over documents -- nothing lost.

The run, top to bottom (``main``):

0. check every name and option — signals, steps, curriculum, mixture — through their
   registries before any work;
1. read every document (a malformed one is an error, or with ``--skip-bad`` a removal at
   step ``read`` with its reason);
2. compute the signal table for all of them (per-document signals in worker processes or
   Ray; model-based ones batched in this process; finished shards cached for reruns);
3. apply the steps in order to the documents still kept; each step answers keep, or drop with
   a reason, for every document it sees;
4. write ``kept.jsonl.zst`` (input order), ``removed.jsonl.zst`` (each with its step and
   reason), ``signals.parquet`` (every document read), the optional curriculum and mixture
   manifests, ``summary.json`` and the stage manifest ``llm4all.json``; check
   ``kept + removed == read``. With ``--out-shard-docs N`` kept, removed and rejects are
   folders of parts of N documents each (``kept/part-00000.jsonl.zst``, ...), written one
   part after another.

A step (the protocol: ``step.py``) is a mapping with one of the keys ``filter`` / ``dedup`` /
``select`` naming a registered entry (``llm4all ls filters|dedupers|selectors``) and that
entry's options, e.g. ``{dedup: minhash, threshold: 0.8}``; ``label:`` renames it and
``when: {lang: en}`` applies it only to documents whose meta matches (the others pass it
untouched: Gopher's English stop-word rule has no business judging French). Dedup and
selection are global, but texts and meta live in an on-disk store (``store.py``): the driver
holds per-document numbers only (ids, signal columns, a step's arrays).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llm4all.curate import curriculum as curricula
from llm4all.curate import mixture as mixtures
from llm4all.curate.engine import Engine, ShardCache, Workers, compute_table
from llm4all.curate.formats import check_format, column_values, format_columns, record_parser
from llm4all.curate.reading import Ledger, read_all
from llm4all.curate.step import Step, TableRows, build_step, check_decisions
from llm4all.curate.store import DocStore
from llm4all.errors import UserError
from llm4all.malloc import release_freed_memory
from llm4all.runs import atomic_dir, write_json, write_manifest

DEFAULT_SIGNALS = ["char_entropy", "word_entropy", "zlib_ratio", "ttr", "mtld", "flesch",
                   "gopher_quality", "gopher_repetition"]
SIGNAL_ROWS = 16384  # rows of signals.parquet converted and written at once (a row group)
DEFAULT_STEPS = [{"filter": "published"}, {"dedup": "exact"}, {"dedup": "minhash"}]


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
    lang_id: Literal["model", "meta"] = "model",
    ray_address: str | None = None,
    device: str = "auto",
    out_shard_docs: int | None = None,
    format: Literal["text", "chat", "summary"] = "text",  # noqa: A002 - the option's name
) -> dict:
    """Curate documents: signals, filters, dedup, selection; write kept and removed with reasons.

    Args:
        data: document files or folders (.jsonl/.jsonl.gz/.jsonl.zst, .parquet, .txt, HF datasets).
        out: output directory (replaced atomically when the run succeeds).
        signals: signals to compute (`llm4all ls signals`), names or {name: ..., option: ...}.
        steps: steps in order, each {filter|dedup|select: NAME, option: value, ...}.
        curriculum: write curriculum.json, e.g. {signal: flesch_kincaid_grade, order:
            easy_to_hard, higher_is_harder: true, pacing: root, c0: 0.1} (`llm4all ls curricula`).
        mixture: write mixture.json, e.g. {by: lang, method: temperature, tau: 2.0} or
            {by: lang, method: fixed, weights: {en: 0.8, fr: 0.2}} (`llm4all ls mixtures`).
        engine: local (worker processes) or ray (Ray Data) for per-document work.
        workers: processes (local) or CPUs (ray, when it starts its own local instance).
        shard_docs: documents per shard (the unit of parallel work and of the rerun cache).
        text_key: the text field of JSONL/parquet records.
        skip_bad: record malformed input records as removed at step 'read' instead of stopping.
        max_docs: read at most this many documents.
        lang_id: model: meta.lang := the language fastText's lid.176 identifies (+ lang_score;
            a different declared one stays as lang_declared); meta: trust meta.lang as given.
        ray_address: with --engine ray, join this running cluster instead of starting a local
            Ray instance: auto, or the address of its head (host and port, e.g. 10.0.0.5:6379).
        device: where model signals, Ask-LLM and embeddings (SemDeDup, D4) run: auto (CUDA when
            present, else CPU), cpu, cuda or cuda:N; the workers inherit it.
        out_shard_docs: write kept, removed and rejects as folders of parts of this many
            documents (kept/part-00000.jsonl.zst, ...) instead of one file each.
        format: text, or chat: conversations (as tokenize --format chat reads them), curated on
            their transcripts with the columns turns, prompt_words and response_words; or summary:
            (document, summary) pairs, curated on their summaries with the factual-consistency
            columns entity_precision, number_precision, ... (docs/curate.md).
    """
    from llm4all.data.writers import document_writer
    from llm4all.models.device import device_env

    # 0. every name and option, checked before any work
    signals = list(DEFAULT_SIGNALS if signals is None else signals)
    steps = list(DEFAULT_STEPS if steps is None else steps)
    check_format(format)
    built, cur, mix = check_config(signals, steps, curriculum, mixture, format=format)
    _check_engine(engine, workers, shard_docs, ray_address, out_shard_docs)
    out = Path(out)
    cache = ShardCache(out.parent / f".{out.name}.cache")
    timings: dict[str, float] = {}
    start = time.perf_counter()

    with (device_env(device), atomic_dir(out) as tmp, DocStore(out.parent) as docs,
          Workers(engine, workers, ray_address) as executor,
          document_writer(tmp / "removed.jsonl.zst", out_shard_docs) as removed_writer):
        ledger = Ledger(removed_writer)
        # 1. read (texts go to the store's file: the driver keeps ids and offsets)
        t0 = time.perf_counter()
        rejects = tmp / ("rejects" if out_shard_docs else "rejects.jsonl")
        rejected = read_all(docs, data, text_key, skip_bad, max_docs, ledger, rejects,
                            lang_id == "model", out_shard_docs, record_parser(format), executor)
        read, ids = len(docs) + rejected, docs.ids
        timings["read"] = time.perf_counter() - t0
        release_freed_memory()  # each phase's freed temporaries back to the OS (malloc.py)

        # 2. signals
        t0 = time.perf_counter()
        table, engine_stats = compute_table(ids, docs.texts(), signals, executor, shard_docs, cache)
        table.update(column_values(format, docs.texts(), docs.metas))
        timings["signals"] = time.perf_counter() - t0
        _write_signals(tmp / "signals.parquet", ids, table)

        # 3. steps
        keep, step_rows = run_steps(built, steps, docs, table, ledger,
                                    executor.ray() if engine == "ray" else None)
        timings.update({row["step"]: row["seconds"] for row in step_rows})
        executor.release()  # Ray stops while the outputs are written

        # 4. outputs
        write_kept(tmp / "kept.jsonl.zst", docs, keep, ledger, read, out_shard_docs)
        outputs = {**_output_names(out_shard_docs, rejects),
                   **write_order_manifests(tmp, docs, keep, table, cur, mix)}
        summary = _summary(read, keep, ledger, step_rows, table, engine, engine_stats, timings, start)
        write_json(tmp / "summary.json", summary)
        _write_stage_manifest(tmp, data, outputs, summary, rejected)
    _print_summary(out, summary)
    return summary


def _output_names(out_shard_docs: int | None, rejects: Path) -> dict[str, str]:
    """The stage manifest's names of the outputs written (folders with ``--out-shard-docs``)."""
    folder = "/" * bool(out_shard_docs)
    return {"kept": "kept" + (folder or ".jsonl.zst"), "removed": "removed" + (folder or ".jsonl.zst"),
            "signals": "signals.parquet", "summary": "summary.json",
            **({"rejects": rejects.name + folder} if rejects.exists() else {})}


def _summary(read: int, keep: np.ndarray, ledger: Ledger, step_rows: list[dict], table: dict, engine: str,
             engine_stats: dict, timings: dict, start: float) -> dict:
    return {
        "read": read, "kept": int(len(keep)), "removed": ledger.removed,
        "removed_by_step": {s: dict(c.most_common()) for s, c in ledger.by_step.items()},
        "steps": step_rows, "signals": list(table), "engine": engine, "engine_stats": engine_stats,
        "seconds": {**{k: round(v, 3) for k, v in timings.items()},
                    "total": round(time.perf_counter() - start, 3)},
        "driver_peak_rss_mib": _peak_rss_mib(),
    }


def _write_stage_manifest(tmp: Path, data: list[Path], outputs: dict, summary: dict, rejected: int) -> None:
    write_manifest(tmp, "curate", inputs={"data": [str(p) for p in data]}, files=outputs,
                   metrics={"read": summary["read"], "kept": summary["kept"], "removed": summary["removed"],
                            "rejected": rejected, "removed_by_step": summary["removed_by_step"],
                            "steps": {r["step"]: {k: r[k] for k in ("in", "judged", "kept", "removed")}
                                      for r in summary["steps"]},
                            "seconds": summary["seconds"]["total"]})


def check_config(signals: list, steps: list[dict], curriculum: dict | None, mixture: dict | None,
                 format: str = "text"  # noqa: A002 - curate's option
                 ) -> tuple[list[tuple[str, Step]], curricula.Curriculum | None, mixtures.Mixture | None]:
    """Signals, steps, curriculum and mixture through their registries: (steps built, curriculum, mixture)."""
    from llm4all.curate.signals.compute import resolve

    columns = [c for _, fn, _ in resolve(signals) for c in fn.columns]  # unknown names fail here
    columns += list(format_columns(format))
    cur = curricula.parse(curriculum) if curriculum else None
    if cur and cur.signal not in columns:
        raise UserError(f"curriculum: no signal column {cur.signal!r}; "
                        f"computed columns: {', '.join(columns)}")
    mix = mixtures.parse(mixture) if mixture else None
    built = [build_step(s, f"steps[{i}]") for i, s in enumerate(steps)]
    labels = [label for label, _ in built]
    if len(set(labels)) != len(labels):
        raise UserError(f"steps: labels must be unique, got {labels}; add label: to repeated steps")
    return built, cur, mix


def _peak_rss_mib() -> float | None:
    """This process's resident-memory high-water mark (VmHWM), MiB; None off Linux."""
    from llm4all.plan.measure import peak_rss_mib

    try:
        return round(peak_rss_mib(), 1)
    except (OSError, RuntimeError):
        return None


def _check_engine(engine: str, workers: int, shard_docs: int, ray_address: str | None,
                  out_shard_docs: int | None = None) -> None:
    if workers < 1 or shard_docs < 1 or (out_shard_docs is not None and out_shard_docs < 1):
        raise UserError("--workers, --shard-docs and --out-shard-docs must be at least 1")
    if ray_address and engine != "ray":
        raise UserError("--ray-address joins a Ray cluster for --engine ray; add --engine ray")


def write_kept(path: Path, docs: DocStore, keep: np.ndarray, ledger: Ledger, read: int,
               per_shard: int | None = None) -> None:
    """The kept documents in input order (one file, or parts of ``per_shard``), after checking
    that kept + removed == read."""
    from llm4all.data.writers import document_writer

    if ledger.removed + len(keep) != read:
        raise RuntimeError(f"accounting broken: kept {len(keep)} + removed {ledger.removed} != read {read}")
    with document_writer(path, per_shard) as kept_writer:
        for i in keep:
            kept_writer.write(docs.document(int(i)))


def run_steps(built: list[tuple[str, Step]], steps: list[dict], docs: DocStore,
              table: dict[str, np.ndarray], ledger: Ledger, ray=None) -> tuple[np.ndarray, list[dict]]:
    """Apply the steps in order to the documents still kept (and matching ``when:``).

    Returns the kept indices (input order) and one row of counts per step; every removal goes
    to the ledger with its step label and reason (the label, if a step gave none). With ``ray``
    (the connected module) a step that runs on Ray Data (``on_ray``) runs there.
    """
    from llm4all.progress import progress

    keep = np.arange(len(docs))
    rows = []
    with progress("curate", len(built), "steps") as advance:
        for (label, step), spec in zip(built, steps, strict=True):
            rows.append(_one_step(label, step, spec, docs, table, ledger, keep, ray))
            keep = rows[-1].pop("survivors")
            release_freed_memory()
            advance()
    return keep, rows


def _one_step(label: str, step: Step, spec: dict, docs: DocStore, table: dict[str, np.ndarray],
              ledger: Ledger, keep: np.ndarray, ray=None) -> dict:
    """Counts of one step over the documents still kept, and (key ``survivors``) those it keeps."""
    t0 = time.perf_counter()
    when = spec.get("when") or {}
    judged = (np.asarray([i for i in keep if _matches(docs.metas[int(i)], when)], dtype=np.int64)
              if when else np.asarray(keep, np.int64))
    judged_ids = [docs.ids[i] for i in judged]
    columns = TableRows(table, judged)
    on_ray = getattr(step, "on_ray", None) if ray is not None else None
    metas = {"metas": docs.metas_of(judged)} if getattr(step, "reads_meta", False) else {}
    decisions = (on_ray(ray, judged_ids, docs.texts(judged), columns) if on_ray else
                 step(judged_ids, docs.texts(judged), columns, **metas))
    check_decisions(label, decisions, judged_ids)
    dropped = np.zeros(len(judged), bool)
    for k, (d, i) in enumerate(zip(decisions, judged, strict=True)):
        if not d.keep:
            dropped[k] = True
            ledger.remove(label, docs.document(int(i)).to_dict(), d.reason or {"reason": label})
    survivors = np.asarray(keep, np.int64)[~np.isin(keep, judged[dropped])]
    return {"step": label, "in": int(len(keep)), "judged": int(len(judged)),
            "kept": len(survivors), "removed": int(len(keep) - len(survivors)),
            "reasons": dict(ledger.by_step.get(label, Counter()).most_common()),
            "seconds": round(time.perf_counter() - t0, 3), "ran_on": "ray" if on_ray else "driver",
            "survivors": survivors}


def write_order_manifests(tmp: Path, docs: DocStore, keep: np.ndarray,
                          table: dict[str, np.ndarray], cur: curricula.Curriculum | None,
                          mix: mixtures.Mixture | None) -> dict[str, str]:
    """``curriculum.json`` and ``mixture.json`` over the kept documents, when asked; {name: file}."""
    written = {}
    kept_ids = [docs.ids[i] for i in keep]
    if cur:
        write_json(tmp / "curriculum.json",
                   curricula.manifest(cur, kept_ids, {c: v[keep] for c, v in table.items()}))
        written["curriculum"] = "curriculum.json"
    if mix:
        write_json(tmp / "mixture.json", mixtures.manifest(
            mix, kept_ids, [docs.metas[i] for i in keep], [docs.lengths[i] for i in keep]))
        written["mixture"] = "mixture.json"
    return written


def _matches(meta: dict[str, Any], when: dict[str, Any]) -> bool:
    return all(meta.get(k) == v for k, v in when.items())


def _write_signals(path: Path, ids: list[str], table: dict[str, np.ndarray]) -> None:
    """signals.parquet: the id and every signal column, written SIGNAL_ROWS rows (one row group)
    at a time: converting the whole table at once held every column twice more in Arrow's
    buffers and the Parquet encoder's (+22 MiB per 18k documents on the benchmark corpus). The
    signal computation's freed temporaries and then the writer's go back to the OS first and
    last (``release_freed_memory``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llm4all.runs import atomic_path

    def part(start: int):
        end = start + SIGNAL_ROWS
        return pa.table({"id": pa.array(ids[start:end], pa.string()),
                         **{c: pa.array(v[start:end]) for c, v in table.items()}})

    release_freed_memory()
    first = part(0)
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, first.schema, compression="zstd") as writer:
        writer.write_table(first)
        for start in range(SIGNAL_ROWS, len(ids), SIGNAL_ROWS):
            writer.write_table(part(start))
    del first
    release_freed_memory()


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
