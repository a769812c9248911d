"""The report's sections: each takes collected facts and returns HTML (empty when nothing to show).

Every plot is followed by the numbers behind it in a collapsed ``<details>`` table.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from llm4all.report import collect, plots

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#222;
 max-width:1180px;margin:0 auto;padding:24px 32px;background:#fff}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:20px;margin:36px 0 8px;padding-top:8px;border-top:1px solid #ddd}
h3{font-size:16px;margin:20px 0 6px} .sub{color:#666;margin:0 0 16px} nav a{margin-right:14px;color:#1f5fa0}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid #e4e4e4;text-align:right;vertical-align:top}
th{background:#f5f5f5} td.l,th.l{text-align:left} td:not(.l),td:first-child{white-space:nowrap}
.lead{font-size:16px;background:#f6f9fc;border-left:4px solid #1f77b4;padding:10px 14px}
details{margin:6px 0 14px} summary{cursor:pointer;color:#1f5fa0;font-size:13px}
svg{max-width:100%;height:auto} .note{color:#777;font-size:13px}
.swatch{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:6px}
"""
TEACHER_NOTE = ("The default teacher, SmolLM2-135M-Instruct (Allal et al. 2025), ships as a Q4_1 GGUF: "
                "its weights here are the 4-bit values de-quantised to fp32, not the original bf16 "
                "release, so its quality numbers describe that model.")


def esc(x: Any) -> str:
    return html.escape(str(x))


