"""llm4all report: a run directory built from real tiny stages renders into one self-contained page."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from llm4all.errors import UserError
from llm4all.recipe import run as run_recipe
from llm4all.report import collect
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
    assert by["int4"]["size_bytes"] < 0.6 * by["distill"]["size_bytes"]  # 4-bit Linears vs fp32
    assert by["distill"]["train_flops"] == 6.0 * by["distill"]["params"] * by["distill"]["train_tokens"]


@pytest.mark.slow
def test_report_stage_writes_one_self_contained_page(run_dir):
    page = (run_dir / "report" / "report.html").read_text()
    for heading in ("Headline", "What you get", "Quality against size", "Training and distillation",
                    "Curation", "Planted junk", "Planned against measured", "Stage timings"):
        assert heading in page, heading
    assert page.count("<svg") >= 7 and "<title>tiny run</title>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched
    assert "<script" not in page and "@import" not in page and "url(http" not in page
    assert page.count("<details>") >= 6  # the numbers behind the plots


@pytest.mark.slow
def test_planted_recall_and_removals_match_the_curate_outputs(run_dir):
    cur = collect.curation(run_dir / "curate")
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
    # hand-written outputs of the other eval commands, with keys missing
    (part / "tasks").mkdir()
    (part / "tasks" / "config.yaml").write_text("command: eval tasks\nmodel: x\n")
    (part / "tasks" / "tasks.json").write_text('{"model": "x", "results": {"cloze": {"items": 3}}}')
    (part / "spec").mkdir()
    (part / "spec" / "speculative.json").write_text('{"target": "x", "results": [{"draft": "layers:1"}]}')
    out = report(part, out=tmp_path / "r.html")
    page = out.read_text()
    assert "Headline" in page and "Curation" not in page.split("Not in this run")[0]
    assert "half (train) has not finished" in page and "speculative decoding of x" in page
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
