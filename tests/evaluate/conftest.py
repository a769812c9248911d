"""Evaluation tests run tiny models: one torch thread is as fast, and far faster on a loaded machine."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every evaluation test runs with one torch thread (see tests/conftest.py)."""
    yield
