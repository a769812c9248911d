"""The report's sections: each takes collected facts and returns HTML (empty when nothing to show).

Every plot is followed by the numbers behind it in a collapsed ``<details>`` table.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from llm4all.report import collect, plots

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#222;
 max-width:1180px;margin:0 auto;padding:24px 32px;background:#fff}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:20px;margin:36px 0 8px;padding-top:8px;border-top:1px solid #ddd}
h3{font-size:16px;margin:20px 0 6px} .sub{color:#666;margin:0 0 16px} nav a{margin-right:14px;color:#1f5fa0}
table{border-collapse:collapse;margin:8px 0;font-size:13px;max-width:100%;display:block;overflow-x:auto}
th,td{padding:4px 8px;border-bottom:1px solid #e4e4e4;text-align:right;vertical-align:top}
th{background:#f5f5f5;font-weight:600;min-width:4em} td.l,th.l{text-align:left} td:not(.l){white-space:nowrap}
pre.ship{background:#f7f7f7;padding:8px 12px;font-size:13px;overflow-x:auto;white-space:pre-wrap}
.answer{font-size:17px;background:#eef7ee;border-left:4px solid #2ca02c;padding:8px 14px;margin:8px 0}
.lead{font-size:15px;background:#f6f9fc;border-left:4px solid #1f77b4;padding:6px 14px}
.lead ul{margin:4px 0;padding-left:18px} .lead li{margin:3px 0}
details{margin:6px 0 14px} summary{cursor:pointer;color:#1f5fa0;font-size:13px}
svg{max-width:100%;height:auto} .note{color:#777;font-size:13px}
.glyph{display:inline-block;width:16px;font-size:13px}
"""
TEACHER_NOTE = ("converted from a quantised GGUF file (the default teacher, SmolLM2-135M-Instruct, Allal "
                "et al. 2025, ships as Q4_1): its weights here are the quantised values de-quantised to "
                "fp32, not the original release, so its quality numbers describe that model.")


def esc(x: Any) -> str:
    return html.escape(str(x))


