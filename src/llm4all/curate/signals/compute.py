"""The signal contract and ``compute_signals``: documents in, one float column per signal out.

A signal is registered in ``SIGNALS`` with :func:`signal`, which records the columns it
returns:

- per-document (default): ``fn(doc: Doc, **options) -> dict[str, float]``. ``Doc`` wraps the
  text and tokenises lazily, once per document, so the signals computed together share one
  word/sentence/line split. Call one on a string with ``fn(Doc(text))``.
- batched (``batched=True``, for model-based signals such as perplexity or Ask-LLM):
  ``fn(texts: list[str], **options) -> dict[str, np.ndarray]``, one array of ``len(texts)``
  per column.

Every signal is pure and deterministic (a random one seeds a local generator) and returns
finite floats for any text, including empty text: each module documents the value it defines
for degenerate input. ``compute_signals`` checks both promises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from llm4all.catalog import SIGNALS
from llm4all.curate.signals.text import Doc
from llm4all.errors import UserError
from llm4all.registry import check_options

SignalSpec = str | dict[str, Any]


def signal(
    name: str,
    columns: tuple[str, ...],
    *,
    batched: bool = False,
    requires: tuple[str, ...] = (),
) -> Callable[[Callable], Callable]:
    """Decorator: register a signal under ``name``, declaring the ``columns`` it returns."""

    def decorator(fn: Callable) -> Callable:
        fn.columns = tuple(columns)
        fn.batched = batched
        return SIGNALS.register(name, requires=requires)(fn)

    return decorator


def resolve(names: Iterable[SignalSpec]) -> list[tuple[str, Callable, dict[str, Any]]]:
    """Look up ``names`` (``"mtld"`` or ``{"name": "vocd_d", "seed": 1}``) before any work.

    Raises UserError for an unknown name, an unknown option or a column produced twice.
    """
    resolved, seen = [], {}
    for spec in names:
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise UserError(f"signals: expected a name or a mapping with 'name', got {spec!r}")
        name = spec["name"]
        options = {k: v for k, v in spec.items() if k != "name"}
        fn = SIGNALS.get(name)
        check_options(fn, options, where=f"signal {name!r}")
        for col in fn.columns:
            if col in seen:
                raise UserError(
                    f"signals: column {col!r} comes from both {seen[col]!r} and {name!r}"
                )
            seen[col] = name
        resolved.append((name, fn, options))
    return resolved


def compute_signals(texts: Iterable[str], names: list[SignalSpec]) -> dict[str, np.ndarray]:
    """Compute the named signals for every text: ``{column: float64 array of len(texts)}``.

    Per-document signals share one ``Doc`` (one tokenisation) per text; batched signals get
    the whole list once. Columns come in the order of ``names``.
    """
    plan = resolve(names)
    texts = list(texts)
    per_doc = [(fn, options) for _, fn, options in plan if not fn.batched]
    rows: dict[str, list[float]] = {c: [] for fn, _ in per_doc for c in fn.columns}
    if per_doc:
        for text in texts:
            doc = Doc(text)
            for fn, options in per_doc:
                for col, value in fn(doc, **options).items():
                    rows[col].append(value)
    out: dict[str, np.ndarray] = {}
    for name, fn, options in plan:
        if fn.batched:
            result = fn(texts, **options) if texts else {c: [] for c in fn.columns}
            cols = {c: np.asarray(result[c], dtype=np.float64) for c in fn.columns}
        else:
            cols = {c: np.asarray(rows[c], dtype=np.float64) for c in fn.columns}
        for col, values in cols.items():
            if values.shape != (len(texts),):
                raise RuntimeError(f"signal {name!r} gave {values.shape} values for {col!r}")
            if not np.isfinite(values).all():
                raise RuntimeError(f"signal {name!r} returned a non-finite {col!r}")
            out[col] = values
    return out


def signals_of(text: str, names: list[SignalSpec]) -> dict[str, float]:
    """All named signals of one text as ``{column: float}`` (convenience for one document)."""
    return {col: float(v[0]) for col, v in compute_signals([text], names).items()}
