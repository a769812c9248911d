"""The serving engines ``llm4all serve`` launches: llama.cpp's llama-server (CPU) and vLLM (GPU).

llm4all writes no server of its own (DESIGN.md, "Scale-out belongs to existing engines"): an
engine here is the command line of an existing OpenAI-compatible server and the model format
it reads. Both serve ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models`` and
answer ``GET /health`` with 200 once the model is loaded.

* ``llama.cpp`` — ``llama-server`` (built by ``make install``, see scripts/llama-cpp.sh) on a
  GGUF file: ``--parallel`` slots decoded together with continuous batching (a new request
  joins the running batch at the next step, Yu et al. 2022, "Orca"), ``--ctx-size`` split
  evenly over the slots, the chat template from the GGUF's ``tokenizer.chat_template`` rendered
  with Jinja (``--jinja``).
* ``vllm`` — ``vllm serve`` on a Hugging Face or compressed-tensors directory (PagedAttention,
  Kwon et al. 2023), for a CUDA GPU; ``--max-num-seqs`` concurrent sequences, the chat
  template from the tokenizer's config.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from llm4all.catalog import ENGINES
from llm4all.errors import UserError
from llm4all.models.llamacpp import LLAMA_CPP_KV


@dataclass(frozen=True)
class EngineOptions:
    """What every engine is told; the CLI flags of ``llm4all serve``."""

    host: str = "127.0.0.1"  # address to listen on
    port: int = 8080  # TCP port
    parallel: int = 4  # requests decoded together (llama.cpp slots, vLLM max-num-seqs)
    context: int = 2048  # tokens of context per request (prompt + reply)
    threads: int | None = None  # CPU threads (llama.cpp); None: the engine's default
    alias: str = "model"  # the model name clients send and /v1/models lists
    kv_dtype: str = "auto"  # KV cache dtype (auto: the engine's default)


@ENGINES.register("llama.cpp")
class LlamaServer:
    """llama.cpp's llama-server: OpenAI-compatible, parallel slots, continuous batching (CPU, GGUF)."""

    model_format = "gguf"

    @staticmethod
    def launcher() -> list[str]:
        """The program (a UserError naming `make install` when llama.cpp is missing)."""
        from llm4all.models.llamacpp import tool

        return [str(tool("llama-server"))]

    @staticmethod
    def command(model: Path, options: EngineOptions) -> list[str]:
        command = [*LlamaServer.launcher(), "--model", str(model),
                   "--host", options.host, "--port", str(options.port),
                   "--parallel", str(options.parallel), "--cont-batching",
                   # the KV cache holds every slot's context: ctx-size is split evenly over slots
                   "--ctx-size", str(options.context * options.parallel),
                   "--alias", options.alias, "--jinja", "--no-webui"]
        if options.threads:
            command += ["--threads", str(options.threads), "--threads-batch", str(options.threads)]
        if options.kv_dtype != "auto":
            if options.kv_dtype not in LLAMA_CPP_KV:
                raise UserError(f"--kv-dtype {options.kv_dtype}: llama.cpp's caches are "
                                f"{', '.join(LLAMA_CPP_KV)} (int8 = q8_0, int4 = q4_0)")
            kv = LLAMA_CPP_KV[options.kv_dtype]  # a quantised V cache needs flash attention
            command += ["--cache-type-k", kv, "--cache-type-v", kv, "--flash-attn", "on"]
        return command


@ENGINES.register("vllm", requires=("vllm",))
class VLLM:
    """vLLM's OpenAI-compatible server: PagedAttention, continuous batching (CUDA GPU, HF dir)."""

    model_format = "hf"

    @staticmethod
    def launcher() -> list[str]:
        """``vllm serve`` (its CLI on PATH, else its module); a UserError when vLLM is missing."""
        if shutil.which("vllm"):
            return ["vllm", "serve"]
        if importlib.util.find_spec("vllm") is not None:
            return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]
        raise UserError("--engine vllm: vLLM is not installed here; it serves on a CUDA GPU: "
                        "`pip install vllm` on that machine, or use --engine llama.cpp on a CPU")

    @staticmethod
    def command(model: Path, options: EngineOptions) -> list[str]:
        command = [*VLLM.launcher(), str(model), "--host", options.host, "--port", str(options.port),
                   "--max-num-seqs", str(options.parallel), "--max-model-len", str(options.context),
                   "--served-model-name", options.alias]
        if options.kv_dtype != "auto":
            if options.kv_dtype != "fp8":  # vLLM quantises its paged KV cache to FP8 only
                raise UserError(f"--kv-dtype {options.kv_dtype}: vLLM's KV cache is auto (the model's "
                                "dtype) or fp8; use one of those with --engine vllm")
            command += ["--kv-cache-dtype", "fp8"]
        return command
