"""Silence transformers' progress bars and info logs while llm4all loads or saves a model."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and info logs for the duration (not under
    ``llm4all -v``, which sets LLM4ALL_VERBOSE: then its messages are what the user asked for)."""
    import transformers

    if os.environ.get("LLM4ALL_VERBOSE"):
        yield
        return

    utils = transformers.utils.logging
    level = utils.get_verbosity()
    utils.set_verbosity_error()
    utils.disable_progress_bar()
    try:
        yield
    finally:
        utils.set_verbosity(level)
        utils.enable_progress_bar()
