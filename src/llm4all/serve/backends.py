"""The language models ``generate`` and ``chat`` run in process, behind one small protocol.

A backend holds a model, its tokenizer and its KV cache, and answers five questions:
``encode(text)``, ``chat_ids(messages)``, ``detokenizer(context)``, ``forward(ids)`` (feed
tokens after the ``cached`` ones, return the next-token logits) and ``crop(n)`` (forget every
cached token after the first n). The decoding loop in ``generate.py`` is the same for all:

- ``TorchLM``: a transformers model (an HF directory, a registered name converted once, or a
  packed checkpoint from ``llm4all compress``, whose int4/int8 layers run llm4all's CPU
  kernels), with a ``transformers.DynamicCache`` (the ``cache=`` argument, formerly
  ``past_key_values``), or with ``--kv-dtype`` a cache in another float dtype or quantised
  KIVI-style to int8 / int4 (``models/kvcache.py``).
- ``LlamaCppLM``: a GGUF file run by llama.cpp in process (llama-cpp-python); its KV cache is
  llama.cpp's, cut back by moving ``n_tokens`` (its next ``eval`` drops the cells past it);
  ``--kv-dtype`` picks its cache types (``models.llamacpp.LLAMA_CPP_KV``: int8 is q8_0, int4
  is q4_0, llama.cpp's own formats).
"""

from __future__ import annotations

import atexit
import os
import weakref
from pathlib import Path
from typing import Literal

import torch

from llm4all.errors import UserError
from llm4all.models.device import default_dtype, model_device, resolve_device
from llm4all.serve.detokenize import ByteDetokenizer, TokenDetokenizer

Engine = Literal["auto", "torch", "llama.cpp"]


class TorchLM:
    """A transformers causal LM with its tokenizer and a KV cache (``DynamicCache``)."""

    engine = "torch"

    def __init__(self, model, tokenizer, kv_dtype: str = "auto"):
        from llm4all.models.kvcache import kv_cache

        self.model, self.tokenizer = model, tokenizer
        self.device = model_device(model)
        self.cache = kv_cache(model, kv_dtype)
        self.cached: list[int] = []  # the token ids whose keys and values are in the cache
        self.context_length = getattr(model.config, "max_position_embeddings", None)
        if getattr(self.cache, "n_sink", None) is not None:  # positions within the cache: no limit
            self.context_length = None
        self.eos_ids = _eos_ids(model, tokenizer)

    def encode(self, text: str) -> list[int]:
        """Token ids of a raw prompt, with the special tokens the tokenizer adds (BOS, if any)."""
        return list(self.tokenizer(text)["input_ids"])

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """The chat template applied to ``messages``, ending with the assistant's turn opening."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise UserError(f"{self.tokenizer.name_or_path}: the tokenizer has no chat template; "
                            "drop --chat (or use an instruction-tuned model that ships one)")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def detokenizer(self, context: list[int]) -> TokenDetokenizer:
        return TokenDetokenizer(self.tokenizer, context)

    def forward(self, ids: list[int]) -> torch.Tensor:
        """Feed ``ids`` after the cached tokens; return the logits (V,) of the next token."""
        try:
            with torch.no_grad():  # not inference_mode: packed layers cache tensors reused outside it
                out = self.model(input_ids=torch.tensor([ids], device=self.device),
                                 cache=self.cache, use_cache=True, logits_to_keep=1)
        except BaseException:  # ctrl-C inside the forward pass: some layers cached the new keys
            self.crop(len(self.cached))
            raise
        self.cached += ids
        self._bound()
        return out.logits[0, -1].float()

    def _bound(self) -> None:
        """A model with attention sinks evicts past its sinks + window; once a bounded cache has
        forgotten tokens no prefix of ``cached`` is reusable (the next prompt is fed whole)."""
        from llm4all.models.kvcache import dropped
        from llm4all.models.window import evict_all

        if getattr(self.cache, "n_sink", None) is not None:
            evict_all(self.cache)
        if dropped(self.cache):
            self.cached = [-1] * len(self.cached)

    def close(self) -> None:
        """Nothing to free beyond what Python's garbage collection does (llama.cpp's has one)."""

    def crop(self, n: int) -> None:
        """Keep the first ``n`` cached tokens in every layer.

        Layer by layer and by slicing, not ``DynamicCache.crop``: that drops the same number of
        tokens from every layer, and after ctrl-C in the middle of a forward pass the first
        layers hold one more token than the last ones (or a layer its keys but not its values).
        """
        from llm4all.models.kvcache import keep_first

        try:
            keep_first(self.cache, n)
        except RuntimeError:  # a bounded cache that forgot tokens: start again from nothing
            keep_first(self.cache, 0)
            n = 0
        del self.cached[n:]


class LlamaCppLM:
    """A GGUF model run by llama.cpp in process (llama-cpp-python), logits read back each step.

    Args:
        path: the .gguf file.
        context: KV cache size in tokens (0: the model's training context).
        threads: CPU threads (0: the cores other processes leave free). llama.cpp's threads
            spin while they wait for each other: on this 2-core machine with other work running,
            two threads decoded SmolLM2 at 3.2 tokens/s and one at 69.
    """

    engine = "llama.cpp"

    def __init__(self, path: Path, context: int = 0, threads: int = 0, kv_dtype: str = "auto"):
        try:
            import llama_cpp
        except ImportError:
            raise UserError(f"{path}: running a GGUF file needs llama-cpp-python; install it with "
                            "`make llama-cpp` (or pass --engine torch to run it through transformers)"
                            ) from None
        from llm4all.threads import free_cores

        self.lib = llama_cpp
        threads = free_cores(threads)
        from llm4all.models.llamacpp import llama_kv_options

        kv = llama_kv_options(kv_dtype)
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_threads=threads,
                                   n_threads_batch=threads, logits_all=False, verbose=False, **kv)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = self.llm.n_vocab()
        self.context_length = self.llm.n_ctx()
        self.eos_ids = {t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t)}
        self.device = torch.device("cpu")
        self.cached: list[int] = []
        self.name = str(path)
        # free llama.cpp's model before interpreter shutdown: its __del__ fails once the
        # ctypes module globals are gone (TypeError: 'NoneType' object is not callable)
        atexit.register(_close_if_alive, weakref.ref(self.llm))

    def close(self) -> None:
        """Free the model and its KV cache now (also done at exit)."""
        self.llm.close()

    def encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=True, special=True)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise UserError(f"{self.name}: the GGUF has no tokenizer.chat_template; drop --chat")
        special = {f"{k}_token": self._piece(getattr(self.llm, f"token_{k}")()) for k in ("bos", "eos")}
        text = render_chat_template(template, messages, **special)
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode(errors="replace") if token >= 0 else ""

    def detokenizer(self, context: list[int]) -> ByteDetokenizer:
        return ByteDetokenizer(lambda t: self.llm.detokenize([t]))

    def forward(self, ids: list[int]) -> torch.Tensor:
        import numpy as np

        self.llm.n_tokens = len(self.cached)  # eval() first drops the KV cells past n_tokens
        self.llm.eval(ids)
        self.cached += ids
        logits = self.lib.llama_get_logits_ith(self.llm.ctx, -1)  # float* (V,) of the last token
        return torch.from_numpy(np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).copy())

    def crop(self, n: int) -> None:
        del self.cached[n:]
        self.llm.n_tokens = min(self.llm.n_tokens, n)


def _close_if_alive(ref: weakref.ref) -> None:
    if (llm := ref()) is not None:
        llm.close()


def render_chat_template(template: str, messages: list[dict], **extra) -> str:
    """Render a Jinja chat template as transformers does (sandboxed; trim/lstrip blocks)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise UserError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, **extra)


