"""A log file per recipe stage: what the stage printed, as plain text, beside its outputs.

``with stage_log(out / "log.txt"): run the stage`` copies everything written to stdout and stderr
to the file while it still reaches the terminal. The file keeps text, not terminal effects:
colour codes are stripped, and the redraws of a live progress bar (cursor movements, carriage
returns) are left out, so the log reads like the output of a command run off a terminal.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_SGR = re.compile(r"\x1b\[[0-9;]*m")  # colours and styles
_LIVE = re.compile(r"\x1b\[\??[0-9;]*[A-HJKSTlh]|\r(?!\n)")  # cursor moves, erases, hide/show, CR


class _Tee:
    """A text stream writing to ``stream`` and, as plain text, to ``log``."""

    def __init__(self, stream: IO[str], log: IO[str]):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        if not _LIVE.search(text):  # a live display's redraw is not log material
            self.log.write(_SGR.sub("", text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ... of the real stream
        return getattr(self.stream, name)


@contextlib.contextmanager
def stage_log(path: Path) -> Iterator[Path]:
    """Copy stdout and stderr to ``path`` (appending: a resumed stage keeps its earlier log)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as log:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, log), _Tee(err, log)
        try:
            yield path
        finally:
            sys.stdout, sys.stderr = out, err
