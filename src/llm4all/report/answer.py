"""The top of the report: the answer in a few sentences, then one table of every model.

Each model is compared with the model it should be compared with: the distilled student with
the teacher (quality lost, size saved), the from-scratch baseline with the student (what
distillation bought on the same tokens), a compressed or exported model with the model it was
made from (size saved, quality lost). Pure functions over ``collect.variants`` output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm4all.report import plots
from llm4all.report.sections import TEACHER_NOTE, Raw, energy_text, esc, fmt, table

METHOD_NAMES = {"rtn": "RTN", "gptq": "GPTQ", "bitnet": "BitNet", "llm_int8": "LLM.int8()"}


def short_role(v: dict) -> str:
    """'compressed: GPTQ int4, groups of 64' rather than every option of the method."""
    role, method = v["role"], dict(v.get("method") or {})
    if role.startswith("compressed") and method:
        name = str(method.pop("name", "?"))
        text = METHOD_NAMES.get(name, name)
        bits, group = method.get("bits"), method.get("group_size")
        if bits:
            text += f" int{bits}" if float(bits).is_integer() else f" {bits}-bit"
            if group is not None:
                text += ", per channel" if group in (-1, 0) else f", groups of {group}"
        else:
            text += "".join(f", {k} {x}" for k, x in list(method.items())[:2])
        return f"compressed: {text}"
    if role.startswith("export (") and role.endswith(")"):
        kind = role[len("export ("):-1].split(" ", 1)
        return "export: " + " ".join([kind[0].upper(), *kind[1:]])
    return role


def times(a: float, b: float) -> str:
    """'2.4× smaller' / '1.3× larger' for size a against b."""
    return f"{b / a:.1f}× smaller" if a <= b else f"{a / b:.1f}× larger"


def change(new: float, old: float) -> str:
    """'+1.9%' / '−0.5%' / '44.6×' for a perplexity against a reference."""
    ratio = new / old
    if ratio >= 2 or ratio <= 0.5:
        return f"{ratio:.1f}×"
    return "±0.0%" if abs(ratio - 1) < 5e-4 else f"{100 * (ratio - 1):+.1f}%".replace("-", "−")


def _eval(v: dict) -> float | None:
    """Perplexity measured by an ``eval perplexity`` stage, None if only the training loop's."""
    return v["ppl"] if str(v.get("ppl_source") or "").startswith("eval") else None


def _decode(v: dict, ref: dict) -> str:
    """'; decodes 3.2× as fast as REF (10.9 against 35.4 ms / token)', if both were timed."""
    if not (v["latency_ms"] and ref["latency_ms"]):
        return ""
    ratio = ref["latency_ms"] / v["latency_ms"]
    speed = f"{ratio:.1f}× as fast as" if ratio >= 1 else f"{1 / ratio:.1f}× slower than"
    return (f"; decodes {speed} {esc(ref['name'])} ({v['latency_ms']:.1f} against "
            f"{ref['latency_ms']:.1f} ms / token, batch 1)")


