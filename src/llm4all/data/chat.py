"""Conversations: read them in three common shapes, render them with a chat template, and mark
which tokens are the assistant's (the only ones supervised fine-tuning learns from).

Shapes, detected per record (``conversation_record``):

- **messages** (OpenAI): ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``;
- **Alpaca**: ``{"instruction": str, "input": str (optional), "output": str, "system": str (optional)}``
  (Taori et al. 2023): the instruction, then the input after a blank line, is the user's turn;
- **ShareGPT**: ``{"conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...]}``
  (also ``user``/``assistant`` for ``from``);
- our own documents (``curate``'s output of conversations): ``meta.messages``.

Each becomes a ``Document`` whose ``meta["messages"]`` holds the normalised messages and whose
``text`` is a plain transcript ("user: ...\\n\\nassistant: ..."), so ``curate`` can score and
select conversations like any document and its output reads back here unchanged.

Rendering (``ChatEncoder``): the tokenizer's own chat template, or a named one for base models
(``TEMPLATES``: chatml, alpaca). The assistant's tokens are found without special markers in the
template: for the i-th assistant turn, the rendering of the turns before it with the generation
prompt is a prefix of the rendering up to and including it, and the characters between the two
are that turn's answer (with its end-of-turn token: the model learns to stop). A template whose
renderings are not prefixes of one another (one that rewrites earlier turns) is an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llm4all.data.document import Document
from llm4all.data.readers import read_documents, record_id_and_meta
from llm4all.errors import UserError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant"}

# Named templates for tokenizers without one (or to override it). Jinja, as HF chat templates.
TEMPLATES = {
    # ChatML (OpenAI's markup, the SmolLM2 / Qwen family's): <|im_start|>role\ncontent<|im_end|>\n
    "chatml": ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
               "'<|im_end|>\\n' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
    # Alpaca's prompt (Taori et al. 2023), plain text: works with any base tokenizer
    "alpaca": ("{% for m in messages %}"
               "{% if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
               "{% elif m['role'] == 'user' %}{{ '### Instruction:\\n' + m['content'] + '\\n\\n' }}"
               "{% else %}{{ '### Response:\\n' + m['content'] + eos_token + '\\n\\n' }}{% endif %}"
               "{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"),
}


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        found = "missing" if value is None else type(value).__name__
        raise ValueError(f"field {field!r} must be a string ({found})")
    return value


def normalise_messages(raw: Any, field: str = "messages") -> list[dict[str, str]]:
    """Checked ``[{"role", "content"}]``: known roles, string contents, a system turn only first,
    at least one assistant turn."""
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"field {field!r} must be a non-empty list of messages")
    out = []
    for k, m in enumerate(raw):
        if not isinstance(m, dict):
            raise ValueError(f"{field}[{k}] must be an object with role and content")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"{field}[{k}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if role == "system" and k:
            raise ValueError(f"{field}[{k}]: a system message may only come first")
        out.append({"role": role, "content": _string(m.get("content"), f"{field}[{k}].content")})
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError(f"field {field!r} has no assistant message: nothing to learn from")
    return out


def messages_of(obj: dict) -> tuple[list[dict[str, str]], set[str]]:
    """(normalised messages, the fields they came from) of one record in any known shape."""
    meta = obj.get("meta")
    if "messages" in obj:
        return normalise_messages(obj["messages"]), {"messages"}
    if isinstance(meta, dict) and "messages" in meta:
        return normalise_messages(meta["messages"], "meta.messages"), {"text"}
    if "conversations" in obj:
        turns = obj["conversations"]
        if not isinstance(turns, list):
            raise ValueError("field 'conversations' must be a list of {from, value}")
        raw = []
        for k, t in enumerate(turns):
            who = t.get("from") if isinstance(t, dict) else None
            if who not in SHAREGPT_ROLES:
                raise ValueError(f"conversations[{k}].from must be one of "
                                 f"{', '.join(SHAREGPT_ROLES)}, got {who!r}")
            raw.append({"role": SHAREGPT_ROLES[who], "content": t.get("value")})
        return normalise_messages(raw, "conversations"), {"conversations"}
    if "instruction" in obj or "output" in obj:
        user = _string(obj.get("instruction"), "instruction")
        extra = obj.get("input") or ""
        user = f"{user}\n\n{_string(extra, 'input')}" if extra else user
        raw = ([{"role": "system", "content": _string(obj["system"], "system")}] if obj.get("system") else [])
        raw += [{"role": "user", "content": user},
                {"role": "assistant", "content": _string(obj.get("output"), "output")}]
        return normalise_messages(raw), {"instruction", "input", "output", "system"}
    raise ValueError("not a conversation: expected 'messages' (OpenAI), 'instruction'/'output' "
                     "(Alpaca) or 'conversations' (ShareGPT)")


def transcript(messages: list[dict[str, str]]) -> str:
    """A plain rendering for signals and reading: "role: content" turns, blank-line separated."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def conversation_record(obj: Any, default_id: str, text_key: str = "text", where: str = "") -> Document:
    """A conversation record (any shape above) as a ``Document`` (the readers' parser for chat)."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    messages, used = messages_of(obj)
    doc_id, meta = record_id_and_meta(obj, default_id, tuple(used))
    return Document(doc_id, transcript(messages), {**meta, "messages": messages}, where=where)


def read_conversations(paths: str | Path | Iterable[str | Path], *, skip_bad: bool = False,
                       rejects=None) -> Iterator[Document]:
    """Conversations from JSONL(.gz/.zst) or parquet files or folders, with the readers' per-line
    errors (or ``skip_bad``: the rejects file)."""
    yield from read_documents(paths, skip_bad=skip_bad, rejects=rejects, parse=conversation_record)


def template_source(tokenizer, template: str | None) -> str:
    """The Jinja source to render with: a named template, a .jinja file, or the tokenizer's own."""
    if template is None:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(f"the tokenizer has no chat template; name one with --chat-template "
                            f"({', '.join(TEMPLATES)}) or give a .jinja file")
        return tokenizer.chat_template
    if template in TEMPLATES:
        return TEMPLATES[template]
    path = Path(template)
    if path.suffix == ".jinja" and path.is_file():
        return path.read_text(encoding="utf-8")
    raise UserError(f"--chat-template {template!r}: not a named template ({', '.join(TEMPLATES)}) "
                    "nor a .jinja file")


class ChatEncoder:
    """Renders conversations with a chat template into token ids and an assistant-token mask."""

    def __init__(self, tokenizer, template: str | None = None):
        self.tokenizer = tokenizer
        self.source = template_source(tokenizer, template)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=self.source, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def spans(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """(the rendered conversation, the character spans of the assistant's turns)."""
        text = self.render(messages)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = self.render(messages[:i], add_generation_prompt=True)
            upto = self.render(messages[: i + 1])
            if not (upto.startswith(prompt) and text.startswith(upto)):
                raise UserError("the chat template renders a conversation differently from its "
                                "beginning (it rewrites earlier turns), so the assistant's tokens "
                                "cannot be found; use --chat-template chatml or alpaca")
            spans.append((len(prompt), len(upto)))
        return text, spans

    def encode(self, messages: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        """(int64 token ids, uint8 mask: 1 on tokens that start inside an assistant turn)."""
        text, spans = self.spans(messages)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], np.int64)
        starts = np.asarray([a for a, _ in enc["offset_mapping"]], np.int64)
        mask = np.zeros(len(ids), np.uint8)
        for a, b in spans:
            mask[(starts >= a) & (starts < b)] = 1
        return ids, mask
