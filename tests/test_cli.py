import subprocess
import sys

import pytest

from llm4all.cli import COMMANDS, main


def all_commands(table=COMMANDS, prefix=()):
    for name, target in table.items():
        if isinstance(target, dict):
            yield from all_commands(target, (*prefix, name))
        else:
            yield [*prefix, name]


@pytest.mark.parametrize("command", list(all_commands()), ids=" ".join)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out
    assert len(out.splitlines()) > 3


def test_top_level_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_a_one_line_error(capsys):
    assert main(["tokenise"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'tokenize'" in err
    assert len(err.strip().splitlines()) == 1


def test_user_error_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok"}\n{"id": "b", "text": \n')
    proc = subprocess.run([sys.executable, "-m", "llm4all", "tokenize", str(bad), "--out",
                           str(tmp_path / "out"), "--tokenizer", "no-such-model"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "unknown model 'no-such-model'" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_ls_lists_registries_and_entries(capsys):
    assert main(["ls"]) == 0
    assert "models" in capsys.readouterr().out
    assert main(["ls", "models"]) == 0
    assert "smollm2-135m" in capsys.readouterr().out
    assert main(["ls", "modles"]) == 2
    assert "did you mean 'models'" in capsys.readouterr().err


def test_ls_lists_curricula_and_mixtures(capsys):
    assert main(["ls", "curricula"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("linear", "root", "step", "Platanios"))
    assert main(["ls", "mixtures"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("fixed", "proportional", "temperature", "Arivazhagan"))


def test_quiet_and_verbose_flags(tmp_path, capsys, monkeypatch):
    """-q: nothing on stdout (the result is in the files), errors still on stderr; -v: logging on."""
    import json
    import logging

    monkeypatch.delenv("LLM4ALL_QUIET", raising=False)
    out = tmp_path / "c.json"
    assert main(["-q", "plan", "chinchilla", "--flops", "1e20", "--out", str(out)]) == 0
    assert capsys.readouterr().out == "" and json.loads(out.read_text())
    assert main(["-q", "plan", "chinchilla", "--flops", "-1"]) == 2
    assert "error" in capsys.readouterr().err
    monkeypatch.setenv("LLM4ALL_QUIET", "")
    assert main(["-v", "plan", "chinchilla", "--flops", "1e20"]) == 0
    assert capsys.readouterr().out and logging.getLogger().level == logging.DEBUG
    monkeypatch.delenv("LLM4ALL_VERBOSE", raising=False)
    logging.getLogger().setLevel(logging.WARNING)


def test_status_lines_go_through_logging_and_follow_q_and_v(tmp_path):
    """issue 16 item 2: library functions log; the command shows INFO on stderr, -q hides it, and a
    recipe stage's log file keeps it (the handler writes to the current sys.stderr)."""
    import logging
    import sys

    from llm4all import logs
    from llm4all.stagelog import stage_log

    logger = logging.getLogger("llm4all.test")
    logs.setup()
    with stage_log(tmp_path / "log.txt"):
        logger.info("resumed from step 4")
        logger.warning("checkpoint damaged")
        logger.debug("not shown at INFO")
    text = (tmp_path / "log.txt").read_text()
    assert "resumed from step 4\n" in text and "warning: checkpoint damaged\n" in text
    assert "not shown" not in text
    logs.setup(logging.ERROR)  # -q
    with stage_log(tmp_path / "quiet.txt"):
        logger.info("hidden")
    assert "hidden" not in (tmp_path / "quiet.txt").read_text()
    logs.setup()
    handlers = [h for h in logging.getLogger("llm4all").handlers if type(h).__name__ == "_CurrentStderr"]
    assert len(handlers) == 1 and handlers[0].stream is sys.stderr