def answer(variants: list[dict], stages_line: str, curation_line: str | None) -> list[str]:
    """The lead: one HTML sentence per comparison that matters."""
    by = {v["name"]: v for v in variants}
    teacher = next((v for v in variants if v["role"] == "teacher"), None)
    students = [v for v in variants if v["role"].startswith(("distilled", "student"))]
    lines = []
    if teacher:
        parts = [f"perplexity {fmt(teacher['ppl'])}" if teacher["ppl"] else "perplexity not measured",
                 fmt(teacher["size_bytes"], "bytes") if teacher["size_bytes"] else None,
                 f"{fmt(teacher['params'], 'params')} parameters" if teacher["params"] else None]
        lines.append(f"Teacher <b>{esc(teacher['name'])}</b>: " + ", ".join(p for p in parts if p) + ".")
    for s in students:
        text = f"{esc(s['role'].capitalize())} <b>{esc(s['name'])}</b>: "
        if teacher and _eval(s) and _eval(teacher):
            rel = change(_eval(s), _eval(teacher))
            text += (f"perplexity {fmt(_eval(s))}, {rel} {'' if rel.endswith('×') else 'against '}"
                     f"the teacher's {fmt(_eval(teacher))}")
        elif s["ppl"]:
            text += f"perplexity {fmt(s['ppl'])} ({esc(s['ppl_source'])})"
        if s["size_bytes"]:
            text += f"; {fmt(s['size_bytes'], 'bytes')}"
            if teacher and teacher["size_bytes"]:
                text += f", {times(s['size_bytes'], teacher['size_bytes'])} than the teacher"
        if s["params"]:
            text += f" ({fmt(s['params'], 'params')} parameters)"
        if teacher and (decode := _decode(s, teacher)):
            text += decode
        elif teacher and s["eval_tokens_per_s"] and teacher["eval_tokens_per_s"]:
            text += (f"; scores text {s['eval_tokens_per_s'] / teacher['eval_tokens_per_s']:.1f}× as fast "
                     f"({s['eval_tokens_per_s']:,.0f} against {teacher['eval_tokens_per_s']:,.0f} tokens/s)")
        lines.append(text + ".")
    student = students[0] if students else None
    for b in (v for v in variants if v["role"] == "from scratch"):
        text = f"From scratch, <b>{esc(b['name'])}</b>"
        if b["params"]:
            text += f" ({fmt(b['params'], 'params')} parameters)"
        if student and b["val_ppl"] and student["val_ppl"]:
            same = b["train_tokens"] and b["train_tokens"] == student["train_tokens"]
            text += (f" reaches validation perplexity {fmt(b['val_ppl'])} against the student's "
                     f"{fmt(student['val_ppl'])}" + (f" after the same {b['train_tokens']:,} training tokens"
                                                      if same else "") +
                     f": distillation gives {abs(1 - student['val_ppl'] / b['val_ppl']):.0%} "
                     f"{'lower' if student['val_ppl'] < b['val_ppl'] else 'higher'} perplexity")
        elif b["ppl"]:
            text += f" reaches perplexity {fmt(b['ppl'])}"
        lines.append(text + ".")
    for c in (v for v in variants if v["role"].startswith(("compressed", "export"))):
        src = by.get(c.get("source") or "")
        text = f"<b>{esc(c['name'])}</b> ({esc(short_role(c))}): {fmt(c['size_bytes'], 'bytes')}"
        if src and c["size_bytes"] and src["size_bytes"]:
            text += f", {times(c['size_bytes'], src['size_bytes'])} than {esc(src['name'])}"
        if _eval(c) and src and _eval(src):
            diff = change(_eval(c), _eval(src))
            text += f"; perplexity {fmt(_eval(c))} ({diff} against {esc(src['name'])})"
        elif c["ppl"]:
            text += f"; perplexity {fmt(c['ppl'])}"
        else:
            text += "; perplexity not measured"
        if src and (decode := _decode(c, src)):
            text += decode
        lines.append(text + ".")
    if curation_line:
        lines.append(curation_line)
    lines.append(stages_line)
    return lines


#: (header, key or function of a variant, format kind); a column no model has a value for is left out
COLUMNS: list[tuple[str, Any, str]] = [
    ("perplexity (eval)", _eval, ""),
    ("training-loop val. ppl", "val_ppl", ""),
    ("size on disk", "size_bytes", "bytes"),
    ("parameters", "params", "params"),
    ("bits / weight", lambda v: 8 * v["size_bytes"] / v["params"] if v["size_bytes"] and v["params"]
     else None, ""),
    ("ms / token (batch 1)", "latency_ms", ""),
    ("runtime", lambda v: _runtime(v) if v.get("latency_ms") is not None else None, ""),
    ("mJ / token", lambda v: energy_text(v.get("joules_per_token"), v.get("energy_source")), ""),
    ("peak RSS (MiB)", "peak_mib", ""),
    ("task accuracy", "tasks_acc", ""),
    ("training tokens", "train_tokens", "count"),
    ("training FLOPs", "train_flops", "count"),
]
# decode tokens/s is 1000 / the latency, and scoring throughput is in the charts' numbers: the
# table keeps one speed column so it fits a 1,300-pixel window (issue 15)
#: what a missing column needs, for the note under the table
NEEDS = {"ms / token (batch 1)": "an eval speed stage", "peak RSS (MiB)": "an eval speed stage",
         "mJ / token": "an eval speed stage",
         "task accuracy": "an eval tasks stage",
         "perplexity (eval)": "an eval perplexity stage"}


def _runtime(v: dict) -> str:
    """The runtime a latency was measured in, in a word: llama.cpp, or torch (llm4all's kernels)."""
    runtime = str(v.get("runtime") or "torch")
    return "llama.cpp" if "llama" in runtime else "torch"


