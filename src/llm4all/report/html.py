"""``llm4all report RUN``: one self-contained HTML page that a person reads in a minute.

Sections, in reading order: the headline (the answer first — each model against the one it
should be compared with: student against teacher, baseline against student, compressed against
its source — then one table of every model: quality, size, parameters, speed; ``answer.py``),
quality against size / latency / memory / training compute as Pareto charts, training and
distillation curves, curation (removals by step and reason, the signal histograms that best
separate kept from removed, planted-junk recall), planned against measured memory and compute,
other evaluations, and stage timings. Plots are inline SVG (matplotlib's SVG backend) with the
numbers behind them in collapsed tables; the page loads nothing from anywhere (no scripts,
fonts or stylesheets). Every stage is read through its manifest (``llm4all.json``: what it
made, read and measured; ``collect.py``); absent ones are skipped.
"""

from __future__ import annotations

import time
from pathlib import Path

from llm4all.errors import UserError
from llm4all.progress import progress
from llm4all.report import answer, choose, collect, plots
from llm4all.report import sections as sec
from llm4all.runs import atomic_path, write_json, write_manifest


def build(run: Path, title: str | None = None, goal: choose.Goal | None = None) -> tuple[str, dict, dict]:
    """(HTML text, summary, answer) of the report of run directory ``run``."""
    found = [s for s in collect.stages(run) if s["command"] != "report"]
    variants, notes = collect.variants(found)
    result = choose.answer_json(variants, goal or choose.Goal())
    for i, v in enumerate(variants):  # one marker shape per model, in the table and every chart
        v["marker"] = plots.MARKERS[i % len(plots.MARKERS)]
    curations = {s["name"]: collect.curation(s) for s in found if s["command"] == "curate"}
    for s in found:
        if not s["done"]:
            notes.append(f"stage {s['name']} ({s['command']}) has not finished (no DONE marker)")
        elif s["command"] == "unknown":
            notes.append(f"stage {s['name']}: unrecognised (no command in config.yaml), skipped")
    first_cur = next(iter(curations.values()), None)
    makers = [("headline", "Headline",
               lambda: answer.headline(run, found, variants, first_cur, notes, result)),
              ("pareto", "Quality against size, latency, memory and cost",
               lambda: sec.pareto_section(variants)),
              ("training", "Training and distillation", lambda: sec.training_section(found)),
              ("curation", "Curation",
               lambda: "".join(sec.curation_section(n, c) for n, c in curations.items())),
              ("plan", "Planned against measured", lambda: sec.plan_section(found, variants)),
              ("evaluations", "Other evaluations", lambda: sec.evals_section(found)),
              ("timings", "Stage timings", lambda: sec.timings_section(found))]
    parts = []
    with progress("report", len(makers), "sections") as advance:
        for anchor, heading, make in makers:
            parts.append((anchor, heading, make()))
            advance()
    shown = [sec.section(a, t, body) for a, t, body in parts if body]
    skipped = [t for _, t, body in parts if not body]
    recipe = (collect.read_json(run / "summary.json") or {}).get("recipe")
    title = title or f"llm4all report: {Path(recipe).stem if recipe else run.name}"
    nav = " ".join(f'<a href="#{a}">{sec.esc(t)}</a>' for a, t, _ in shown)
    footer = (f'<p class="note">Not in this run (no stage produced it): {sec.esc(", ".join(skipped))}.</p>'
              if skipped else "")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{sec.esc(title)}</title><style>{sec.CSS}</style></head><body>"
            f"<h1>{sec.esc(title)}</h1><p class=\"sub\">run directory {sec.esc(run)} · made "
            f"{time.strftime('%Y-%m-%d %H:%M')} by llm4all report</p><nav>{nav}</nav>"
            + "".join(body for *_, body in shown) + footer + "</body></html>\n")
    summary = {"sections": [a for a, *_ in shown], "skipped": skipped, "stages": len(found),
               "variants": [{k: v[k] for k in ("name", "role", "ppl", "size_bytes", "params")}
                            for v in variants]}
    return page, summary, result


def main(run: Path, *, out: Path | None = None, title: str | None = None, goal: dict | None = None) -> Path:
    """Write one self-contained HTML report (plots and the numbers behind them) of a run directory.

    As a recipe stage give ``run: ${run_dir}``; the runner sets ``out`` to the stage's directory,
    which then gets ``report.html``.

    Args:
        run: a run directory written by `llm4all run` (one folder per stage).
        out: the HTML file to write, or a directory that gets report.html (default RUN/report.html).
        title: page title (default: "llm4all report: " and the recipe name).
        goal: which model to recommend, e.g. {tolerance: 0.1, prefer: size}: within 10% of the best
            perplexity, the smallest file (prefer speed: the fastest decode; quality: the best perplexity).
    """
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory (give the run_dir of `llm4all run RECIPE`)")
    if not any(p.is_dir() and not p.name.startswith(".") for p in run.iterdir()):
        raise UserError(f"{run}: no stage directories in it; is this the run_dir of `llm4all run`?")
    if out is None:
        out = run / "report.html"
    elif Path(out).is_dir() or Path(out).suffix.lower() not in (".html", ".htm"):
        out = Path(out) / "report.html"
    chosen = choose.Goal.parse(goal)
    page, summary, result = build(run, title, chosen)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    write_json(Path(out).with_name("answer.json"), result)
    if Path(out).parent != run:  # a stage directory of its own (not the run's top level)
        write_manifest(Path(out).parent, "report", inputs={"run": str(run)}, metrics=summary,
                       files={"page": Path(out).name, "answer": "answer.json"})
    print(f"report: {len(summary['sections'])} sections ({', '.join(summary['sections'])}), "
          f"{len(page) / 1024:.0f} KiB -> {out}")
    return Path(out)
