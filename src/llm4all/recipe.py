"""``llm4all run RECIPE``: chain stages from a YAML recipe, skipping the finished ones.

A recipe is data, never code::

    name: quickstart
    run_dir: runs/quickstart          # optional, default runs/<recipe file stem>
    stages:                           # run in this order
      tokenize:                       # the stage name is the command unless `command:` says
        data: ["${demo_corpus}"]
      eval_teacher:
        command: eval perplexity
        model: smollm2-135m
        data: ${tokenize}             # another stage's output directory

Each stage's keys are exactly the keyword arguments of its command's function (``llm4all
CMD --help``); all stages are validated before anything runs, and an error names the recipe
file and the key. A stage whose output directory has a ``DONE`` marker and the same resolved
config is skipped on rerun, unless a stage it reads (a ``${STAGE}`` it names; every earlier
stage for one that reads ``${run_dir}``, like the report) ran again since: then it reruns too.
``--only`` and ``--from`` pick stages, ``--force`` reruns them.

Substitutions in strings: ``${STAGE}`` (that stage's output directory, which must come
earlier), ``${run_dir}``, ``${demo_corpus}`` (the bundled demo corpus), ``${outside_corpus}`` (text
outside its domains, to measure forgetting), ``${sft_data}`` (the shipped instruction set,
data/sft) and ``${demo_planted}``
(near-duplicates and junk planted into it by ``llm4all plant``, so removals are visible).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from llm4all.errors import UserError, did_you_mean
from llm4all.runs import DONE, MARKER, check_out, is_done, mark_done, refuse_foreign, write_json, write_yaml
from llm4all.signature import bind, params, resolved
from llm4all.stagelog import stage_log

TOP_KEYS = ("name", "description", "run_dir", "stages")
LOG = "log.txt"  # what each stage printed, in its directory
RECIPES_DIR = Path(__file__).parent / "recipes"
_VAR = re.compile(r"\$\{([A-Za-z0-9_\-]+)\}")
# variables that are not stages
BUILTIN = ("run_dir", "demo_corpus", "demo_planted", "outside_corpus", "sft_data")


def find_recipe(recipe: str | Path) -> Path:
    path = Path(recipe)
    if path.is_file():
        return path
    packaged = RECIPES_DIR / f"{Path(recipe).stem}.yaml"
    if packaged.is_file():
        return packaged
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    raise UserError(f"{recipe}: no such recipe file; packaged recipes: {', '.join(names)}")


def _command(name: str, where: str):
    from llm4all.cli import COMMANDS, resolve

    target: Any = COMMANDS
    for part in name.split():
        if not isinstance(target, dict) or part not in target:
            valid = [k for k in (target if isinstance(target, dict) else {})]
            raise UserError(f"{where}: unknown command {name!r}; {did_you_mean(part, valid)}")
        target = target[part]
    if isinstance(target, dict):
        raise UserError(f"{where}: {name!r} needs a subcommand: {', '.join(target)}")
    if name in ("run", "ls"):
        raise UserError(f"{where}: {name!r} cannot be a recipe stage")
    return resolve(target)


def _substitute(value: Any, variables: dict[str, str], where: str) -> Any:
    if isinstance(value, str):
        def repl(m: re.Match) -> str:
            if m.group(1) not in variables:
                raise UserError(f"{where}: unknown or later stage ${{{m.group(1)}}}; "
                                f"{did_you_mean(m.group(1), list(variables))}")
            return variables[m.group(1)]

        return _VAR.sub(repl, value)
    if isinstance(value, list):
        return [_substitute(v, variables, where) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables, f"{where}.{k}") for k, v in value.items()}
    return value


def load_recipe(recipe: str | Path, run_dir: Path | None = None) -> tuple[Path, list[dict]]:
    """Parse and validate a recipe; returns (run_dir, stages) with typed, substituted kwargs."""
    path = find_recipe(recipe)
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f": line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(spec, dict):
        raise UserError(f"{path}: a recipe is a mapping with keys {', '.join(TOP_KEYS)}")
    for key in spec:
        if key not in TOP_KEYS:
            raise UserError(f"{path}: unknown key {key!r}; {did_you_mean(key, TOP_KEYS)}")
    stages = spec.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise UserError(f"{path}: 'stages' must be a non-empty mapping of stage name -> options")
    run_dir = Path(run_dir or spec.get("run_dir") or Path("runs") / path.stem)
    variables = {"run_dir": str(run_dir)}
    if any("${demo_" in str(v) for v in stages.values()):
        from llm4all.data.demo import demo_corpus_path

        variables["demo_corpus"] = str(demo_corpus_path())
        variables["demo_planted"] = str(demo_corpus_path().parent / "demo-planted")
    if any("${outside_corpus}" in str(v) for v in stages.values()):
        from llm4all.data.demo import outside_corpus_path

        variables["outside_corpus"] = str(outside_corpus_path())
    if any("${sft_data}" in str(v) for v in stages.values()):
        from llm4all.data.instructions import shipped_path

        variables["sft_data"] = str(shipped_path())
    out = []
    for name, options in stages.items():
        where = f"{path}: stages.{name}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
            raise UserError(f"{where}: a stage name is letters, digits, '_', '-' or '.' (it names a folder)")
        if options is not None and not isinstance(options, dict):
            raise UserError(f"{where}: expected a mapping of options (key: value lines under the stage "
                            f"name), got a {type(options).__name__}: {str(options)[:60]!r}")
        options = dict(options or {})
        command = str(options.pop("command", name))
        fn = _command(command, where)
        refs = set(_VAR.findall(str(options)))
        needs = sorted(m for m in refs if m in variables and m not in BUILTIN)
        # what it reads: the stages it names, or every earlier stage if it reads the whole run (report)
        inputs = [s["name"] for s in out] if "run_dir" in refs else needs
        options = _substitute(options, variables, where)
        stage_out = run_dir / name
        if "out" in params(fn):
            if "out" in options:
                raise UserError(f"{where}: 'out' is set by the recipe runner ({stage_out})")
            options["out"] = str(stage_out)
        out.append({"name": name, "command": command, "fn": fn, "out": stage_out, "needs": needs,
                    "inputs": inputs, "kwargs": bind(fn, options, where)})
        variables[name] = str(stage_out)
    return run_dir, out


def _same_config(out: Path, config: dict, fn: Callable | None = None) -> bool:
    """Whether the stage in ``out`` ran with ``config``. An option the command gained since (absent
    from the saved config) counts as the same when it is at its default: a new llm4all option
    must not rerun, and so wipe, every finished stage of a run."""
    saved = out / "config.yaml"
    if not saved.exists():
        return False
    try:
        old = yaml.safe_load(saved.read_text())
    except yaml.YAMLError:
        return False
    if not isinstance(old, dict):
        return False
    if old == config or fn is None:
        return old == config
    defaults = resolved(fn, {})  # every option at its default (None where it has none)
    new = {k: v for k, v in config.items() if k in old or k not in defaults or v != defaults[k]}
    return old == new


def _finished_at(out: Path) -> float:
    return (out / DONE).stat().st_mtime if (out / DONE).exists() else 0.0


def _stale_inputs(stage: dict, run_dir: Path) -> list[str]:
    """The stages ``stage`` reads that finished after it did (their outputs changed since)."""
    mine = _finished_at(stage["out"])
    return [n for n in stage["inputs"] if _finished_at(run_dir / n) > mine]


def run(recipe: str, *, run_dir: Path | None = None, only: list[str] | None = None,
        from_: str | None = None, force: bool = False, dry_run: bool = False) -> dict:
    """Run a recipe's stages in order, skipping the ones already done with the same config.

    Args:
        recipe: a recipe YAML file, or the name of a packaged recipe (quickstart, ...).
        run_dir: where stage outputs go (default: the recipe's run_dir or runs/<recipe name>).
        only: run just these stages.
        from_: start at this stage (the earlier ones must be done).
        force: rerun the selected stages even if done.
        dry_run: validate and print the plan without running anything.
    """
    from rich.console import Console

    console = Console()
    run_dir, stages = load_recipe(recipe, run_dir)
    names = [s["name"] for s in stages]
    for picked in [*(only or []), *([from_] if from_ else [])]:
        if picked not in names:
            raise UserError(f"{recipe}: no stage {picked!r}; {did_you_mean(picked, names)}")
    selected = names[names.index(from_):] if from_ else names
    if only:
        selected = [n for n in selected if n in only]
    for stage in stages:
        if stage["name"] in selected:
            for need in stage["needs"]:
                if need not in selected and not is_done(run_dir / need):
                    raise UserError(f"stage {stage['name']!r} needs stage {need!r}, which has not "
                                    f"run in {run_dir}; run it first (or drop --only/--from)")
    summary: dict[str, Any] = {"recipe": str(find_recipe(recipe)), "run_dir": str(run_dir), "stages": {}}
    total = time.perf_counter()
    rerun: set[str] = set()  # stages (re)run by this call: what reads them runs again too
    for i, stage in enumerate(stages, start=1):
        name, out = stage["name"], stage["out"]
        config = {"command": stage["command"], **resolved(stage["fn"], stage["kwargs"])}
        label = f"[{i}/{len(stages)}] {name} ({stage['command']})"
        if name not in selected:
            continue
        stale = sorted({*(_stale_inputs(stage, run_dir) if is_done(out) else []),
                        *(n for n in stage["inputs"] if n in rerun)})
        if not force and is_done(out) and _same_config(out, config, stage["fn"]) and not stale:
            console.print(f"{label}: done, skipped")
            summary["stages"][name] = {"status": "skipped"}
            continue
        rerun.add(name)
        if dry_run:
            why = f" (changed input: {', '.join(stale)})" if stale else ""
            console.print(f"{label}: would run{why} -> {out}")
            continue
        console.rule(label)
        if out.exists() and (force or not _same_config(out, config, stage["fn"])):
            refuse_foreign(out)  # a folder of the user's that happens to bear the stage's name
            shutil.rmtree(out)  # another configuration's partial or finished output
        (out / "DONE").unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).touch()
        write_yaml(out / "config.yaml", config)  # an interrupted run with this config resumes
        if stage["kwargs"].get("out"):
            check_out(stage["kwargs"]["out"], stage["kwargs"])
        start = time.perf_counter()
        # beside the stage directory while it runs: a command that replaces its output directory
        # would take an open log with it; moved in when the stage ends, failed or not
        log = out.parent / f".{name}.{LOG}"
        try:
            with stage_log(log):
                stage["fn"](**stage["kwargs"])
        finally:
            if out.is_dir() and log.exists():
                os.replace(log, out / LOG)
        seconds = time.perf_counter() - start
        out.mkdir(parents=True, exist_ok=True)
        mark_done(out, config, seconds)
        console.print(f"{label}: finished in {seconds:.1f} s")
        summary["stages"][name] = {"status": "ran", "seconds": round(seconds, 2)}
    summary["seconds"] = round(time.perf_counter() - total, 2)
    if not dry_run:
        write_json(run_dir / "summary.json", summary)
        console.print(f"run finished in {summary['seconds']:.1f} s -> {run_dir}")
    return summary
