"""Scripted chat sessions on a tiny model: history, KV-cache reuse, /reset, /exit, EOF, ctrl-C."""

from __future__ import annotations

import io
import shutil

import pytest

from llm4all.cli import main as cli
from llm4all.serve.backends import open_lm
from llm4all.serve.chat import ChatSession, run
from llm4all.serve.generate import generate

# roles spelled with words of the tiny vocabulary: system -> they, user -> he, assistant -> you
TEMPLATE = ("{% for m in messages %}<s>{{ {'system': 'they', 'user': 'he'}.get(m['role'], 'you') }} "
            "{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<s>you{% endif %}")


@pytest.fixture(scope="module")
def chat_model(lively_model, tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(lively_model, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(path)
    return path


def session_for(model, **kwargs) -> ChatSession:
    return ChatSession(open_lm(str(model)), max_new_tokens=kwargs.pop("max_new_tokens", 6), **kwargs)


def chat(session: ChatSession, script: str, output=None) -> str:
    output = output if output is not None else io.StringIO()
    run(session, io.StringIO(script), output)
    return output.getvalue()


def fresh_reply(model, messages: list[dict], n: int = 6) -> str:
    """What a new backend (empty cache) answers to ``messages``: the reference for each turn."""
    lm = open_lm(str(model))
    return generate(lm, lm.chat_ids(messages), max_new_tokens=n).text


def test_a_scripted_conversation_keeps_history_and_reuses_the_cache(chat_model):
    session = session_for(chat_model, system="they were")
    out = chat(session, "the of\nshe was with\n/exit\nnever read\n")
    roles = [m["role"] for m in session.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    first, second = session.messages[2]["content"], session.messages[4]["content"]
    assert first == fresh_reply(chat_model, session.messages[:2])
    assert second == fresh_reply(chat_model, session.messages[:4])  # the cached prefix changes nothing
    assert out == f"> {first}\n> {second}\n> "  # "never read" comes after /exit
    assert session.turns[0].reused_tokens == 0
    # turn 2 feeds only what follows the first reply's last token (its EOS was never fed)
    assert session.turns[1].reused_tokens > session.turns[0].prompt_tokens
    assert session.turns[1].prompt_tokens - session.turns[1].reused_tokens <= 12


def test_without_cache_reuse_the_replies_are_the_same(chat_model):
    reused, fresh = session_for(chat_model), session_for(chat_model, reuse_cache=False)
    chat(reused, "the of\nshe was with\nit is\n")
    chat(fresh, "the of\nshe was with\nit is\n")
    assert reused.messages == fresh.messages
    assert [t.reused_tokens for t in fresh.turns] == [0, 0, 0]
    assert all(t.reused_tokens > 0 for t in reused.turns[1:])


def test_reset_forgets_the_conversation(chat_model):
    session = session_for(chat_model, system="they were")
    out = chat(session, "the of\n/reset\nshe was with\n")  # ends at EOF, no /exit
    assert "(conversation forgotten)" in out
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant"]
    assert session.messages[2]["content"] == fresh_reply(chat_model, session.messages[:2])
    assert out.endswith("\n> \n")  # the prompt, then EOF


class InterruptingOutput(io.StringIO):
    """An output whose ``write`` raises KeyboardInterrupt (ctrl-C) at its n-th call."""

    def __init__(self, at: int):
        super().__init__()
        self.calls, self.at = 0, at

    def write(self, text):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_mid_reply_stops_the_reply_and_keeps_the_session(chat_model):
    script = "the of\none of all\n"
    reference = session_for(chat_model)
    chat(reference, script)
    full = reference.messages[1]["content"]
    # writes: "> " (1), then the first reply's pieces: stop at its 3rd piece (write 4)
    session = session_for(chat_model)
    out = chat(session, script, InterruptingOutput(at=4))
    partial = session.messages[1]["content"]
    assert " [stopped]\n" in out and full.startswith(partial) and 0 < len(partial) < len(full)
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert len(session.turns) == 1  # only the second reply finished
    # the next turn is answered from the history with the partial reply, cache reused
    assert session.messages[3]["content"] == fresh_reply(chat_model, session.messages[:3]) != ""
    assert session.turns[0].reused_tokens > 0


def test_ctrl_c_before_any_text_drops_the_question(chat_model):
    session = session_for(chat_model)
    out = chat(session, "the of\nshe was with\n", InterruptingOutput(at=2))  # the first piece
    assert "[stopped]\n" in out
    assert [m["content"] for m in session.messages if m["role"] == "user"] == ["she was with"]


def test_unknown_commands_and_blank_lines_are_not_sent(chat_model):
    session = session_for(chat_model)
    out = chat(session, "\n/help\n/exit\n")
    assert "unknown command /help" in out and session.messages == []


def test_cli_chat_reads_stdin(chat_model, lively_model, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("the of\n/exit\n"))
    assert cli(["chat", str(chat_model), "--temperature", "0", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    expected = fresh_reply(chat_model, [{"role": "user", "content": "the of"}])
    assert out.splitlines()[0].startswith(f"chatting with {chat_model} (torch)")
    assert out.splitlines()[1] == f"> {expected}"
    assert cli(["chat", str(lively_model)]) == 2  # no chat template
    assert "no chat template" in capsys.readouterr().err



def test_oldest_exchanges_are_dropped_to_fit_the_context(chat_model):
    session = session_for(chat_model)  # the tiny model's context: 256 tokens
    questions = [" ".join([w] * 70) for w in ("the", "of", "and", "to")]
    out = chat(session, "\n".join(questions) + "\n" + " ".join(["it"] * 300) + "\n")
    users = [m["content"] for m in session.messages if m["role"] == "user"]
    assert users == questions[-3:]  # 3 exchanges of ~80 tokens fit, the first was dropped
    assert len(session.lm.chat_ids(session.messages)) + 6 <= 256
    assert "error: the message has" in out and "context is 256" in out  # 300 words never fit
    assert session.turns[3].reused_tokens < 5  # the history changed at its start: only "<s> he" reused
