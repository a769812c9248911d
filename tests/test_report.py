"""llm4all report: a run directory built from real tiny stages renders into one self-contained page."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from llm4all.errors import UserError
from llm4all.recipe import run as run_recipe
from llm4all.report import answer, collect, plots, sections
from llm4all.report.html import main as report
from tinymodels import build_tiny_model, tiny_texts

CHROMIUM = Path("/usr/bin/chromium")
TINY = {"seq_len": 32, "micro_batch": 4, "steps": 3, "warmup": 1, "precision": "fp32", "eval_every": 2,
        "eval_tokens": 256}


def write_corpus(root: Path) -> list[Path]:
    """40 documents plus planted junk (an exact copy, a fragment, keyword spam) labelled meta.planted."""
    import random

    from llm4all.curate.planted import junk
    from llm4all.data.document import Document
    from llm4all.data.writers import write_documents

    texts = tiny_texts(60, words=80)
    docs = [Document(f"doc{i}", t, {"lang": "en"}) for i, t in enumerate(texts)]
    rng = random.Random(0)
    def meta(kind: str) -> dict:
        return {"planted": kind, "lang": "en"}

    planted = [Document("planted/exact_copy/0", texts[0].upper(), meta("exact_copy")),
               Document("planted/exact_copy/1", texts[1], meta("exact_copy")),
               Document("planted/fragment/2", junk("fragment", texts[2], rng), meta("fragment")),
               Document("planted/symbols/3", junk("symbols", texts[3], rng), meta("symbols"))]
    write_documents(root / "docs.jsonl", docs)
    write_documents(root / "planted.jsonl", planted)
    return [root / "docs.jsonl", root / "planted.jsonl"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """Ten real tiny stages run by `llm4all run`, the report last as a stage (~30-60 s on 2 busy cores)."""
    root = tmp_path_factory.mktemp("report")
    teacher = str(build_tiny_model(root / "teacher", layers=4))
    stages = {
        "curate": {"data": [str(p) for p in write_corpus(root)], "workers": 1,
                   "signals": ["char_entropy", "zlib_ratio", "ttr"],
                   "steps": [{"dedup": "exact"}, {"filter": "bounds", "bounds": {"ttr": [None, 0.9]}},
                             {"filter": "bounds", "label": "noise", "bounds": {"char_entropy": [None, 4.2]}},
                             {"filter": "bounds", "label": "redundant",
                              "bounds": {"zlib_ratio": [1.7, None]}}]},
        "tokenize": {"data": ["${curate}/kept.jsonl.zst"], "tokenizer": teacher, "workers": 1,
                     "val_fraction": 0.2},
        "plan_size": {"command": "plan chinchilla", "params": 30000, "tokens": 400},
        "plan_memory": {"command": "plan memory", "model": teacher, "batch": 4, "seq": 32, "dtype": "fp32"},
        "eval_teacher": {"command": "eval perplexity", "model": teacher, "data": "${tokenize}",
                         "context": 32},
        "scratch": {"command": "train", "data": "${tokenize}", "model": "llama-test", **TINY},
        "distill": {"data": "${tokenize}", "teacher": teacher, "mode": "online", **TINY},
        "eval_student": {"command": "eval perplexity", "model": "${distill}/model", "data": "${tokenize}",
                         "context": 32},
        "int4": {"command": "compress", "model": "${distill}/model", "method": {"name": "rtn", "bits": 4,
                                                                                  "group_size": 16}},
        "eval_int4": {"command": "eval perplexity", "model": "${int4}", "data": "${tokenize}", "context": 32},
        "report": {"run": "${run_dir}", "title": "tiny run"},
    }
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({"name": "tiny", "stages": stages}, sort_keys=False))
    run_recipe(str(recipe), run_dir=root / "run")
    return root / "run"


@pytest.mark.slow
def test_stages_are_found_by_command_and_variants_measured(run_dir):
    found = {s["name"]: s["command"] for s in collect.stages(run_dir)}
    assert found["scratch"] == "train" and found["eval_int4"] == "eval perplexity"
    assert found["plan_memory"] == "plan memory" and found["report"] == "report"
    variants, notes = collect.variants([s for s in collect.stages(run_dir) if s["command"] != "report"])
    by = {v["name"]: v for v in variants}
    assert [v["role"] for v in variants][:2] == ["teacher", "distilled student"]
    assert by["scratch"]["role"] == "from scratch" and by["int4"]["role"].startswith("compressed (rtn")
    ppl = json.loads((run_dir / "eval_int4" / "perplexity.json").read_text())["ppl"]
    assert by["int4"]["ppl"] == ppl and by["int4"]["ppl_source"].startswith("eval perplexity")
    assert by["scratch"]["ppl_source"] == "train validation"  # no eval stage: the training validation
    # parameters from safetensors headers equal torch's count; the packed model counts its dense params
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(run_dir / "distill" / "model")
    assert by["distill"]["params"] == sum(p.numel() for p in net.parameters())
    assert by["int4"]["params"] == by["distill"]["params"]
    assert by["int4"]["source"] == "distill" and by["int4"]["method"]["bits"] == 4
    assert answer.short_role(by["int4"]) == "compressed: RTN int4, groups of 16"
    result = json.loads((run_dir / "distill" / "result.json").read_text())
    assert by["distill"]["val_ppl"] == result["val_ppl"]
    assert by["int4"]["size_bytes"] < 0.6 * by["distill"]["size_bytes"]  # 4-bit Linears vs fp32
    assert by["distill"]["train_flops"] == 6.0 * by["distill"]["params"] * by["distill"]["train_tokens"]


@pytest.mark.slow
def test_report_stage_writes_one_self_contained_page(run_dir):
    page = (run_dir / "report" / "report.html").read_text()
    for heading in ("Headline", "Every model", "Quality against size", "Training and distillation",
                    "Curation", "Planted junk", "Planned against measured", "Stage timings"):
        assert heading in page, heading
    assert page.count("<svg") >= 7 and "<title>tiny run</title>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched
    assert "<script" not in page and "@import" not in page and "url(http" not in page
    assert page.count("<details>") >= 6  # the numbers behind the plots
    answer = json.loads((run_dir / "report" / "answer.json").read_text())
    assert answer["teacher"] == "teacher" and {v["name"] for v in answer["variants"]} >= {"distill", "int4"}
    assert answer["recommended"] is None and "eval speed" in answer["why"]  # no stage timed decoding
    assert "No recommendation yet" in page
    manifest = json.loads((run_dir / "report" / "llm4all.json").read_text())
    assert manifest["command"] == "report" and manifest["files"]["answer"] == "answer.json"


@pytest.mark.slow
def test_planted_recall_and_removals_match_the_curate_outputs(run_dir):
    cur = collect.curation(next(s for s in collect.stages(run_dir) if s["name"] == "curate"))
    summary = json.loads((run_dir / "curate" / "summary.json").read_text())
    assert len(cur["removed"]) == summary["removed"]
    assert sum(r["planted"] for r in cur["planted"].values()) == 4
    assert cur["planted"]["exact_copy"]["removed"] == 2  # both copies caught by exact dedup
    assert cur["planted"]["exact_copy"].get("by dedup:exact") == 2


@pytest.mark.slow
def test_missing_stages_and_broken_files_are_skipped(run_dir, tmp_path):
    part = tmp_path / "part"
    for name in ("tokenize", "eval_teacher"):
        shutil.copytree(run_dir / name, part / name)
    (part / "half").mkdir()  # a stage that never finished, with a truncated metrics file
    (part / "half" / "config.yaml").write_text("command: train\n")
    (part / "half" / "metrics.jsonl").write_text('{"step": 1, "loss": 4.0, "tokens": 128}\n{"step": 2, "lo')
    # hand-written manifests of the other eval commands, with keys missing; a stage without one
    (part / "tasks").mkdir()
    (part / "tasks" / "llm4all.json").write_text(
        '{"command": "eval tasks", "inputs": {"model": "x"}, "results": {"model": "x", '
        '"results": {"cloze": {"items": 3}}}}')
    (part / "spec").mkdir()
    (part / "spec" / "llm4all.json").write_text(
        '{"command": "eval speculative", "metrics": {"target": "x", "results": [{"draft": "layers:1"}]}}')
    (part / "stray").mkdir()
    (part / "stray" / "speculative.json").write_text('{"target": "y", "results": []}')
    out = report(part, out=tmp_path / "r.html")
    page = out.read_text()
    assert "Headline" in page and "Curation" not in page.split("Not in this run")[0]
    assert "half (train) has not finished" in page and "speculative decoding of x" in page
    assert "stray has no manifest (llm4all.json)" in page and "of y" not in page
    assert "Not in this run (no stage produced it): " in page and "Stage timings" in page


def test_bad_input(tmp_path):
    with pytest.raises(UserError, match="no such run directory"):
        report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no stage directories"):
        report(tmp_path / "empty")
    assert not list((tmp_path / "empty").iterdir())


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                    "(apt-get install chromium; the Makefile installs it)")
def test_page_renders_in_headless_chromium(run_dir, tmp_path):
    import numpy as np
    from PIL import Image

    page = run_dir / "report" / "report.html"
    flags = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'u'}"]
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    colours = np.unique(pixels // 16, axis=0)  # distinct colours at 4-bit depth
    assert len(colours) > 20 and (pixels < 128).any(axis=1).mean() > 0.005  # text and plots, not blank
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    for heading in ("Headline", "Quality against size", "Training and distillation", "Curation",
                    "Stage timings"):
        assert f">{heading}" in dom


@pytest.mark.slow
def test_the_page_leads_with_the_answer_and_drops_empty_columns(run_dir):
    page = (run_dir / "report" / "report.html").read_text()
    head = page[page.index('id="headline"'):page.index('id="pareto"')]
    assert '<div class="lead"><ul><li>Teacher <b>teacher</b>' in head  # the tiny teacher's directory name
    assert "Distilled student <b>distill</b>: perplexity" in head and "than the teacher" in head
    assert "From scratch, <b>scratch</b>" in head and "distillation gives" in head
    assert "<b>int4</b> (compressed: RTN int4, groups of 16)" in head and "against distill" in head
    # the table marks each model with its chart marker; hollow for a training-loop perplexity (scratch)
    row = head[head.index("scratch</td>") - 200:head.index("scratch</td>")]
    assert any(g in row for g in plots.HOLLOW.values()) and not any(g in row for g in plots.GLYPHS.values())
    # no eval speed / eval tasks stage in this run: their columns are absent, the note says how to add them
    assert "<th>ms / token (batch 1)</th>" not in head and "<th>runtime</th>" not in head
    assert ("add an eval speed stage (ms / token (batch 1), mJ / token, peak RSS (MiB)) "
            "and an eval tasks stage (task accuracy)") in head
    pareto = page[page.index('id="pareto"'):page.index('id="training"')]
    for name in ("teacher", "distill", "scratch", "int4"):  # one legend names every model
        assert f">{name} (" in pareto, name
    assert "time to score one token" in pareto  # eval perplexity throughput when no decode latency


def variant(name: str, role: str, **facts) -> dict:
    v = collect._new(name, role, None)
    v.update(facts)
    return v


TEACHER = variant("t", "teacher", ppl=30.0, ppl_source="eval perplexity (e)", size_bytes=512 * 2**20,
                  params=134_000_000, eval_tokens_per_s=150.0)
STUDENT = variant("s", "distilled student", ppl=1350.0, ppl_source="eval perplexity (e)", val_ppl=1360.0,
                  size_bytes=216 * 2**20, params=56_000_000, train_tokens=61_440, eval_tokens_per_s=450.0)
BASELINE = variant("b", "from scratch", ppl=2000.0, ppl_source="train validation", val_ppl=2000.0,
                   size_bytes=87 * 2**20, params=23_000_000, train_tokens=61_440)
INT8 = variant("q", "compressed (rtn bits=8 group_size=-1)", ppl=1377.0, ppl_source="eval perplexity (e)",
               size_bytes=81 * 2**20, params=56_000_000, source="s",
               method={"name": "rtn", "bits": 8, "group_size": -1})
GGUF = variant("g", "export (gguf q8_0)", size_bytes=59 * 2**20, source="s")


def test_answer_compares_each_model_with_its_reference():
    lines = answer.answer([TEACHER, STUDENT, BASELINE, INT8, GGUF], "12 of 12 stages.", "Curation kept 3.")
    assert lines[0] == "Teacher <b>t</b>: perplexity 30, 512.0 MiB, 134.00 M parameters."
    # 1350 / 30 = 45×; 512 / 216 = 2.37×; 450 / 150 = 3.0×
    assert lines[1] == ("Distilled student <b>s</b>: perplexity 1,350, 45.0× the teacher's 30; 216.0 MiB, "
                        "2.4× smaller than the teacher (56.00 M parameters); scores text 3.0× as fast "
                        "(450 against 150 tokens/s).")
    # validation perplexities of the two training loops: 1 − 1360 / 2000 = 32% lower
    assert lines[2] == ("From scratch, <b>b</b> (23.00 M parameters) reaches validation perplexity 2,000 "
                        "against the student's 1,360 after the same 61,440 training tokens: distillation "
                        "gives 32% lower perplexity.")
    # 216 / 81 = 2.67×; 1377 / 1350 − 1 = +2.0%
    assert lines[3] == ("<b>q</b> (compressed: RTN int8, per channel): 81.0 MiB, 2.7× smaller than s; "
                        "perplexity 1,377 (+2.0% against s).")
    assert lines[4] == "<b>g</b> (export: GGUF q8_0): 59.0 MiB, 3.7× smaller than s; perplexity not measured."
    assert lines[5:] == ["Curation kept 3.", "12 of 12 stages."]
    assert answer.change(99.0, 100.0) == "−1.0%" and answer.change(300.0, 100.0) == "3.0×"
    assert answer.change(64.35, 64.36) == "±0.0%"
    close = variant("c", "distilled student", ppl=29.7, ppl_source="eval perplexity (e)")
    assert "perplexity 29.7, −1.0% against the teacher's 30" in answer.answer([TEACHER, close], ".", None)[1]
    assert answer.times(2.0, 1.0) == "2.0× larger"


def test_variant_table_keeps_only_measured_columns():
    html_table, missing = answer.variant_table([TEACHER, STUDENT, INT8])
    assert "ms / token (batch 1)" in missing and "task accuracy" in missing
    assert "training-loop val. ppl" not in missing and "size on disk" not in missing
    assert "ms / token" not in html_table and "<td>1,360</td>" in html_table
    assert "<td>32.05</td>" in html_table  # bits / weight of the teacher: 8 · 512 MiB / 134 M
    assert answer.short_role(variant("x", "compressed (gptq)", method={"name": "gptq", "bits": 4,
                                                                      "group_size": 128})) \
        == "compressed: GPTQ int4, groups of 128"
    assert answer.short_role(variant("x", "compressed (bitnet)", method={"name": "bitnet", "bits": 1.58})) \
        == "compressed: BitNet 1.58-bit"
    assert answer.short_role(variant("x", "compressed (wanda)", method={"name": "wanda", "sparsity": 0.5})) \
        == "compressed: wanda, sparsity 0.5"


def test_small_pure_helpers():
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), rng.normal(0.5, 1.3, size=200)
    assert sections.ks_distance(a, b) == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)
    assert sections.ks_distance(np.array([1.0, np.nan]), np.array([np.inf])) == 0.0
    assert sections.ks_distance(np.array([0.0, 1.0]), np.array([5.0])) == 1.0
    # 1% of words edited: (0.99)^5 = 0.95099 of the 5-gram shingles kept, J = 0.95099 / 1.04901
    assert sections.j_of_edits(0.01) == pytest.approx(0.906559, abs=1e-6)
    assert [plots.tick_label(v) for v in (0.5, 20, 2000, 3e5, 1.6e21, 5e-4)] == \
        ["0.5", "20", "2,000", "3e5", "2e21", "5e-4"]
    assert plots.heavy_tailed(np.r_[np.ones(95), np.full(5, 100.0)])
    assert not plots.heavy_tailed(np.r_[np.ones(95), np.full(5, -100.0)])
    assert collect.planted_kind({"planted": "near_copy", "rate": 0.03}) == "near_copy 3%"
    assert collect.planted_kind({"planted": "symbols"}) == "symbols" and collect.planted_kind({}) is None
    assert sections.fmt(61440, "count") == "61,440" and sections.fmt(2.09e13, "count") == "2.09e13"
    plan = {"params": 134515008, "total_bytes": 3653071872, "setup": {
        "mode": "train", "batch": 8, "seq": 128, "dtype": "bf16", "master_weights": True,
        "optimizer": "adamw", "gpus": 1}}
    assert sections.plan_setup({"model": "smollm2-135m"}, plan) == (
        "Training <b>smollm2-135m</b> (134.52 M parameters), bf16, adamw, fp32 master weights, "
        "batch 8 × 128 tokens, 1 device: planned peak <b>3.40 GiB</b>.")
