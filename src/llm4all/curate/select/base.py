"""What every selector shares: the contract, option checks, column lookup and kept counts.

A selector (registry ``SELECTORS``) is a class whose ``__init__`` takes its options and whose
``__call__(ids, texts, table) -> list[Decision]`` returns one ``Decision`` per document, in
order (the step protocol: ``llm4all.curate.step``). ``table`` maps signal columns (e.g.
``"ask_llm"``, ``"ppl"``, ``"mtld"``) to float arrays aligned with ``ids``. Embedding-based
selectors also accept ``embeddings=`` (n, d), so a pipeline that has embedded already (or a
test) skips the model.
"""

from __future__ import annotations

import math

import numpy as np

from llm4all.errors import UserError, did_you_mean


def check_fraction(value: float, name: str, where: str) -> None:
    """UserError unless 0 < value ≤ 1."""
    if not isinstance(value, int | float) or not 0.0 < value <= 1.0:
        raise UserError(f"{where}: {name} must be in (0, 1], got {value!r}")


def check_positive(value: int | None, name: str, where: str) -> None:
    """UserError unless value is None or an integer ≥ 1."""
    if value is not None and (not isinstance(value, int) or value < 1):
        raise UserError(f"{where}: {name} must be an integer >= 1, got {value!r}")


def kept_count(fraction: float, n: int) -> int:
    """Documents kept for a target fraction: round half up, at least 1 of a non-empty set."""
    if n == 0:
        return 0
    return min(n, max(1, math.floor(fraction * n + 0.5)))


def column(table: dict[str, np.ndarray], name: str, n: int, where: str) -> np.ndarray:
    """``table[name]`` as float64 (n,), or a UserError naming the column and the valid ones."""
    if name not in table:
        raise UserError(f"{where}: unknown column {name!r}; "
                        f"{did_you_mean(name, sorted(table)) if table else 'the table is empty'}")
    values = np.asarray(table[name], dtype=np.float64)
    if values.shape != (n,):
        raise UserError(f"{where}: column {name!r} has shape {values.shape}, expected ({n},)")
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise UserError(f"{where}: column {name!r} has a non-finite value at row {bad}")
    return values


def check_lengths(ids: list[str], texts: list[str], where: str) -> None:
    if len(ids) != len(texts):
        raise UserError(f"{where}: {len(ids)} ids but {len(texts)} texts")


def embeddings_for(
    texts: list[str], embeddings: np.ndarray | None, model: str, batch_size: int,
    max_tokens: int, where: str,
) -> np.ndarray:
    """The given (n, d) embeddings, L2-normalised, or ``embed_texts`` of the texts."""
    if embeddings is None:
        from llm4all.curate.embed import embed_texts

        return embed_texts(texts, model, batch_size, max_tokens)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(texts):
        raise UserError(f"{where}: embeddings of shape {embeddings.shape} for {len(texts)} texts")
    from llm4all.curate.embed import normalize_rows

    norms = np.linalg.norm(embeddings, axis=1)
    if len(norms) and np.all(np.abs(norms - 1) < 1e-5):  # already unit rows (embed_texts', embed_on_ray's)
        return embeddings  # as they are, so the same vectors give the same decisions bit for bit
    return normalize_rows(embeddings)
