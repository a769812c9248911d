"""One progress bar for every long stage: what it does, how far, how fast, how long to go.

``with progress("compress", total=30, unit="layers") as advance: ... advance()`` shows
``compress ━━━━━━━━━━ 12/30 0.9 layers/s 0:00:13 eta 0:00:20`` on a terminal while the
work runs and leaves nothing behind (the command prints its result after). Off a terminal (a
log file, CI) rich draws nothing, so logs stay clean; ``LLM4ALL_QUIET=1`` (``llm4all -q``)
turns bars off everywhere.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator


def quiet() -> bool:
    """Whether the user asked for no progress output (``llm4all -q`` or ``LLM4ALL_QUIET=1``)."""
    return os.environ.get("LLM4ALL_QUIET", "") not in ("", "0")


@contextlib.contextmanager
def progress(description: str, total: int | None, unit: str = "it") -> Iterator[Callable[..., None]]:
    """A transient bar; yields ``advance(n=1)``. ``total`` None: a count without a bar's end."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn(description), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    start, done = time.perf_counter(), 0
    with Progress(*columns, transient=True, disable=quiet()) as bar:
        task = bar.add_task(description, total=total, rate="")

        def advance(n: int = 1) -> None:
            nonlocal done
            done += n
            rate = done / max(time.perf_counter() - start, 1e-9)
            shown = f"{rate:,.2f}" if rate < 10 else f"{rate:,.0f}"
            bar.update(task, advance=n, rate=f"{shown} {unit}/s")

        yield advance
