"""Run an engine as a child process: start it, wait until it answers, stop it, leave no orphan.

The engine runs in its own session (a ctrl-C in the terminal reaches llm4all, which stops the
engine in order: SIGTERM, then SIGKILL after ``grace`` seconds) and, on Linux, with
``PR_SET_PDEATHSIG`` = SIGTERM, so the kernel stops it even when llm4all itself is killed with
SIGKILL. Its stdout and stderr go to a log file.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from llm4all.errors import UserError

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> None:
    """In the child, before exec: ask the kernel for SIGTERM when the parent thread dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def check_port_free(host: str, port: int) -> None:
    """UserError naming --port when something already listens on ``host:port``."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); "
                            "choose another port") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (for tests and benchmarks)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def url_of(host: str, port: int) -> str:
    """The base URL a client on this machine uses (a wildcard address is reached on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def healthy(url: str, path: str = "/health") -> bool:
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False  # refused while starting, 503 while the model loads


def tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text[-lines:]) or "(empty log)"


def stop(process: subprocess.Popen, grace: float = 10.0) -> int:
    """Stop ``process`` (SIGTERM, then SIGKILL after ``grace`` s); its exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextlib.contextmanager
def running(command: list[str], url: str, log: Path, timeout: float = 300.0,
            health: str = "/health") -> Iterator[subprocess.Popen]:
    """Start ``command`` (output to ``log``); yield it once ``url + health`` answers 200; stop it after.

    A UserError (quoting the log's last lines) when the engine exits or stays silent for
    ``timeout`` seconds.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        sink.write(f"$ {' '.join(command)}\n".encode())
        sink.flush()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True,
                                   preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)
    try:
        deadline = time.monotonic() + timeout
        while not healthy(url, health):
            if process.poll() is not None:
                raise UserError(f"{Path(command[0]).name} exited with status {process.returncode} before "
                                f"answering; its log {log}: {tail(log)}")
            if time.monotonic() > deadline:
                raise UserError(f"{Path(command[0]).name} did not answer {url}{health} within "
                                f"{timeout:.0f} s; its log {log}: {tail(log)}")
            time.sleep(0.2)
        yield process
    finally:
        stop(process)
