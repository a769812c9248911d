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
