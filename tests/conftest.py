"""Shared fixtures: a tiny Llama model with a tiny tokenizer, built in process (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinymodels import WORDS, build_tiny_model, tiny_texts  # noqa: F401


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture()
def docs_jsonl(tmp_path) -> Path:
    path = tmp_path / "docs.jsonl"
    with path.open("w") as f:
        for i, text in enumerate(tiny_texts()):
            f.write(json.dumps({"id": f"doc{i}", "text": text, "meta": {"i": i}}) + "\n")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, request):
    """Unit tests convert nothing into the user's cache; real-model (slow) tests share one."""
    if "slow" not in request.keywords:
        monkeypatch.setenv("LLM4ALL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture()
def one_torch_thread():
    """One torch thread for the test: on a shared 2-core machine two OpenMP threads wait on
    each other's barriers (measured: a tiny-model Fisher 0.2 s vs 10 s, a teacher one 0.6 s vs
    2-5 s). Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _logging_state():
    """A test that runs ``llm4all -q``/``-v`` changes process-wide logging levels and the quiet /
    verbose variables; the next test starts from the state before it."""
    import logging
    import os

    root, own = logging.getLogger(), logging.getLogger("llm4all")
    levels = root.level, own.level
    env = {k: os.environ.get(k) for k in ("LLM4ALL_QUIET", "LLM4ALL_VERBOSE")}
    yield
    root.setLevel(levels[0])
    own.setLevel(levels[1])
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
