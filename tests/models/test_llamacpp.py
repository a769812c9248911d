"""llama.cpp as installed by `make install`: its programs are found, run, and fail loudly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llm4all.errors import UserError
from llm4all.models import llamacpp as llamacpp_tools
from llm4all.models.llamacpp import TOOLS, run_tool, tool


@pytest.mark.parametrize("name", TOOLS)
def test_make_install_provides_every_llama_cpp_program(name):
    path = tool(name)
    assert path.is_file()
    # each runs, so it finds its shared libraries (lib/ beside bin/, through its RPATH)
    if name == "llama-server":
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
        assert "version: " in out.stdout + out.stderr
    elif name == "llama-quantize":
        out = subprocess.run([path], capture_output=True, text=True, timeout=60)
        assert "Q4_K_M" in out.stdout + out.stderr  # its usage lists the types


def test_the_python_binding_is_the_same_llama_cpp():
    import llama_cpp

    # the binding loads the libllama that make install built next to the programs
    lib = Path(llama_cpp.__file__).parent / "lib" / "libllama.so"
    assert lib.is_file()
    assert llama_cpp.llama_supports_mmap() in (True, False)


def hide_tools(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("LLM4ALL_LLAMA_CPP_BIN", raising=False)


def test_a_missing_program_names_make_install(monkeypatch, tmp_path):
    hide_tools(monkeypatch, tmp_path)
    with pytest.raises(UserError, match=r"llama-server \(llama.cpp\) not found.*make install"):
        tool("llama-server")
    with pytest.raises(ValueError, match="unknown llama.cpp program"):
        tool("llama-cli-that-does-not-exist")


def write_program(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_env_directory_and_failure_with_the_last_line(monkeypatch, tmp_path):
    hide_tools(monkeypatch, tmp_path)
    program = write_program(tmp_path / "bin", "llama-quantize",
                            'echo "loading"; echo "error: tensor blk.0 has 40 columns" >&2; exit 3')
    monkeypatch.setenv("LLM4ALL_LLAMA_CPP_BIN", str(tmp_path / "bin"))
    assert llamacpp_tools.tool("llama-quantize") == program
    log = tmp_path / "logs" / "q.log"
    with pytest.raises(UserError, match=r"exit status 3: error: tensor blk.0 has 40 columns \(full output"):
        run_tool("llama-quantize", ["a.gguf", "b.gguf", "Q4_K_M"], log=log)
    text = log.read_text()
    assert text.startswith(f"$ {program} a.gguf b.gguf Q4_K_M\n") and "loading" in text


def test_run_tool_returns_the_output(monkeypatch, tmp_path):
    hide_tools(monkeypatch, tmp_path)
    write_program(tmp_path / "bin", "llama-tokenize", 'echo "args: $*"')
    monkeypatch.setenv("LLM4ALL_LLAMA_CPP_BIN", str(tmp_path / "bin"))
    assert run_tool("llama-tokenize", ["-p", Path("x y")]) == "args: -p x y\n"
