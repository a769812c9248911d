"""`llm4all serve` without a running server: engine command lines, model preparation, errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from llm4all.catalog import ENGINES
from llm4all.errors import UserError
from llm4all.models.llamacpp import tool
from llm4all.serve.command import alias_of
from llm4all.serve.command import main as serve
from llm4all.serve.engines import EngineOptions, LlamaServer
from llm4all.serve.prepare import gguf_for, hf_for, serve_cache
from llm4all.serve.process import check_port_free, url_of
from tinybpe import build_bpe_llama


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory) -> Path:
    return build_bpe_llama(tmp_path_factory.mktemp("serve") / "tiny-bpe")


def test_llama_server_command_line():
    options = EngineOptions(host="127.0.0.1", port=8123, parallel=16, context=512, threads=2, alias="tiny")
    command = LlamaServer.command(Path("/models/tiny.gguf"), options)
    assert command[0] == str(tool("llama-server"))

    def value(flag: str) -> str:
        return command[command.index(flag) + 1]

    assert value("--model") == "/models/tiny.gguf" and value("--port") == "8123"
    assert value("--parallel") == "16" and value("--ctx-size") == str(16 * 512)  # 512 per slot
    assert value("--threads") == "2" and value("--alias") == "tiny"
    assert "--cont-batching" in command and "--jinja" in command


def test_vllm_command_line(monkeypatch):
    vllm = ENGINES.get("vllm")
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/local/bin/{name}" if name == "vllm" else None)
    options = EngineOptions(host="0.0.0.0", port=9000, parallel=32, context=4096, alias="student")
    assert vllm.command(Path("/runs/q/export"), options) == [
        "vllm", "serve", "/runs/q/export", "--host", "0.0.0.0", "--port", "9000", "--max-num-seqs", "32",
        "--max-model-len", "4096", "--served-model-name", "student"]
    assert vllm.model_format == "hf" and ENGINES.get("llama.cpp").model_format == "gguf"


def test_kv_dtype_flags_of_each_engine(monkeypatch):
    options = EngineOptions(port=8125, kv_dtype="int4")
    command = LlamaServer.command(Path("/m.gguf"), options)
    value = lambda flag: command[command.index(flag) + 1]  # noqa: E731
    assert value("--cache-type-k") == value("--cache-type-v") == "q4_0"
    assert value("--flash-attn") == "on"  # llama.cpp's quantised V cache needs it
    assert "--cache-type-k" not in LlamaServer.command(Path("/m.gguf"), EngineOptions())
    with pytest.raises(UserError, match="llama.cpp's caches are fp32, fp16, bf16, int8, int4"):
        LlamaServer.command(Path("/m.gguf"), EngineOptions(kv_dtype="fp8"))
    vllm = ENGINES.get("vllm")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/vllm")
    assert vllm.command(Path("/d"), EngineOptions(kv_dtype="fp8"))[-2:] == ["--kv-cache-dtype", "fp8"]
    with pytest.raises(UserError, match="vLLM's KV cache is auto .* or fp8"):
        vllm.command(Path("/d"), EngineOptions(kv_dtype="int4"))


def test_vllm_missing_is_one_clear_error_before_any_export(monkeypatch, tmp_path, bpe_model):
    import importlib.util

    monkeypatch.setattr(shutil, "which", lambda name: None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real(name, *a))
    before = sorted(serve_cache().glob("*")) if serve_cache().exists() else []
    with pytest.raises(UserError, match=r"--engine vllm: vLLM is not installed.*pip install vllm"):
        serve(str(bpe_model), engine="vllm", port=8124)
    assert (sorted(serve_cache().glob("*")) if serve_cache().exists() else []) == before


def test_gguf_for_exports_an_hf_directory_once(bpe_model, tmp_path):
    import gguf

    first = gguf_for(bpe_model, "q8_0")
    assert first.parent == serve_cache() and first.suffix == ".gguf"
    reader = gguf.GGUFReader(first)
    assert reader.fields["tokenizer.chat_template"].contents().startswith("{% for m in messages %}")
    stamp = first.stat().st_mtime_ns
    assert gguf_for(bpe_model, "q8_0") == first and first.stat().st_mtime_ns == stamp  # cached
    assert gguf_for(bpe_model, "f16") != first  # another type, another file
    assert gguf_for(first) == first  # a .gguf is served as it is
    copy = tmp_path / "copy"
    shutil.copytree(bpe_model, copy)
    os.utime(copy / "model.safetensors", ns=(1, 1))  # a retrained model: exported again
    assert gguf_for(copy, "q8_0") != first


def test_gguf_for_a_packed_checkpoint_and_hf_for_vllm(bpe_model, tmp_path):
    from llm4all.compress.command import main as compress
    from llm4all.export.kquants import tensor_types

    packed = tmp_path / "int4"
    compress(str(bpe_model), out=packed, method={"name": "rtn", "bits": 4, "group_size": 32})
    gguf = gguf_for(packed)
    assert tensor_types(gguf).get("Q5_0", 0) > 0  # asymmetric int4 codes, written exactly as Q5_0
    assert tensor_types(gguf).get("Q8_0", 0) == 0  # nothing de-quantised and re-rounded
    hf = hf_for(packed)
    config = json.loads((hf / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"  # what vLLM serves
    assert hf_for(bpe_model) == bpe_model


def test_bad_input_names_the_flag(bpe_model, tmp_path):
    with pytest.raises(UserError, match="--parallel 0: must be a positive integer"):
        serve(str(bpe_model), parallel=0)
    with pytest.raises(UserError, match="unknown model 'no-such-model'"):
        serve("no-such-model", port=8125)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="llama.cpp serves .gguf files"):
        gguf_for(tmp_path / "notes.txt")


def test_busy_port_is_refused():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(UserError, match=f"--port {port}: cannot listen"):
            check_port_free("127.0.0.1", port)


def test_names_and_urls():
    assert alias_of("smollm2-135m") == "smollm2-135m" and alias_of("runs/q/model-q8_0.gguf") == "model-q8_0"
    assert alias_of("runs/q/compress_gptq4/") == "compress_gptq4"
    assert url_of("0.0.0.0", 80) == "http://127.0.0.1:80" and url_of("::1", 81) == "http://[::1]:81"
