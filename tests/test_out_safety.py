"""--out never deletes an input or a folder llm4all did not make (issue 16: data loss cases)."""

from __future__ import annotations

import pytest

from llm4all import runs
from llm4all.cli import main
from llm4all.errors import UserError
from llm4all.runs import MARKER, atomic_dir, atomic_path, check_out, made_by_llm4all


def _tree(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else b"")
                  for p in path.rglob("*"))


@pytest.mark.parametrize("where", ["same", "parent"])
def test_out_equal_to_or_above_an_input_is_refused_and_the_input_kept(tiny_model, docs_jsonl, tmp_path,
                                                                       capsys, where):
    data = tmp_path / "data"
    data.mkdir()
    (data / "docs.jsonl").write_bytes(docs_jsonl.read_bytes())
    before = _tree(tmp_path)
    out = data if where == "same" else tmp_path
    code = main(["tokenize", str(data / "docs.jsonl") if where == "parent" else str(data),
                 "--out", str(out), "--tokenizer", str(tiny_model)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"--out {out} {'is' if where == 'same' else 'contains'} the input" in err
    assert _tree(tmp_path) == before


def test_a_users_folder_is_never_replaced(tiny_model, docs_jsonl, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    code = main(["tokenize", str(docs_jsonl), "--out", str(mine), "--tokenizer", str(tiny_model)])
    assert code == 2 and "was not written by llm4all" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "precious" and len(list(mine.iterdir())) == 1
    # what llm4all made it replaces, and marks
    shards = tmp_path / "shards"
    assert main(["tokenize", str(docs_jsonl), "--out", str(shards), "--tokenizer", str(tiny_model)]) == 0
    assert (shards / MARKER).exists() and made_by_llm4all(shards)
    assert main(["tokenize", str(docs_jsonl), "--out", str(shards), "--tokenizer", str(tiny_model)]) == 0


def test_atomic_dir_rules(tmp_path):
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as tmp:  # an empty folder holds nothing to lose
        (tmp / "a").write_text("1")
    assert (tmp_path / "empty" / "a").read_text() == "1"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a directory"), atomic_dir(tmp_path / "file"):
        pass
    legacy = tmp_path / "run" / "stage"  # written by an older llm4all: a manifest above it
    (legacy / "model").mkdir(parents=True)
    (legacy / "llm4all.json").write_text("{}")
    (legacy / "model" / "config.json").write_text("{}")
    assert made_by_llm4all(legacy / "model")


def test_state_arguments_may_live_inside_out(tmp_path):
    (tmp_path / "out" / "teacher_cache").mkdir(parents=True)
    check_out(tmp_path / "out", {"cache": str(tmp_path / "out" / "teacher_cache"), "data": "nope"})
    with pytest.raises(UserError, match="contains the input"):
        check_out(tmp_path, {"data": [str(tmp_path / "out")]})


def test_a_recipe_never_removes_a_users_folder_named_like_a_stage(tiny_model, docs_jsonl, tmp_path):
    from llm4all.recipe import run

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nrun_dir: {tmp_path / 'run'}\nstages:\n  tokenize:\n"
                      f"    data: [{docs_jsonl}]\n    tokenizer: {tiny_model}\n")
    (tmp_path / "run" / "tokenize").mkdir(parents=True)
    (tmp_path / "run" / "tokenize" / "mine.txt").write_text("precious")
    with pytest.raises(UserError, match="was not written by llm4all"):
        run(recipe)
    assert (tmp_path / "run" / "tokenize" / "mine.txt").read_text() == "precious"


@pytest.mark.parametrize("out", [".", "..", "./"])
def test_out_dot_is_refused(tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="the current folder or one above it cannot be"), atomic_dir(out):
        pass


def test_temporaries_of_a_killed_writer_are_cleaned_by_the_next(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    script = ("import sys, time\nfrom llm4all.runs import atomic_dir, atomic_path\n"
              "with atomic_path(sys.argv[1] + '.json') as f, atomic_dir(sys.argv[1]) as d:\n"
              "    f.write_text('x'); (d / 'half').write_text('y')\n"
              "    print('ready', flush=True); time.sleep(60)\n")
    target = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(n.endswith(".tmp") and f"-{child.pid}." in n for n in left)
    with atomic_dir(target) as d:  # the next writer of the same path removes the dead one's leftovers
        (d / "whole").write_text("z")
    with atomic_path(tmp_path / "out.json") as f:
        f.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.json"]
    live = tmp_path / f".out.{runs._HOST}-{os.getpid()}.keep.tmp"
    live.mkdir()  # a running process's temporary (ours) is left alone
    with atomic_dir(target):
        pass
    assert live.exists()


def test_two_writers_finishing_together_both_succeed(tmp_path):
    import threading

    target = tmp_path / "out"
    barrier, errors = threading.Barrier(2), []

    def write(tag):
        try:
            with atomic_dir(target) as d:
                (d / "who").write_text(tag)
                barrier.wait()
        except Exception as e:  # noqa: BLE001 - the test reports any failure
            errors.append(e)

    threads = [threading.Thread(target=write, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and (target / "who").read_text() in ("a", "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
