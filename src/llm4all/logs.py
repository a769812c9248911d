"""llm4all's status lines go through ``logging`` (logger ``llm4all.*``), not ``print``.

Library functions return data; what they have to say along the way (a checkpoint resumed or
found damaged, a model converted once, the thread count changed) is a log record, so a
program using llm4all decides what it sees. The ``llm4all`` command shows INFO and above on
stderr (``-q``: errors only; ``-v``: DEBUG, with transformers' and llama.cpp's own messages).
The handler writes to whatever ``sys.stderr`` is at the time, so a recipe stage's ``log.txt``
(``stagelog.py``) keeps these lines too.
"""

from __future__ import annotations

import logging
import sys

NAME = "llm4all"


class _CurrentStderr(logging.StreamHandler):
    """A StreamHandler whose stream is ``sys.stderr`` at each record, not at creation."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


class _Plain(logging.Formatter):
    """INFO as the bare message; WARNING and above prefixed with their level."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def setup(level: int = logging.INFO) -> None:
    """Show ``llm4all`` records of ``level`` and above on stderr (idempotent)."""
    logger = logging.getLogger(NAME)
    logger.setLevel(level)
    if not any(isinstance(h, _CurrentStderr) for h in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(_Plain("%(message)s"))
        logger.addHandler(handler)


def not_llm4all(record: logging.LogRecord) -> bool:
    """A filter for other handlers (the root's under ``-v``): llm4all's records are shown once."""
    return not record.name.startswith(NAME)