def fmt(v: Any, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    if kind == "bytes":
        return (f"{v / 2**10:,.1f} KiB" if v < 2**20 else f"{v / 2**20:,.1f} MiB" if v < 2**30
                else f"{v / 2**30:,.2f} GiB")
    if kind == "count":  # 61,440 tokens; 2.09e13 FLOPs
        return f"{v:,.0f}" if v < 1e7 else f"{v:.2e}".replace("e+", "e")
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
    body = "".join("<tr>" + "".join(cell("td", i, c if isinstance(c, Raw) else fmt(c))
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class Raw(str):
    """Already-escaped HTML for a table cell."""


def numbers(headers: list[str], rows: list[list[Any]], what: str = "the numbers behind this plot",
            left: int = 1) -> str:
    return f"<details><summary>{esc(what)}</summary>{table(headers, rows, left)}</details>"


def section(anchor: str, title: str, body: str) -> tuple[str, str, str]:
    return anchor, title, f'<section id="{anchor}"><h2>{esc(title)}</h2>{body}</section>'


# -- sections -------------------------------------------------------------------------------------

def pareto_section(variants: list[dict]) -> str:
    points = [dict(v, score_ms=1000 / v["eval_tokens_per_s"] if v["eval_tokens_per_s"] else None)
              for v in variants if v["ppl"]]
    candidates = [("size_bytes", "size on disk (MiB)", 2**20),
                  ("latency_ms", "decode latency (ms / token, batch 1)", 1.0),
                  ("score_ms", "time to score one token (ms, eval perplexity)", 1.0),
                  ("peak_mib", "peak memory (MiB)", 1.0), ("train_flops", "training compute (FLOPs)", 1.0)]
    metrics = [m for m in candidates if sum(1 for p in points if p.get(m[0])) >= 2]
    if not metrics:
        return ""
    missing = [label for key, label, _ in candidates[1:] if key not in [k for k, *_ in metrics]]
    body = plots.pareto(points, metrics)
    body += ('<p class="note">Down and to the left is better; the dashed line joins the models that no other '
             "model beats on both axes. Filled markers: perplexity from an <code>eval perplexity</code> "
             "stage; hollow: the training loop's validation perplexity (a different evaluation).")
    if any(k == "score_ms" for k, *_ in metrics):
        body += (" Time to score a token = 1 / the eval perplexity stage's tokens per second (a forward pass "
                 "over whole windows, not generation), measured while other work shared the machine.")
    if missing:
        body += (f" Not measured for two or more models: {esc(', '.join(missing))} "
                 "(<code>llm4all eval speed</code> measures decode latency and peak memory).")
    body += "</p>"
    return body + numbers(["model", "perplexity"] + [m[1] for m in metrics],
                          [[p["name"], p["ppl"]] + [p.get(k) and p[k] / s for k, _, s in metrics]
                           for p in points])


def training_section(found: list[dict]) -> str:
    runs = {s["name"]: collect.read_jsonl(file) for s in found
            if s["command"] in ("train", "distill") and (file := collect.stage_file(s, "metrics"))}
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        return ""
    body = plots.curves(runs)
    rows = []
    for name, metrics in runs.items():
        last = metrics[-1]
        val = [m for m in metrics if "val_loss" in m]
        rows.append([name, last.get("step"), last.get("tokens"), last.get("ce", last.get("loss")),
                     last.get("loss") if "kd" in last else None,
                     val[-1]["val_loss"] if val else None, val[-1].get("val_ppl") if val else None,
                     float(np.mean([m["tokens_per_s"] for m in metrics if "tokens_per_s" in m] or [np.nan]))])
    body += table(["stage", "steps", "tokens", "last training CE (nats)", "last KD objective",
                   "validation loss (nats)", "validation perplexity", "mean tokens/s"], rows)
    body += ('<p class="note">A distillation run\'s own loss mixes the KL to the teacher with the hard-label '
             "cross-entropy, so the left panel plots its cross-entropy (<code>ce</code>) beside the "
             "baseline's loss: the same quantity for both.</p>")
    detail = [[n, m.get("step"), m.get("tokens"), m.get("loss"), m.get("lr"), m.get("val_loss"), m.get("kd"),
               m.get("ce")] for n, ms in runs.items() for m in ms]
    return body + numbers(["stage", "step", "tokens", "loss", "lr", "val loss", "kd", "ce"], detail,
                          "every logged step")


def j_of_edits(rate: float, n: int = 5) -> float:
    """Expected word n-gram Jaccard of a text and a copy with ``rate`` of its words edited.

    An edit touches the n shingles containing the word, so (1 − rate)ⁿ of the shingles
    survive: J = s / (2 − s) with s = (1 − rate)ⁿ (equal-size sets sharing a fraction s).
    """
    shared = (1 - rate) ** n
    return shared / (2 - shared)


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov–Smirnov distance sup |F_a − F_b| over the finite values (0 if one is empty)."""
    a, b = np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)])
    if not a.size or not b.size:
        return 0.0
    at = np.concatenate([a, b])
    fa = np.searchsorted(a, at, side="right") / a.size
    fb = np.searchsorted(b, at, side="right") / b.size
    return float(np.abs(fa - fb).max())


def curation_section(name: str, cur: dict) -> str:
    s = cur["summary"] or {}
    body = f"<h3>{esc(name)}</h3>"
    if s:
        body += (f"<p>Read {s.get('read', 0):,} documents: kept {s.get('kept', 0):,}, "
                 f"removed {s.get('removed', 0):,} (every removal is in removed.jsonl.zst with its "
                 "step and reason).</p><!--steps-->")
        rows = [(step, reason, n) for step, reasons in (s.get("removed_by_step") or {}).items()
                for reason, n in reasons.items()]
        if rows:
            steps = list(dict.fromkeys(r[0] for r in rows))
            shown = rows[:24]
            body += plots.hbars([r[:48] for _, r, _ in shown], [n for *_, n in shown],
                                "documents removed (each document counted under one reason)",
                                [plots.PALETTE[steps.index(st) % 10] for st, *_ in shown],
                                salt=f"removals-{name}",
                                legend={f"step {st}": plots.PALETTE[i % 10] for i, st in enumerate(steps)})
            if len(rows) > len(shown):
                body += (f'<p class="note">{len(rows) - len(shown)} more (step, reason) pairs '
                         "in the table.</p>")
            body += numbers(["step", "reason", "removed"], [list(r) for r in rows])
        steps = s.get("steps") or []
        if steps:
            body = body.replace("<!--steps-->", table(
                ["step, in order", "documents in", "kept", "removed", "seconds"],
                [[r.get("step"), r.get("in"), r.get("kept"), r.get("removed"), r.get("seconds")]
                 for r in steps]))
    sig = cur["signals"]
    if sig and sig["columns"]:
        removed = np.array([i in cur["removed"] for i in sig["ids"]])
        every = {k: np.asarray(v, dtype=np.float64) for k, v in sig["columns"].items()}
        ks = {k: ks_distance(v[~removed], v[removed]) for k, v in every.items()}
        order = sorted(every, key=lambda k: -ks[k])  # most telling first
        cols = {k: every[k] for k in order[:16]}
        body += "<h3>Signals: kept against removed documents</h3>" + plots.histograms(
            cols, removed, titles={k: f"{k} (KS {ks[k]:.2f})" for k in cols})
        body += ('<p class="note">Each histogram is normalised to its own group (kept, removed); bins span '
                 "the 1st–99th percentile and values beyond are counted in the end bins; heavy-tailed "
                 "signals are on a log axis. KS = Kolmogorov–Smirnov distance between the kept and removed "
                 "distributions (0: alike, 1: fully separated)")
        body += (f"; the 16 signals with the largest KS of {len(every)} are shown.</p>" if len(every) > 16
                 else ".</p>")
        stats = [[k, ks[k], float(np.nanmean(v[~removed])) if (~removed).any() else None,
                  float(np.nanmean(v[removed])) if removed.any() else None,
                  float(np.nanpercentile(v, 1)), float(np.nanpercentile(v, 99))]
                 for k, v in ((k, every[k]) for k in order)]
        body += numbers(["signal", "KS", "mean kept", "mean removed", "p1", "p99"], stats, "every signal")
    planted = cur["planted"]
    if planted:
        kinds = sorted(planted)
        recall = [planted[k]["removed"] / planted[k]["planted"] for k in kinds]
        body += "<h3>Planted junk: what curation caught</h3>"
        body += plots.hbars(kinds, [100 * r for r in recall], "recall (% of planted documents removed)",
                            annotate=[f"{planted[k]['removed']}/{planted[k]['planted']}" for k in kinds],
                            salt=f"planted-{name}")
        rates = sorted({float(k.rsplit(" ", 1)[1][:-1]) / 100 for k in kinds
                        if k.startswith("near_copy ") and k.endswith("%")})
        if rates:
            js = ", ".join(f"{j_of_edits(e):.2f} at {e:.0%}" for e in rates)
            body += ('<p class="note">near_copy r%: copies with a fraction r of their words edited. Each '
                     "edited word changes up to 5 word 5-gram shingles, so a copy keeps about (1−r)⁵ of "
                     f"them and its Jaccard similarity to the source is about (1−r)⁵ / (2 − (1−r)⁵): {js}. "
                     "MinHash dedup removes only copies at or above its threshold (0.8 in the quickstart) — "
                     "the heavier edits are, by that definition, not near-duplicates.</p>")
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
        plan = (s["manifest"] or {}).get("metrics")
        if not plan:
            continue
        body += f"<h3>{esc(s['name'])} ({esc(s['command'])})</h3>"
        if "components_bytes" in plan:
            measured = (plan.get("measured") or {}).get("peak_bytes")
            body += f"<p>{plan_setup(s['config'], plan)}</p>"
            body += plots.stacked_memory(plan["components_bytes"], measured)
            rows = [[k, v / 2**30] for k, v in plan["components_bytes"].items()]
            rows.append(["planned total", plan.get("total_bytes", 0) / 2**30])
            if measured is not None:
                rows.append(["measured peak (plan memory --measure)", measured / 2**30])
            else:
                body += ('<p class="note">Planned only — nothing in this run measured that setup. Add '
                         "<code>measure: true</code> to this stage to run a few real steps of it and draw "
                         "their peak memory beside the plan.</p>")
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


def plan_setup(config: dict, plan: dict) -> str:
    """One sentence: what the memory plan is for (model, mode, precision, optimizer, batch × sequence)."""
    setup = plan.get("setup") or {}
    mode = {"train": "Training", "infer": "Inference with", "inference": "Inference with"}.get(
        str(setup.get("mode")), str(setup.get("mode", "")).capitalize())
    parts = [f"{mode} <b>{esc(config.get('model', '?'))}</b>"]
    if plan.get("params"):
        parts.append(f"({fmt(plan['params'], 'params')} parameters)")
    extra = [str(setup[k]) for k in ("dtype", "optimizer") if setup.get(k)]
    if setup.get("master_weights") and str(setup.get("dtype", "")).lower() not in ("fp32", "float32"):
        extra.append("fp32 master weights")
    if setup.get("batch") and setup.get("seq"):
        extra.append(f"batch {setup['batch']} × {setup['seq']} tokens")
    if setup.get("gpus"):
        extra.append(f"{setup['gpus']} device{'s' if setup['gpus'] != 1 else ''}")
    total = plan.get("total_bytes")
    return (" ".join(parts) + (", " + ", ".join(esc(e) for e in extra) if extra else "")
            + (f": planned peak <b>{fmt(total, 'bytes')}</b>." if total else "."))


def evals_section(found: list[dict]) -> str:
    body = ""
    for s in found:
        cmd, manifest = s["command"], s["manifest"] or {}
        data = manifest.get("results") or manifest.get("metrics")
        if not data:
            continue
        if cmd == "eval tasks":
            res = data.get("results") or {}
            body += f"<h3>{esc(s['name'])}: zero-shot tasks of {esc(data.get('model'))}</h3>"
            body += table(["task", "items", "accuracy", "chance"],
                          [[k, r.get("items"), r.get("acc"), r.get("chance")] for k, r in res.items()])
        elif cmd == "eval speculative":
            res = data.get("results") or []
            body += f"<h3>{esc(s['name'])}: speculative decoding of {esc(data.get('target'))}</h3>"
            if res:
                body += plots.hbars([str(r.get("draft")) for r in res], [r.get("speedup") or 0 for r in res],
                                    "speed-up over plain greedy decoding (1 = none)", ref=1.0,
                                    salt=f"spec-{s['name']}")
            body += table(["draft", "k", "acceptance", "target tok/s", "speculative tok/s", "speed-up"],
                          [[r.get("draft"), r.get("k"), r.get("acceptance"), r.get("target_tokens_per_s"),
                            r.get("speculative_tokens_per_s"), r.get("speedup")] for r in res])
        elif cmd == "eval sinks":
            res = data.get("results") or {}
            body += f"<h3>{esc(s['name'])}: streaming with attention sinks ({esc(data.get('model'))})</h3>"
            body += table(["cache", "max entries", "perplexity"],
                          [[k, r.get("max_cache"), r.get("ppl")] for k, r in res.items()])
        elif cmd == "eval kv-cache":
            res = data.get("results") or {}
            body += f"<h3>{esc(s['name'])}: KV-cache dtypes ({esc(data.get('model'))})</h3>"
            body += table(["cache", "perplexity", "change", "bytes / token"],
                          [[k, r.get("ppl"), f"{100 * (r.get('ppl_change') or 0):+.2f}%",
                            r.get("bytes_per_token")] for k, r in res.items()])
        elif cmd == "eval speed":
            body += f"<h3>{esc(s['name'])}: speed of {esc(data.get('model'))}</h3>"
            body += table(["dtype", "batch", "decode tok/s", "p50 ms", "p90 ms", "KV cache",
                           "KV bytes / token", "mJ / token"], _speed_rows(data))
    return body


def energy_text(joules: float | None, source: str | None) -> str | None:
    """Millijoules per token, marked "est." unless RAPL measured it."""
    if joules is None:
        return None
    return f"{1e3 * joules:.3g}" + ("" if str(source or "").startswith("RAPL") else " est.")


def _speed_rows(data: dict) -> list[list[Any]]:
    rows = []
    for dtype, r in (data.get("dtypes") or {}).items():
        e = r.get("energy") or {}
        mj = energy_text(e.get("joules_per_token"), e.get("source"))  # measured at batch 1
        for d in r.get("decode", []):
            latency = d.get("latency_ms") or {}
            rows.append([dtype, d.get("batch"), d.get("tokens_per_s"), latency.get("p50"), latency.get("p90"),
                         d.get("kv_dtype"), d.get("kv_bytes_per_token"), mj if d.get("batch") == 1 else None])
    return rows


def timings_section(found: list[dict]) -> str:
    timed = [s for s in found if s["seconds"] is not None]
    if not timed:
        return ""
    return plots.hbars([f"{s['name']} ({s['command']})" for s in timed], [s["seconds"] for s in timed],
                       "seconds", annotate=[f"{s['seconds']:,.1f} s" for s in timed], salt="timings") + \
        numbers(["stage", "command", "seconds", "finished"],
                [[s["name"], s["command"], s["seconds"], s["finished"]] for s in timed])
