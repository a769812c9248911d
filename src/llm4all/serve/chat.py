"""``llm4all chat MODEL``: a multi-turn conversation in the terminal.

Each turn renders the whole history (system message, every user and assistant message, the
new user message) with the model's chat template and generates the reply with
``generate.stream``. The template only ever appends to the text of the previous turn, so the
tokens of the previous prompt and reply are still in the backend's KV cache and are not fed
again: only the new user message and the template's few tokens around it are (``reused`` in
``ChatSession.turns``; docs/generate.md measures what this saves).

Commands: ``/reset`` forgets the conversation (the system message stays), ``/exit`` or
ctrl-D leaves. ctrl-C while a reply streams stops that reply and keeps the session: the
part of the reply already shown stays in the history (it is what the user read, and the next
question may refer to it); a reply stopped before any text was shown is dropped together with
its question. ctrl-C at the prompt does not leave (as in Python's REPL): /exit or ctrl-D does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import TextIO

from llm4all.errors import UserError
from llm4all.serve.backends import Engine
from llm4all.serve.generate import Generation, KVDtype, open_for_cli, stream
from llm4all.serve.sampling import Sampling

HELP = "/reset forgets the conversation, /exit or ctrl-D leaves, ctrl-C stops a reply"
PROMPT = "> "


class ChatSession:
    """The conversation: messages in chat-template form and the backend holding its KV cache.

    Args:
        lm: a backend from ``backends.open_lm``.
        system: the system message ("" for none: the template's default, if it has one).
        max_new_tokens: the longest reply in tokens.
        sampling: temperature / top-k / top-p; the seed is advanced by one each turn.
        reuse_cache: keep the KV cache of the unchanged history between turns.
    """

    def __init__(self, lm, *, system: str = "", max_new_tokens: int = 512,
                 sampling: Sampling | None = None, reuse_cache: bool = True):
        self.lm, self.system, self.max_new_tokens = lm, system, max_new_tokens
        self.sampling, self.reuse_cache = sampling or Sampling(), reuse_cache
        self.messages: list[dict] = []
        self.turns: list[Generation] = []  # every finished reply, for its token counts and timing
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def prompt(self, user: str) -> list[int]:
        """The token ids of the history plus ``user``, oldest exchanges dropped to fit the context.

        ``user`` joins the history only if it fits; a message too long for the context on its
        own raises UserError and leaves the history as it was.
        """
        messages = [*self.messages, {"role": "user", "content": user}]
        first = 1 if self.system else 0  # the system message is never dropped
        limit = self.lm.context_length
        while True:
            ids = self.lm.chat_ids(messages)
            if not limit or len(ids) + min(self.max_new_tokens, limit // 4) <= limit:
                self.messages = messages
                return ids
            if len(messages) - first <= 1:
                raise UserError(f"the message has {len(ids)} tokens with the template; "
                                f"the model's context is {limit}")
            del messages[first : first + 2]  # the oldest question and its answer

    def reply(self, user: str, output: TextIO) -> Generation | None:
        """Append ``user`` to the history and answer it, writing the reply to ``output`` as it comes.

        Returns the ``Generation``, or None when ctrl-C stopped the reply (KeyboardInterrupt
        raised anywhere in the loop, the output's ``write`` included).
        """
        ids = self.prompt(user)
        if not self.reuse_cache:
            self.lm.crop(0)
        sampling = dataclasses.replace(self.sampling, seed=self.sampling.seed + len(self.turns))
        shown: list[str] = []
        pieces = stream(self.lm, ids, max_new_tokens=self.max_new_tokens, sampling=sampling)
        try:
            for piece in pieces:
                output.write(piece)
                output.flush()
                shown.append(piece)
        except KeyboardInterrupt:
            pass  # pieces.result stays None: the reply was stopped
        result = pieces.result
        text = result.text if result is not None else "".join(shown)
        if text or result is not None:
            self.messages.append({"role": "assistant", "content": text})
        else:
            self.messages.pop()  # stopped before anything was shown: forget the question too
        if result is not None:
            self.turns.append(result)
        with contextlib.suppress(KeyboardInterrupt):
            output.write("\n" if result is not None else " [stopped]\n" if text else "[stopped]\n")
        return result


def read_line(stdin: TextIO, stdout: TextIO) -> str:
    """One line from the user (line editing through readline on a terminal); EOFError at the end."""
    if stdin is sys.stdin and stdout is sys.stdout and stdin.isatty():
        import readline  # noqa: F401  (gives input() history and line editing)

        return input(PROMPT)
    stdout.write(PROMPT)
    stdout.flush()
    line = stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def run(session: ChatSession, stdin: TextIO, stdout: TextIO) -> ChatSession:
    """The read-reply loop over ``stdin`` and ``stdout`` (a terminal, or any text streams)."""
    while True:
        try:
            line = read_line(stdin, stdout).strip()
        except EOFError:
            stdout.write("\n")
            break
        except KeyboardInterrupt:
            stdout.write("\n(/exit or ctrl-D leaves)\n")
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            session.reset()
            stdout.write("(conversation forgotten)\n")
            continue
        if line.startswith("/") and " " not in line:
            stdout.write(f"(unknown command {line}; {HELP})\n")
            continue
        if not line:
            continue
        try:
            session.reply(line, stdout)
        except UserError as e:
            stdout.write(f"error: {e}\n")
        except KeyboardInterrupt:  # ctrl-C while the prompt was being prepared
            if session.messages and session.messages[-1] == {"role": "user", "content": line}:
                session.messages.pop()
            stdout.write("[stopped]\n")
    stdout.flush()
    return session


def main(model: str, *, system: str = "", max_new_tokens: int = 512, temperature: float = 0.7,
         top_p: float = 0.9, top_k: int = 0, seed: int = 0, engine: Engine = "auto",
         device: str = "auto", dtype: str = "auto", threads: int = 0,
         kv_dtype: KVDtype = "auto") -> list[dict]:
    """Chat with a model in the terminal: /reset, /exit (or ctrl-D), ctrl-C stops a reply.

    The history is rendered with the model's chat template every turn; the KV cache of the
    unchanged part is kept, so a turn feeds only the new message. A reply stopped by ctrl-C
    stays in the history as far as it was shown.

    Args:
        model: a registered name (smollm2-135m), an HF directory, a packed checkpoint or a .gguf file.
        system: a system message (default: none, or the chat template's own).
        max_new_tokens: the longest reply in tokens.
        temperature: 0 is greedy decoding; otherwise the logits are divided by it and a token is drawn.
        top_p: nucleus sampling: keep the most likely tokens whose probability reaches top_p (1: off).
        top_k: keep only the k most likely tokens (0: off).
        seed: seed of the sampler for the first reply (the n-th reply uses seed + n - 1).
        engine: auto (llama.cpp for .gguf files, torch otherwise), torch or llama.cpp.
        device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N.
        dtype: auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16 or float16.
        threads: CPU threads (0: the cores that other processes leave free).
        kv_dtype: KV cache dtype: auto (the model's), fp32, fp16, bf16, or int8 / int4 (KIVI in
            torch; llama.cpp's q8_0 / q4_0 for a .gguf).
    """
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    lm = open_for_cli(model, engine, device, dtype, threads, kv_dtype)
    lm.chat_ids([{"role": "user", "content": "hi"}])  # no chat template: say so before the first prompt
    print(f"chatting with {model} ({lm.engine}); {HELP}", flush=True)
    session = ChatSession(lm, system=system, max_new_tokens=max_new_tokens, sampling=sampling)
    return run(session, sys.stdin, sys.stdout).messages
