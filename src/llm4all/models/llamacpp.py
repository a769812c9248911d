"""llama.cpp as a runtime: its own programs (llama-server, llama-quantize, llama-imatrix, ...)
and its Python binding (``open_llama``: a GGUF loaded in process through llama-cpp-python).

``make install`` builds llama.cpp once per machine (``scripts/llama-cpp.sh``: the llama.cpp
source that llama-cpp-python's sdist vendors, compiled into ``~/.cache/llm4all/llama.cpp/
VERSION-HASH/{bin,lib}``) and links its programs into the venv's ``bin/``. :func:`tool` finds
a program there, even when the venv is not activated (``sys.prefix/bin``), then in
``$LLM4ALL_LLAMA_CPP_BIN`` and on ``PATH``; :func:`run_tool` runs one and turns a failure into a
``UserError`` that quotes the program's last words.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from llm4all.errors import UserError

#: the programs `make install` links into the venv (see scripts/llama-cpp.sh)
TOOLS = ("llama-server", "llama-quantize", "llama-imatrix", "llama-perplexity", "llama-bench",
         "llama-completion", "llama-tokenize")


def tool(name: str) -> Path:
    """The path of llama.cpp program ``name``; a UserError naming `make install` when missing."""
    if name not in TOOLS:
        raise ValueError(f"unknown llama.cpp program {name!r}; known: {', '.join(TOOLS)}")
    places = [Path(sys.prefix) / "bin", Path(sys.executable).parent]
    if os.environ.get("LLM4ALL_LLAMA_CPP_BIN"):
        places.insert(0, Path(os.environ["LLM4ALL_LLAMA_CPP_BIN"]))
    for place in places:
        if (place / name).is_file() and os.access(place / name, os.X_OK):
            return place / name
    found = shutil.which(name)
    if found:
        return Path(found)
    raise UserError(f"{name} (llama.cpp) not found in {places[-1]} or on PATH; `make install` builds "
                    "llama.cpp once (5-25 min on 2 cores) and links its programs into the venv")


def run_tool(name: str, args: list[str | Path], *, log: Path | None = None,
             timeout: float | None = None) -> str:
    """Run llama.cpp program ``name`` with ``args``; its combined output (also appended to ``log``).

    A non-zero exit raises a UserError with the command and the last line the program printed.
    """
    command = [str(tool(name)), *map(str, args)]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", timeout=timeout, check=False)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            f.write(f"$ {' '.join(command)}\n{done.stdout}\n")
    if done.returncode != 0:
        last = [line for line in done.stdout.splitlines() if line.strip()][-1:] or ["(no output)"]
        where = f" (full output: {log})" if log is not None else ""
        raise UserError(f"{name} failed with exit status {done.returncode}: {last[0].strip()}{where}")
    return done.stdout


#: ``--kv-dtype`` -> llama.cpp's KV cache type (``--cache-type-k/-v`` of its tools). Its q8_0 and
#: q4_0 are its own blocks of 32 values of one token sharing an fp16 scale, not KIVI's
#: per-channel keys; a quantised V cache needs flash attention.
LLAMA_CPP_KV = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "q8_0", "int4": "q4_0"}


def llama_kv_options(kv_dtype: str = "auto") -> dict:
    """``llama_cpp.Llama`` keyword arguments for a KV cache in ``kv_dtype`` (auto: none)."""
    if kv_dtype in ("", "auto"):
        return {}
    if kv_dtype not in LLAMA_CPP_KV:
        raise UserError(f"--kv-dtype {kv_dtype!r}; llama.cpp's are auto, {', '.join(LLAMA_CPP_KV)}")
    import llama_cpp

    ggml_type = getattr(llama_cpp, f"GGML_TYPE_{LLAMA_CPP_KV[kv_dtype].upper()}")
    return {"type_k": ggml_type, "type_v": ggml_type, "flash_attn": True}


def open_llama(path: str | Path, n_ctx: int = 512, threads: int | None = None, logits_all: bool = True,
               kv_dtype: str = "auto"):
    """A ``llama_cpp.Llama`` for ``path`` (keeping the logits of every position by default)."""
    try:
        from llama_cpp import Llama
    except ImportError as e:
        raise UserError("llama.cpp check needs llama-cpp-python: `make install` builds it") from e
    if not Path(path).is_file():
        raise UserError(f"{path}: no such GGUF file")
    try:
        return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=logits_all, verbose=False,
                     n_threads=threads, n_batch=n_ctx, **llama_kv_options(kv_dtype))
    except ValueError as e:  # llama.cpp could not read it: not a GGUF, truncated, unknown architecture
        raise UserError(f"{path}: llama.cpp cannot load this file ({e}); is it a complete GGUF?") from None
