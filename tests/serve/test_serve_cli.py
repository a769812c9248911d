"""`llm4all serve` as a user runs it: ready message, ctrl-C stops the engine, no orphan ever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from llm4all.serve.prepare import gguf_for
from llm4all.serve.process import free_port, healthy
from tinybpe import build_bpe_llama


@pytest.fixture(scope="module")
def gguf(tmp_path_factory) -> Path:
    return gguf_for(build_bpe_llama(tmp_path_factory.mktemp("cli") / "m"), "f32")


def start_serve(gguf: Path, port: int, log: Path) -> tuple[subprocess.Popen, psutil.Process]:
    """`llm4all serve` in a child process; (it, the llama-server it started) once it is ready."""
    serve = subprocess.Popen([sys.executable, "-m", "llm4all", "serve", str(gguf), "--port", str(port),
                              "--parallel", "1", "--context", "128", "--log", str(log)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in serve.stdout:
        lines.append(line)
        if line.startswith("serving "):
            break
    else:
        pytest.fail(f"llm4all serve ended without serving: {''.join(lines)}")
    assert f"at http://127.0.0.1:{port}/v1" in lines[-1]
    assert any(line.startswith("starting llama.cpp: ") and "llama-server --model" in line for line in lines)
    engines = [p for p in psutil.Process(serve.pid).children() if p.name() == "llama-server"]
    assert len(engines) == 1 and healthy(f"http://127.0.0.1:{port}")
    return serve, engines[0]


def gone(process: psutil.Process, timeout: float = 15.0) -> bool:
    try:
        process.wait(timeout)
        return True
    except psutil.TimeoutExpired:
        return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_a_signal_stops_the_engine_and_serve_exits(gguf, tmp_path, sig):
    port = free_port()
    serve, engine = start_serve(gguf, port, tmp_path / "engine.log")
    serve.send_signal(sig)
    rest = serve.stdout.read()
    assert serve.wait(30) == 0, rest
    assert "stopping llama.cpp" in rest
    assert gone(engine) and not healthy(f"http://127.0.0.1:{port}")
    assert "llama-server --model" in (tmp_path / "engine.log").read_text()  # the engine's own log


def test_no_orphan_when_serve_is_killed_outright(gguf, tmp_path):
    port = free_port()
    serve, engine = start_serve(gguf, port, tmp_path / "engine.log")
    os.kill(serve.pid, signal.SIGKILL)  # no handler runs: the kernel's parent-death signal does it
    serve.wait(30)
    assert gone(engine), "llama-server outlived a SIGKILLed llm4all serve"
    time.sleep(0.1)
    assert not healthy(f"http://127.0.0.1:{port}")
