"""``llm4all serve MODEL``: an OpenAI-compatible server for a model, run by an existing engine.

Prepares the file the engine reads (``prepare.py``: a GGUF for llama.cpp, an HF directory for
vLLM), starts the engine (``engines.py``) with its output in a log file, waits until it
answers ``/health``, prints the URL and the raw engine command, and stops the engine on
ctrl-C (``process.py``). Any OpenAI client then talks to it::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="none")
    client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "Hi"}])
"""

from __future__ import annotations

import shlex
import signal
import time
from pathlib import Path
from typing import Literal

from llm4all.catalog import ENGINES
from llm4all.errors import UserError
from llm4all.serve.engines import EngineOptions
from llm4all.serve.prepare import gguf_for, hf_for, serve_cache
from llm4all.serve.process import check_port_free, running, url_of


def alias_of(model: str) -> str:
    """The model name clients use: a registered name as it is, a path's last component."""
    path = Path(model)
    name = path.stem if path.suffix == ".gguf" else path.name
    return name or "model"


def main(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    engine: Literal["llama.cpp", "vllm"] = "llama.cpp",
    parallel: int = 4,
    context: int = 2048,
    threads: int | None = None,
    type: Literal["q8_0", "f16", "f32", "q4_0", "q4_k_m", "q5_k_m", "q6_k"] = "q8_0",
    name: str | None = None,
    log: Path | None = None,
    timeout: float = 300.0,
    kv_dtype: Literal["auto", "fp32", "fp16", "bf16", "int8", "int4", "fp8"] = "auto",
) -> dict:
    """Serve MODEL over an OpenAI-compatible HTTP API until ctrl-C (llama.cpp on CPU, vLLM on GPU).

    Args:
        model: a .gguf file, a registered name (llm4all ls models), an HF model directory or a
            packed checkpoint (llm4all compress); anything but a .gguf is exported once (cached).
        host: address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
        port: TCP port.
        engine: llama.cpp (llama-server, CPU, GGUF) or vllm (GPU, HF/compressed-tensors dir).
        parallel: requests decoded together (llama.cpp slots with continuous batching, vLLM max-num-seqs).
        context: context tokens per request, prompt and reply together.
        threads: CPU threads for llama.cpp (default: its own choice, the physical cores).
        type: GGUF type when an HF directory is exported for llama.cpp.
        name: model name for clients and /v1/models (default: the model's name).
        log: file receiving the engine's output (default: $LLM4ALL_CACHE/serve/logs/NAME-PORT.log).
        timeout: seconds to wait for the engine to load the model and answer.
        kv_dtype: KV cache dtype: auto (the engine's default), for llama.cpp fp32, fp16, bf16,
            int8 (q8_0) or int4 (q4_0, with flash attention); for vLLM fp8.
    """
    for flag, value in (("--parallel", parallel), ("--context", context), ("--port", port)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be a positive integer")
    chosen = ENGINES.get(engine)
    chosen.launcher()  # fail before exporting anything when the engine is not installed
    options = EngineOptions(host=host, port=port, parallel=parallel, context=context, threads=threads,
                            alias=name or alias_of(model), kv_dtype=kv_dtype)
    chosen.command(Path(model), options)  # an option the engine refuses fails before any export
    check_port_free(host, port)
    path = gguf_for(model, type) if chosen.model_format == "gguf" else hf_for(model)
    command = chosen.command(path, options)
    log = log or serve_cache() / "logs" / f"{options.alias}-{port}.log"
    url = url_of(host, port)
    print(f"starting {engine}: {shlex.join(command)}\n(output → {log})", flush=True)
    start = time.perf_counter()
    # `kill PID` (SIGTERM) stops the engine as ctrl-C does
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with running(command, url, log, timeout=timeout) as process:
            print(f"serving {options.alias} at {url}/v1 (OpenAI API; {parallel} parallel requests, "
                  f"{context} tokens each), ready in {time.perf_counter() - start:.1f} s; ctrl-C stops it",
                  flush=True)
            try:
                status = process.wait()
            except KeyboardInterrupt:
                print(f"\nstopping {engine} (pid {process.pid})", flush=True)
                status = None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if status is not None:
        raise UserError(f"{engine} stopped by itself with status {status}; its log: {log}")
    return {"url": url, "model": str(path), "command": command, "log": str(log)}


def interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
