import json
from pathlib import Path

import pytest
import yaml

from llm4all.cli import main as cli
from llm4all.errors import UserError
from llm4all.recipe import RECIPES_DIR, load_recipe, run


def write_recipe(tmp_path: Path, stages: dict, **top) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"stages": stages, **top}, sort_keys=False))
    return path


def two_stage(tiny_model, docs_jsonl):
    return {
        "tokenize": {"data": [str(docs_jsonl)], "tokenizer": str(tiny_model), "workers": 1,
                     "val_fraction": 0.3},
        "eval_tiny": {"command": "eval perplexity", "model": str(tiny_model), "data": "${tokenize}",
                      "context": 32},
    }


def test_run_then_rerun_skips_finished_stages(tiny_model, docs_jsonl, tmp_path, capsys):
    recipe = write_recipe(tmp_path, two_stage(tiny_model, docs_jsonl))
    first = run(str(recipe), run_dir=tmp_path / "run")
    assert {s["status"] for s in first["stages"].values()} == {"ran"}
    ppl = json.loads((tmp_path / "run" / "eval_tiny" / "perplexity.json").read_text())
    assert ppl["ppl"] > 1
    config = yaml.safe_load((tmp_path / "run" / "eval_tiny" / "config.yaml").read_text())
    assert config["data"] == str(tmp_path / "run" / "tokenize") and config["stride"] is None
    second = run(str(recipe), run_dir=tmp_path / "run")
    assert {s["status"] for s in second["stages"].values()} == {"skipped"}
    third = run(str(recipe), run_dir=tmp_path / "run", only=["eval_tiny"], force=True)
    assert list(third["stages"]) == ["eval_tiny"] and third["stages"]["eval_tiny"]["status"] == "ran"


def test_an_option_added_since_at_its_default_does_not_rerun_a_stage(tiny_model, docs_jsonl, tmp_path):
    """A finished stage's config.yaml lacks an option llm4all gained later: at its default it is the
    same configuration (the stage would otherwise rerun, its output wiped); at another value, not."""
    stages = two_stage(tiny_model, docs_jsonl)
    run(str(write_recipe(tmp_path, stages)), run_dir=tmp_path / "run")
    saved = tmp_path / "run" / "eval_tiny" / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    assert config["batch_size"] == 4 and config["split"] == "validation"  # both at their defaults
    saved.write_text(yaml.safe_dump({k: v for k, v in config.items() if k != "batch_size"}))
    again = run(str(write_recipe(tmp_path, stages)), run_dir=tmp_path / "run")
    assert again["stages"]["eval_tiny"]["status"] == "skipped"
    stages["eval_tiny"]["batch_size"] = 2  # not the default: a different configuration
    again = run(str(write_recipe(tmp_path, stages)), run_dir=tmp_path / "run")
    assert again["stages"]["eval_tiny"]["status"] == "ran"


def test_changed_config_reruns_the_stage(tiny_model, docs_jsonl, tmp_path):
    stages = two_stage(tiny_model, docs_jsonl)
    run(str(write_recipe(tmp_path, stages)), run_dir=tmp_path / "run")
    stages["eval_tiny"]["context"] = 16
    again = run(str(write_recipe(tmp_path, stages)), run_dir=tmp_path / "run")
    assert again["stages"]["tokenize"]["status"] == "skipped"
    assert again["stages"]["eval_tiny"]["status"] == "ran"


def test_a_rerun_stage_reruns_what_reads_it(tiny_model, docs_jsonl, tmp_path):
    stages = two_stage(tiny_model, docs_jsonl)
    stages["report"] = {"run": "${run_dir}"}  # reads every earlier stage
    recipe = write_recipe(tmp_path, stages)
    run(str(recipe), run_dir=tmp_path / "run")
    forced = run(str(recipe), run_dir=tmp_path / "run", only=["tokenize"], force=True)
    assert list(forced["stages"]) == ["tokenize"]
    # eval_tiny's and report's configs are unchanged, but tokenize finished after them
    again = run(str(recipe), run_dir=tmp_path / "run")
    status = [again["stages"][n]["status"] for n in ("tokenize", "eval_tiny", "report")]
    assert status == ["skipped", "ran", "ran"]
    assert {s["status"] for s in run(str(recipe), run_dir=tmp_path / "run")["stages"].values()} == {"skipped"}


