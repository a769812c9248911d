"""``llm4all generate MODEL PROMPT``: text from a model, streamed as it is produced.

One decoding loop (``stream``) for every kind of model (``backends.py``): feed the prompt
once, then one token per forward pass with the KV cache; choose each token with
``sampling.sample`` (greedy, or temperature / top-k / top-p from a seeded generator); turn
tokens into text with an incremental detokenizer that never shows half a UTF-8 character;
stop at an end-of-sequence token, a stop string (caught even when split over several tokens,
never shown) or ``max_new_tokens``. A prompt whose beginning is already in the backend's KV
cache (a chat's previous turns) is not fed again.

Library use::

    from llm4all.serve.backends import open_lm
    from llm4all.serve.generate import generate, stream

    lm = open_lm("smollm2-135m")
    result = generate(lm, "The capital of France is", max_new_tokens=20, on_text=print)
    result.token_ids, result.text, result.stop_reason, result.tokens_per_second
    for piece in (s := stream(lm, "Once upon a time")):  # or iterate
        ...
    s.result
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from llm4all.errors import UserError
from llm4all.serve.backends import Engine, open_lm
from llm4all.serve.detokenize import StopStrings
from llm4all.serve.sampling import Sampling, new_generator, sample

StopReason = Literal["eos", "stop", "length"]
KVDtype = Literal["auto", "fp32", "fp16", "bf16", "int8", "int4"]


@dataclass
class Generation:
    """What one call produced."""

    token_ids: list[int]
    """every token sampled, including the EOS or the tokens that completed a stop string."""
    text: str
    """the text shown: the new tokens' text, cut before a stop string, without special tokens."""
    stop_reason: StopReason
    """eos (an end-of-sequence token), stop (a stop string) or length (max_new_tokens/context)."""
    prompt_tokens: int
    """tokens in the prompt."""
    reused_tokens: int
    """prompt tokens whose keys and values were already in the KV cache (not fed again)."""
    prefill_seconds: float
    """from the call to the first new token (feeding the prompt; time to first token)."""
    decode_seconds: float
    """from the first new token to the last."""

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: tokens after the first per second (0 with fewer than two tokens)."""
        n = len(self.token_ids) - 1
        return n / self.decode_seconds if n > 0 and self.decode_seconds > 0 else 0.0


class TextStream:
    """Iterate over text pieces as they are produced; ``result`` is set once iteration ends."""

    def __init__(self, pieces: Generator[str, None, Generation]):
        self.pieces = pieces
        self.result: Generation | None = None

    def __iter__(self) -> Iterator[str]:
        self.result = yield from self.pieces


def prompt_ids(lm, prompt: str | Sequence[int], chat: bool = False, system: str = "") -> list[int]:
    """Token ids for ``prompt``: raw text, text as one user turn of the chat template, or ids."""
    if not isinstance(prompt, str):
        return list(prompt)
    if not chat:
        return lm.encode(prompt)
    messages = [{"role": "system", "content": system}] if system else []
    return lm.chat_ids([*messages, {"role": "user", "content": prompt}])


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _decode(lm, ids: list[int], max_new_tokens: int, sampling: Sampling,
            stop: Sequence[str]) -> Generator[str, None, Generation]:
    """The decoding loop: yields text pieces, returns the ``Generation``."""
    if not ids:
        raise UserError("the prompt is empty: give at least one token of text")
    if lm.context_length and len(ids) >= lm.context_length:
        raise UserError(f"the prompt has {len(ids)} tokens; the model's context is {lm.context_length}")
    if lm.context_length:
        max_new_tokens = min(max_new_tokens, lm.context_length - len(ids))
    start = time.perf_counter()
    reused = min(common_prefix(lm.cached, ids), len(ids) - 1)  # at least one token to feed
    lm.crop(reused)
    generator = None if sampling.greedy else new_generator(sampling, lm.device)
    detokenizer, stops = lm.detokenizer(ids), StopStrings(stop)
    tokens: list[int] = []
    pieces: list[str] = []
    feed, first, reason = ids[reused:], start, "length"
    while len(tokens) < max_new_tokens:
        token = sample(lm.forward(feed), sampling, generator)
        if not tokens:
            first = time.perf_counter()
        tokens.append(token)
        if token in lm.eos_ids:
            reason = "eos"
            break
        if piece := stops.push(detokenizer.push(token)):
            pieces.append(piece)
            yield piece
        if stops.stopped:
            reason = "stop"
            break
        feed = [token]
    end = time.perf_counter()
    if reason != "stop":  # what the detokenizer and the stop strings still hold is shown now
        tail = stops.push(detokenizer.flush())
        tail += "" if stops.stopped else stops.flush()
        reason = "stop" if stops.stopped else reason
        if tail:
            pieces.append(tail)
            yield tail
    return Generation(tokens, "".join(pieces), reason, len(ids), reused,
                      prefill_seconds=first - start, decode_seconds=end - first)


def stream(lm, prompt: str | Sequence[int], *, max_new_tokens: int = 256,
           sampling: Sampling | None = None, stop: Sequence[str] = (), chat: bool = False,
           system: str = "") -> TextStream:
    """Iterate over the new text of ``prompt``'s continuation; ``.result`` when done.

    Args:
        lm: a backend from ``backends.open_lm``.
        prompt: text (or token ids, used as they are).
        max_new_tokens: at most this many new tokens.
        sampling: greedy (the default) or temperature / top-k / top-p with a seed.
        stop: strings that end the text (not included in it).
        chat: apply the chat template to ``prompt`` as one user turn.
        system: a system message (with ``chat``).
    """
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    ids = prompt_ids(lm, prompt, chat, system)
    return TextStream(_decode(lm, ids, max_new_tokens, sampling or Sampling(), stop))


def generate(lm, prompt: str | Sequence[int], *, on_text: Callable[[str], object] | None = None,
             **options) -> Generation:
    """Run ``stream`` to the end, calling ``on_text(piece)`` for each piece; return the result."""
    text_stream = stream(lm, prompt, **options)
    for piece in text_stream:
        if on_text is not None:
            on_text(piece)
    assert text_stream.result is not None
    return text_stream.result


def open_for_cli(model: str, engine: Engine, device: str, dtype: str, threads: int, kv_dtype: str = "auto"):
    """``open_lm`` with ``threads`` (0: the cores other processes leave free) for both engines."""
    import torch

    from llm4all.threads import free_cores

    threads = free_cores(threads)
    torch.set_num_threads(threads)
    return open_lm(model, engine=engine, device=device, dtype=dtype, threads=threads, kv_dtype=kv_dtype)


def main(model: str, prompt: str, *, max_new_tokens: int = 256, temperature: float = 0.0,
         top_p: float = 1.0, top_k: int = 0, seed: int = 0, stop: list[str] | None = None,
         chat: bool = False, system: str = "", engine: Engine = "auto", device: str = "auto",
         dtype: str = "auto", threads: int = 0, kv_dtype: KVDtype = "auto") -> Generation:
    """Generate text from a model, streaming it to stdout as it is produced.

    Registered names, HF directories and packed checkpoints run through transformers (packed
    int4/int8 layers through llm4all's CPU kernels); .gguf files through llama.cpp in process.
    Speed and the stop reason go to stderr.

    Args:
        model: a registered name (smollm2-135m), an HF directory, a packed checkpoint or a .gguf file.
        prompt: the text to continue ('-' reads it from stdin).
        max_new_tokens: at most this many new tokens.
        temperature: 0 is greedy decoding; otherwise the logits are divided by it and a token is drawn.
        top_p: nucleus sampling: keep the most likely tokens whose probability reaches top_p (1: off).
        top_k: keep only the k most likely tokens (0: off).
        seed: seed of the sampler (the same seed gives the same text).
        stop: one or more strings that end the output (the output ends before them).
        chat: apply the tokenizer's chat template to PROMPT as one user turn.
        system: a system message for --chat.
        engine: auto (llama.cpp for .gguf files, torch otherwise), torch or llama.cpp.
        device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N.
        dtype: auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16 or float16.
        threads: CPU threads (0: the cores that other processes leave free).
        kv_dtype: KV cache dtype: auto (the model's), fp32, fp16, bf16, or int8 / int4 (quantised
            the KIVI way in torch; llama.cpp's q8_0 / q4_0 cache types for a .gguf).
    """
    if prompt == "-":
        prompt = sys.stdin.read()
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    if system and not chat:
        raise UserError("--system needs --chat (a system message is part of the chat template)")
    lm = open_for_cli(model, engine, device, dtype, threads, kv_dtype)
    result = generate(lm, prompt, max_new_tokens=max_new_tokens, sampling=sampling, stop=stop or (),
                      chat=chat, system=system, on_text=lambda t: print(t, end="", flush=True))
    print(flush=True)
    print(f"[{lm.engine}: {result.prompt_tokens} prompt tokens in {result.prefill_seconds:.2f} s, "
          f"{len(result.token_ids)} new tokens at {result.tokens_per_second:.1f} tokens/s, "
          f"stop: {result.stop_reason}]", file=sys.stderr)
    return result
