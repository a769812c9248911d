"""Evaluation tests run tiny models: one torch thread is as fast, and far faster on a loaded machine."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