def test_from_requires_known_stage_and_runs_the_rest(tiny_model, docs_jsonl, tmp_path):
    recipe = write_recipe(tmp_path, two_stage(tiny_model, docs_jsonl))
    with pytest.raises(UserError, match="no stage 'eval'"):
        run(str(recipe), run_dir=tmp_path / "run", from_="eval")
    with pytest.raises(UserError, match="stage 'eval_tiny' needs stage 'tokenize'"):
        run(str(recipe), run_dir=tmp_path / "run", from_="eval_tiny")
    run(str(recipe), run_dir=tmp_path / "run", only=["tokenize"])
    assert not (tmp_path / "run" / "eval_tiny").exists()
    assert cli(["run", str(recipe), "--run-dir", str(tmp_path / "run"), "--from", "eval_tiny"]) == 0
    assert (tmp_path / "run" / "eval_tiny" / "DONE").exists()


@pytest.mark.parametrize("stages, message", [
    ({"tokenize": {"data": ["x"], "tokeniser": "y"}},
     r"stages.tokenize: unknown key 'tokeniser'.*did you mean 'tokenizer'"),
    ({"tokenize": {"data": ["x"], "workers": "two"}}, r"stages.tokenize.workers: expected an integer"),
    ({"tokenize": {"tokenizer": "y"}}, r"stages.tokenize: missing required key\(s\): data"),
    ({"tokenise": {"data": ["x"]}}, r"unknown command 'tokenise'.*did you mean 'tokenize'"),
    ({"e": {"command": "eval", "model": "m"}}, r"'eval' needs a subcommand: perplexity"),
    ({"e": {"command": "eval perplexity", "model": "m", "data": "${later}"}},
     r"unknown or later stage \$\{later\}"),
    ({"e": {"command": "eval perplexity", "model": "m", "data": "d", "dtype": "int3"}},
     r"'int3' is not allowed"),
    ({"t": {"command": "tokenize", "data": ["x"], "out": "elsewhere"}},
     r"'out' is set by the recipe runner"),
    ({"tokenize": ["x", "y"]}, r"stages.tokenize: expected a mapping of options .*got a list"),
    ({"tokenize": "data x"}, r"stages.tokenize: expected a mapping of options .*got a str"),
    ({"../up": {"command": "tokenize", "data": ["x"]}}, r"a stage name is letters"),
])
def test_invalid_recipes_fail_before_running(tmp_path, stages, message):
    with pytest.raises(UserError, match=message):
        run(str(write_recipe(tmp_path, stages)), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_wrong_top_level_key_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match=r"r.yaml: unknown key 'stage'.*did you mean 'stages'"):
        load_recipe(write_recipe(tmp_path, {}, stage={}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  a: [1,\n")
    with pytest.raises(UserError, match=r"bad.yaml: line \d+: invalid YAML"):
        load_recipe(bad)
    with pytest.raises(UserError, match="no such recipe file; packaged recipes: .*quickstart"):
        load_recipe(tmp_path / "missing.yaml")


def test_cli_reports_recipe_errors_in_one_line(tmp_path, capsys):
    recipe = write_recipe(tmp_path, {"tokenize": {"data": ["x"], "bogus": 1}})
    assert cli(["run", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown key 'bogus'" in err


@pytest.mark.parametrize("recipe", sorted(RECIPES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_validates(recipe, tmp_path):
    run_dir, stages = load_recipe(recipe, tmp_path / "run")
    assert stages and run_dir == tmp_path / "run"


def test_every_stage_leaves_a_plain_text_log(tiny_model, docs_jsonl, tmp_path):
    run(str(write_recipe(tmp_path, two_stage(tiny_model, docs_jsonl))), run_dir=tmp_path / "run")
    for stage in ("tokenize", "eval_tiny"):
        log = (tmp_path / "run" / stage / "log.txt").read_text()
        assert log.strip() and "\x1b[" not in log
    assert "perplexity" in (tmp_path / "run" / "eval_tiny" / "log.txt").read_text()
    assert not list((tmp_path / "run").glob(".*log.txt"))  # moved in, nothing left beside


def test_the_stage_log_keeps_text_and_drops_live_redraws(tmp_path, capsys):
    import sys

    from llm4all.stagelog import stage_log

    with stage_log(tmp_path / "log.txt"):
        print("\x1b[1mresult\x1b[0m 42")
        sys.stdout.write("\r\x1b[2Kcompress ━━━━ 3/30\x1b[1A")  # a progress bar's redraw
        print("done", file=sys.stderr)
    assert (tmp_path / "log.txt").read_text() == "result 42\ndone\n"
    seen = capsys.readouterr()
    assert "\x1b[1mresult" in seen.out and "3/30" in seen.out  # the terminal still gets everything