def fmt(v: Any, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    if kind == "bytes":
        return (f"{v / 2**10:,.1f} KB" if v < 2**20 else f"{v / 2**20:,.1f} MB" if v < 2**30
                else f"{v / 2**30:,.2f} GB")
    if kind == "params":
        return f"{v / 1e6:,.2f} M" if v < 1e9 else f"{v / 1e9:,.2f} B"
    if isinstance(v, bool) or not isinstance(v, int | float):
        return esc(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.4g}" if 1e-3 <= abs(v) < 1e6 or v == 0 else f"{v:.3e}"


def table(headers: list[str], rows: list[list[Any]], left: int = 1) -> str:
    """An HTML table; the first ``left`` columns (names) align left, the numbers right."""
    def cell(tag: str, i: int, text: str) -> str:
        return f'<{tag} class="l">{text}</{tag}>' if i < left else f"<{tag}>{text}</{tag}>"

    head = "".join(cell("th", i, esc(h)) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", i, c if isinstance(c, _Raw) else fmt(c))
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def numbers(headers: list[str], rows: list[list[Any]], what: str = "the numbers behind this plot",
            left: int = 1) -> str:
    return f"<details><summary>{esc(what)}</summary>{table(headers, rows, left)}</details>"


def section(anchor: str, title: str, body: str) -> tuple[str, str, str]:
    return anchor, title, f'<section id="{anchor}"><h2>{esc(title)}</h2>{body}</section>'


# -- sections -------------------------------------------------------------------------------------

VARIANT_COLUMNS = ["model", "role", "perplexity", "size on disk", "parameters", "bits / weight",
                   "decode tok/s (B=1)", "latency p50 ms/token", "peak RSS MiB", "task acc",
                   "training compute"]


def variant_rows(variants: list[dict]) -> list[list[Any]]:
    rows = []
    for v in variants:
        bits = 8 * v["size_bytes"] / v["params"] if v["size_bytes"] and v["params"] else None
        dot = f'<span class="swatch" style="background:{plots.role_colour(v["role"])}"></span>'
        rows.append([_Raw(dot + esc(v["name"])), v["role"], v["ppl"], fmt(v["size_bytes"], "bytes"),
                     fmt(v["params"], "params"), bits, v["decode_tokens_per_s"], v["latency_ms"],
                     v["peak_mib"],
                     v["tasks_acc"], f"{v['train_flops']:.2e} FLOPs" if v["train_flops"] else None])
    return rows


def headline(run: Path, found: list[dict], variants: list[dict], cur: dict | None, notes: list[str]) -> str:
    done = [s for s in found if s["done"]]
    seconds = sum(s["seconds"] or 0 for s in done)
    parts = [f"{len(done)} of {len(found)} stages finished ({seconds / 60:.1f} min of stage time)."]
    teacher = next((v for v in variants if v["role"] == "teacher" and v["ppl"]), None)
    for v in variants:
        if v is teacher or not v["ppl"]:
            continue
        text = f"<b>{esc(v['name'])}</b> ({esc(v['role'])}): perplexity {v['ppl']:.4g}"
        if teacher and v["size_bytes"] and teacher["size_bytes"]:
            ratio = teacher["size_bytes"] / v["size_bytes"]
            text += f", {ratio:.1f}× smaller" if ratio >= 1 else f", {1 / ratio:.1f}× larger"
        parts.append(text + ".")
    if teacher:
        size = f", {fmt(teacher['size_bytes'], 'bytes')} on disk" if teacher["size_bytes"] else ""
        parts.insert(1, f"Teacher <b>{esc(teacher['name'])}</b>: perplexity {teacher['ppl']:.4g}{size}; "
                        "each model below is compared with it.")
    if cur and cur["summary"]:
        s = cur["summary"]
        parts.append(f"Curation kept {s.get('kept', 0):,} of {s.get('read', 0):,} documents.")
        planted = cur["planted"]
        if planted:
            caught = sum(r["removed"] for r in planted.values())
            total = sum(r["planted"] for r in planted.values())
            parts.append(f"It caught {caught} of {total} planted junk documents "
                         f"({100 * caught / total:.0f}%).")
    if not variants:
        parts.append("No model was trained, compressed or evaluated in this run yet.")
    body = f'<p class="lead">{" ".join(parts)}</p>'
    if variants:
        body += "<h3>What you get</h3>" + table(VARIANT_COLUMNS, variant_rows(variants), left=2)
        sources = sorted({v["ppl_source"] for v in variants if v["ppl_source"]})
        body += ('<p class="note">Perplexity from: ' + "; ".join(esc(s) for s in sources) +
                 ". Numbers from different sources (window length, tokens) are not strictly comparable. "
                 "Bits / weight = 8 × size on disk / parameters (a compressed model counts its dense "
                 "parameters). Training compute ≈ 6·N·D (Kaplan et al. 2020).</p>")
    if any(v["name"].startswith("smollm2") for v in variants):
        body += f'<p class="note">{esc(TEACHER_NOTE)} Its training compute uses the 2T pre-training tokens ' \
                "reported for SmolLM2-135M.</p>"
    if notes:
        body += '<p class="note">Notes: ' + "; ".join(esc(n) for n in notes) + ".</p>"
    return body


def pareto_section(variants: list[dict]) -> str:
    points = [v for v in variants if v["ppl"]]
    candidates = [("size_bytes", "size on disk (MB)", 2**20),
                  ("latency_ms", "decode latency (ms / token)", 1.0),
                  ("peak_mib", "peak memory (MiB)", 1.0), ("train_flops", "training compute (FLOPs)", 1.0)]
    metrics = [m for m in candidates if sum(1 for p in points if p.get(m[0])) >= 2]
    if not metrics:
        return ""
    missing = [label for key, label, _ in candidates[1:] if key not in [k for k, *_ in metrics]]
    body = plots.pareto(points, metrics)
    body += ('<p class="note">Down and to the left is better; the dashed line joins the models that no other '
             "model beats on both axes.")
    if missing:
        body += (f" Not enough measurements for: {esc(', '.join(missing))} "
                 "(run <code>llm4all eval speed</code>).")
    body += "</p>"
    return body + numbers(["model", "perplexity"] + [m[1] for m in metrics],
                          [[p["name"], p["ppl"]] + [p.get(k) and p[k] / s for k, _, s in metrics]
                           for p in points])


def training_section(found: list[dict]) -> str:
    runs = {s["name"]: collect.read_jsonl(s["path"] / "metrics.jsonl")
            for s in found if s["command"] in ("train", "distill")}
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        return ""
    body = plots.curves(runs)
    rows = []
    for name, metrics in runs.items():
        last = metrics[-1]
        val = [m for m in metrics if "val_loss" in m]
        rows.append([name, last.get("step"), last.get("tokens"), last.get("loss"),
                     val[-1]["val_loss"] if val else None, val[-1].get("val_ppl") if val else None,
                     float(np.mean([m["tokens_per_s"] for m in metrics if "tokens_per_s" in m] or [np.nan]))])
    body += table(["stage", "steps", "tokens", "last loss", "val loss", "val ppl", "mean tokens/s"], rows)
    detail = [[n, m.get("step"), m.get("tokens"), m.get("loss"), m.get("lr"), m.get("val_loss"), m.get("kd"),
               m.get("ce")] for n, ms in runs.items() for m in ms]
    return body + numbers(["stage", "step", "tokens", "loss", "lr", "val loss", "kd", "ce"], detail,
                          "every logged step")


def curation_section(name: str, cur: dict) -> str:
    s = cur["summary"] or {}
    body = f"<h3>{esc(name)}</h3>"
    if s:
        body += (f"<p>Read {s.get('read', 0):,} documents: kept {s.get('kept', 0):,}, "
                 f"removed {s.get('removed', 0):,} (every removal is in removed.jsonl.zst with its "
                 "step and reason).</p>")
        rows = [(step, reason, n) for step, reasons in (s.get("removed_by_step") or {}).items()
                for reason, n in reasons.items()]
        if rows:
            steps = list(dict.fromkeys(r[0] for r in rows))
            shown = rows[:24]
            body += plots.hbars([f"{st}: {r}"[:60] for st, r, _ in shown], [n for *_, n in shown],
                                "documents removed",
                                [plots.PALETTE[steps.index(st) % 10] for st, *_ in shown],
                                salt=f"removals-{name}")
            if len(rows) > len(shown):
                body += (f'<p class="note">{len(rows) - len(shown)} more (step, reason) pairs '
                         "in the table.</p>")
            body += numbers(["step", "reason", "removed"], [list(r) for r in rows])
        steps = s.get("steps") or []
        if steps:
            body += table(["step", "in", "kept", "removed", "seconds"],
                          [[r.get("step"), r.get("in"), r.get("kept"), r.get("removed"), r.get("seconds")]
                           for r in steps])
    sig = cur["signals"]
    if sig and sig["columns"]:
        removed = np.array([i in cur["removed"] for i in sig["ids"]])
        cols = {k: np.asarray(v, dtype=np.float64) for k, v in list(sig["columns"].items())[:16]}
        body += "<h3>Signals: kept against removed documents</h3>" + plots.histograms(cols, removed)
        if len(sig["columns"]) > 16:
            body += f'<p class="note">First 16 of {len(sig["columns"])} signal columns shown.</p>'
        stats = [[k, float(np.nanmean(v[~removed])) if (~removed).any() else None,
                  float(np.nanmean(v[removed])) if removed.any() else None,
                  float(np.nanpercentile(v, 1)), float(np.nanpercentile(v, 99))] for k, v in cols.items()]
        body += numbers(["signal", "mean kept", "mean removed", "p1", "p99"], stats)
    planted = cur["planted"]
    if planted:
        kinds = sorted(planted)
        recall = [planted[k]["removed"] / planted[k]["planted"] for k in kinds]
        body += "<h3>Planted junk: what curation caught</h3>"
        body += plots.hbars(kinds, [100 * r for r in recall], "recall (% of planted documents removed)",
                            annotate=[f"{planted[k]['removed']}/{planted[k]['planted']}" for k in kinds],
                            salt=f"planted-{name}")
        by = sorted({c for r in planted.values() for c in r if c.startswith("by ")})
        body += numbers(["kind", "planted", "removed", "recall"] + by,
                        [[k, planted[k]["planted"], planted[k]["removed"], r]
                         + [planted[k].get(c, 0) for c in by] for k, r in zip(kinds, recall, strict=True)])
    elif s:
        body += '<p class="note">No planted documents (meta.planted) in this corpus: no recall to report.</p>'
    if cur["notes"]:
        body += '<p class="note">' + "; ".join(esc(n) for n in cur["notes"]) + "</p>"
    return body


def plan_section(found: list[dict], variants: list[dict]) -> str:
    body = ""
    trained = [v for v in variants if v["train_tokens"] and v["stage"]]
    for s in found:
        if not s["command"].startswith("plan"):
            continue
        plan = collect.read_json(s["path"] / "plan.json")
        if plan is None:
            continue
        body += f"<h3>{esc(s['name'])} ({esc(s['command'])})</h3>"
        if "components_bytes" in plan:
            measured = (plan.get("measured") or {}).get("peak_bytes")
            body += plots.stacked_memory(plan["components_bytes"], measured)
            rows = [[k, v / 2**30] for k, v in plan["components_bytes"].items()]
            rows.append(["planned total", plan.get("total_bytes", 0) / 2**30])
            if measured is not None:
                rows.append(["measured peak (plan memory --measure)", measured / 2**30])
            else:
                body += ('<p class="note">No measurement: add <code>measure: true</code> to this stage to '
                         "compare the plan with the peak memory of a real run.</p>")
            verdict = plan.get("verdict")
            if verdict:
                body += (f"<p>On {esc(verdict.get('hardware'))}: "
                         f"<b>{'fits' if verdict.get('fits') else 'does not fit'}</b>.</p>")
            body += numbers(["component", "GiB"], rows)
        if plan.get("params") and plan.get("tokens"):
            rows, labels, ratios, notes = [], [], [], []
            for v in trained:
                pairs = [("parameters", plan["params"], v["params"]),
                         ("tokens", plan["tokens"], v["train_tokens"]),
                         ("training FLOPs (6ND)", plan.get("flops"), v["train_flops"]),
                         ("validation loss", plan.get("loss"), v["val_loss"])]
                for what, planned, got in pairs:
                    if planned and got:
                        rows.append([v["name"], what, planned, got, got / planned])
                        labels.append(f"{v['name']}: {what}")
                        ratios.append(got / planned)
                        notes.append(f"{got / planned:.3g}×")
            if rows:
                body += plots.hbars(labels, ratios, "measured / planned (1 = as planned; log scale)",
                                    annotate=notes, salt=f"plan-{s['name']}", log=True, ref=1.0)
                body += numbers(["model", "quantity", "planned", "measured", "ratio"], rows)
            else:
                body += ('<p class="note">Planned: ' + esc(f"{plan['params']:.3g} parameters, "
                                                           f"{plan['tokens']:.3g} tokens") +
                         "; no trained model in this run to compare with.</p>")
    return body


def evals_section(found: list[dict]) -> str:
    body = ""
    for s in found:
        cmd, path = s["command"], s["path"]
        if cmd == "eval tasks" and (data := collect.read_json(path / "tasks.json")):
            res = data.get("results") or {}
            body += f"<h3>{esc(s['name'])}: zero-shot tasks of {esc(data.get('model'))}</h3>"
            body += table(["task", "items", "accuracy", "chance"],
                          [[k, r.get("items"), r.get("acc"), r.get("chance")] for k, r in res.items()])
        elif cmd == "eval speculative" and (data := collect.read_json(path / "speculative.json")):
            res = data.get("results") or []
            body += f"<h3>{esc(s['name'])}: speculative decoding of {esc(data.get('target'))}</h3>"
            if res:
                body += plots.hbars([str(r.get("draft")) for r in res], [r.get("speedup") or 0 for r in res],
                                    "speed-up over plain greedy decoding (1 = none)", ref=1.0,
                                    salt=f"spec-{s['name']}")
            body += table(["draft", "k", "acceptance", "target tok/s", "speculative tok/s", "speed-up"],
                          [[r.get("draft"), r.get("k"), r.get("acceptance"), r.get("target_tokens_per_s"),
                            r.get("speculative_tokens_per_s"), r.get("speedup")] for r in res])
        elif cmd == "eval sinks" and (data := collect.read_json(path / "sinks.json")):
            res = data.get("results") or {}
            body += f"<h3>{esc(s['name'])}: streaming with attention sinks ({esc(data.get('model'))})</h3>"
            body += table(["cache", "max entries", "perplexity"],
                          [[k, r.get("max_cache"), r.get("ppl")] for k, r in res.items()])
        elif cmd == "eval speed" and (data := collect.read_json(path / "speed.json")):
            body += f"<h3>{esc(s['name'])}: speed of {esc(data.get('model'))}</h3>"
            rows = [[dt, d.get("batch"), d.get("tokens_per_s"), (d.get("latency_ms") or {}).get("p50"),
                     (d.get("latency_ms") or {}).get("p90")]
                    for dt, r in (data.get("dtypes") or {}).items() for d in r.get("decode", [])]
            body += table(["dtype", "batch", "decode tok/s", "p50 ms", "p90 ms"], rows)
    return body


def timings_section(found: list[dict]) -> str:
    timed = [s for s in found if s["seconds"] is not None]
    if not timed:
        return ""
    return plots.hbars([f"{s['name']} ({s['command']})" for s in timed], [s["seconds"] for s in timed],
                       "seconds", annotate=[f"{s['seconds']:,.1f} s" for s in timed], salt="timings") + \
        numbers(["stage", "command", "seconds", "finished"],
                [[s["name"], s["command"], s["seconds"], s["finished"]] for s in timed])