def variant_table(variants: list[dict]) -> tuple[str, list[str]]:
    """(HTML table of every model, headers of the columns left out for want of any value)."""
    values = [[(f(v) if callable(f) else v.get(f)) for _, f, _ in COLUMNS] for v in variants]
    keep = [i for i in range(len(COLUMNS)) if any(row[i] is not None for row in values)]
    rows = []
    for v, row in zip(variants, values, strict=True):
        shapes = plots.GLYPHS if _eval(v) or not v["ppl"] else plots.HOLLOW  # as in the Pareto charts
        glyph = shapes.get(v.get("marker") or "o", "●")
        dot = f'<span class="glyph" style="color:{plots.role_colour(v["role"])}">{glyph}</span>'
        cells: list[Any] = [Raw(dot + esc(v["name"])), Raw(f'<span title="{esc(v["role"])}">'
                                                           f"{esc(short_role(v))}</span>")]
        for i in keep:
            kind, x = COLUMNS[i][2], row[i]
            cells.append(fmt(x, kind) if kind else x)
        rows.append(cells)
    return table(["model", "what it is"] + [COLUMNS[i][0] for i in keep], rows, left=2), \
        [COLUMNS[i][0] for i in range(len(COLUMNS)) if i not in keep]


def headline(run: Path, found: list[dict], variants: list[dict], cur: dict | None, notes: list[str],
             result: dict | None = None) -> str:
    """The recommendation, the answer (one line per comparison), the table of every model, and what
    was not measured."""
    done = [s for s in found if s["done"]]
    seconds = sum(s["seconds"] or 0 for s in done)
    stages_line = f"{len(done)} of {len(found)} stages finished in {seconds / 60:.1f} min of stage time."
    curation_line = None
    if cur and cur["summary"]:
        s = cur["summary"]
        curation_line = f"Curation kept {s.get('kept', 0):,} of {s.get('read', 0):,} documents"
        planted = cur["planted"]
        if planted:
            caught = sum(r["removed"] for r in planted.values())
            total = sum(r["planted"] for r in planted.values())
            curation_line += f" and caught {caught} of {total} planted junk documents ({caught / total:.0%})"
        curation_line += "."
    lines = answer(variants, stages_line, curation_line)
    if not variants:
        lines.insert(0, "No model was trained, compressed or evaluated in this run yet.")
    body = ""
    if result is not None:
        pick = result.get("recommended")
        body += (f'<p class="answer"><b>Ship {esc(pick)}.</b> {esc(result["why"])}</p>' if pick else
                 f'<p class="answer"><b>No recommendation yet:</b> {esc(result["why"])}.</p>')
        labels = {"chat": "chat with it", "serve": "serve it (OpenAI API at http://127.0.0.1:8080/v1)",
                  "llama_server": "the same with llama.cpp's own server",
                  "vllm": "on a GPU, with vLLM (compressed-tensors)"}
        commands = result.get("commands") or {}
        if commands:
            body += "<pre class=\"ship\">" + "\n".join(f"# {labels.get(k, k)}\n{esc(c)}"
                                                     for k, c in commands.items()) + "</pre>"
    body += '<div class="lead"><ul>' + "".join(f"<li>{line}</li>" for line in lines) + "</ul></div>"
    if variants:
        html_table, missing = variant_table(variants)
        body += "<h3>Every model</h3>" + html_table
        stages: dict[str, list[str]] = {}
        for m in missing:
            if m in NEEDS:
                stages.setdefault(NEEDS[m], []).append(m)
        needs = [f"{stage} ({', '.join(cols)})" for stage, cols in stages.items()]
        body += ('<p class="note">Perplexity (eval) comes from <code>eval perplexity</code> stages (same '
                 'held-out tokens and window for every model); the training-loop validation perplexity '
                 "from the training or distillation loop's own evaluation (shorter windows: compare it "
                 'only within its column). Bits / weight = 8 × size on disk / parameters (a compressed '
                 'model counts its dense parameters). ms / token: batch-1 decode latency (p50) of an '
                 '<code>eval speed</code> stage in the runtime named beside it: llama.cpp for a GGUF file,'
                 " torch with llm4all's int4/int8 kernels for a packed checkpoint. mJ / token: energy per "
                 "decoded token from the same stage, measured by RAPL where the machine exposes it, else "
                 "(est.) estimated from the multiply-accumulates and bytes read per token at Horowitz's "
                 "(2014) 45 nm energies: an order of magnitude for comparing formats, not a measurement. "
                 "Training FLOPs ≈ 6·N·D (Kaplan et al. 2020).")
        if needs:
            body += " Not measured in this run: add " + " and ".join(esc(n) for n in needs) + "."
        body += "</p>"
    for v in variants:  # a model converted from a quantised GGUF: its "fp32" weights are rounded values
        if "gguf" in str(v.get("provenance", {}).get("converted_by", "")).lower():
            body += (f'<p class="note">{esc(v["name"])}: {esc(TEACHER_NOTE)}'
                     + (" Its training compute uses its published pre-training tokens." if v["train_tokens"]
                        else "") + "</p>")
    if notes:
        body += '<p class="note">Notes: ' + "; ".join(esc(n) for n in notes) + ".</p>"
    return body