def _eos_ids(model, tokenizer) -> set[int]:
    """Every token that ends generation: the generation config's EOS ids and the tokenizer's."""
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config):
        eos = getattr(source, "eos_token_id", None)
        ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def open_lm(model: str, *, engine: Engine = "auto", device: str = "auto", dtype: str = "auto",
            context: int = 0, threads: int = 0, kv_dtype: str = "auto"):
    """A backend for ``model``: llama.cpp for a .gguf file (``auto``), transformers otherwise.

    Args:
        model: a registered name, an HF directory, a packed checkpoint or a .gguf file.
        engine: auto (llama.cpp for .gguf files, torch otherwise), torch or llama.cpp.
        device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N (torch engine).
        dtype: auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16 or float16 (torch engine).
        context: llama.cpp's KV cache size in tokens (0: the model's training context).
        threads: llama.cpp's CPU threads (0: the cores other processes leave free); torch's
            are torch's own setting.
        kv_dtype: the KV cache's dtype: auto (the model's), fp32, fp16, bf16, int8 or int4.
    """
    from llm4all.models.load import load

    if engine not in ("auto", "torch", "llama.cpp"):
        raise UserError(f"--engine {engine!r}; valid: auto, torch, llama.cpp")
    gguf = _gguf_source(model)
    if engine == "llama.cpp" or (engine == "auto" and str(model).endswith(".gguf")):
        if gguf is None:
            raise UserError(f"--engine llama.cpp runs .gguf files; {model!r} is not one "
                            "(export it with `llm4all export --format gguf` first)")
        if device not in ("auto", "cpu"):
            raise UserError(f"--device {device}: llm4all runs llama.cpp on the CPU; use --device cpu")
        if dtype != "auto":
            raise UserError(f"--dtype {dtype}: a GGUF runs in its own tensor types; drop --dtype "
                            "(or use --engine torch)")
        return LlamaCppLM(gguf, context=context, threads=threads, kv_dtype=kv_dtype)
    torch_device = resolve_device(device)
    if dtype == "auto":
        dtype = default_dtype(torch_device)
    net, tokenizer = load(model, dtype=dtype, device=str(torch_device))
    return TorchLM(net, tokenizer, kv_dtype)


def _gguf_source(model: str) -> Path | None:
    """The GGUF file behind ``model``: the file itself, or a registered name's source file."""
    from llm4all.catalog import MODELS

    if str(model).endswith(".gguf"):
        if not os.path.isfile(model):
            raise UserError(f"{model}: no such GGUF file")
        return Path(model)
    if str(model) in MODELS.names():
        source = Path(MODELS.get(str(model))())
        return source if source.suffix == ".gguf" else None
    return None
