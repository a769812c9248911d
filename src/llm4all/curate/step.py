"""The curate step protocol: every step answers keep, or drop with a reason, once per document.

The model is datatrove's filter contract (huggingface/datatrove,
``src/datatrove/pipeline/filters/base_filter.py``): ``filter(doc)`` returns True to keep a
document or ``(False, reason)`` to drop it, and the step around it counts the drops by reason
and writes the dropped documents out. Here the answer is batch-wide, because dedup and
selection judge a document against the others:

- **A step** is given the documents still kept (those its ``when:`` matches), in input order,
  and returns one ``Decision(id, keep, reason)`` per document, in the same order. A drop
  carries a reason: a dict whose ``"reason"`` names the rule (``"exact_duplicate"``,
  ``"word_count < 50"``) and whose other keys explain it (the value and bound, the survivor's
  id and similarity, the source paper). A step never drops silently and never answers for a
  document it was not given; ``check_decisions`` enforces both.
- **Three kinds**, one registry each, picked in a recipe by one key whose value is the entry's
  short name; the rest of the mapping is the entry's options, checked against its signature
  before any work (``{dedup: minhash, threshold: 0.8}``):

  ====================  ==========================================  ================================
  key (registry)        entry                                       called as
  ====================  ==========================================  ================================
  filter (FILTERS)      a function over signal columns              ``fn(ids, table, **options)``
  dedup (DEDUPERS)      a class; its instance streams (id, text)    ``Deduper(**options)(pairs)``
  select (SELECTORS)    a class; its instance sees the whole set    ``Selector(**options)(ids, texts, table)``
  ====================  ==========================================  ================================

  ``table`` maps each signal column to an (n,) float array aligned with ``ids``. An entry
  that also runs on Ray Data has ``on_ray(ray, ids, texts, table)`` giving the same decisions;
  ``curate --engine ray`` calls it (the step's ``on_ray`` attribute) instead. A deduper
  yields its decisions lazily (it may read everything before the first one: near-duplicate
  detection is global), so it also runs on its own over a file. ``build_step`` turns all three
  into one ``Step``: ``step(ids, texts, table) -> list[Decision]``. A selector whose class sets
  ``reads_meta = True`` is also given ``metas=``, the documents' meta aligned with ``ids`` (a
  lazy sequence read from the store): the ``factual`` selector finds a summary's source document
  there.
- **Counts come free**: the pipeline, not the step, counts per step the documents in, judged,
  kept and removed, and the removals by reason; writes every removed document with its step
  and reason; and checks ``kept + removed == read`` at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple, Protocol

import numpy as np

from llm4all import catalog
from llm4all.errors import UserError
from llm4all.registry import check_options

STEP_KINDS = ("filter", "dedup", "select")


class TableRows(Mapping[str, np.ndarray]):
    """The rows ``index`` of every column of ``table``, each column copied on first use only:
    a step is given the columns of the documents it judges, but most steps (dedup) read none
    and a filter a few, so the driver no longer copies the whole signal table at every step."""

    def __init__(self, table: Mapping[str, np.ndarray], index: np.ndarray):
        self._table, self._index, self._rows = table, index, {}

    def __getitem__(self, column: str) -> np.ndarray:
        if column not in self._rows:
            self._rows[column] = np.asarray(self._table[column])[self._index]
        return self._rows[column]

    def __contains__(self, column: object) -> bool:  # without copying it
        return column in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


class Decision(NamedTuple):
    """What a step says about one document: keep it, or drop it with a reason.

    ``reason`` is None for kept documents; for dropped ones a dict such as
    ``{"reason": "near_duplicate", "cluster": 3, "survivor": "doc-17", "jaccard": 0.87}``.
    """

    id: str
    keep: bool
    reason: dict[str, Any] | None = None


class Filter(Protocol):
    """A FILTERS entry: decisions from signal columns alone, each document judged by its own row
    (so a filter runs in blocks of documents, on Ray too: ``engine.filter_on_ray``)."""

    def __call__(self, ids: list[str], table: Mapping[str, np.ndarray], /,
                 **options: Any) -> list[Decision]: ...


class Deduper(Protocol):
    """An instance of a DEDUPERS entry: (id, text) pairs in, one decision per pair out, in order."""

    def __call__(self, docs: Iterable[tuple[str, str]], /) -> Iterator[Decision]: ...


class Selector(Protocol):
    """An instance of a SELECTORS entry: the whole set in, one decision per document out (with
    ``reads_meta = True`` on its class, called with ``metas=`` too)."""

    def __call__(self, ids: list[str], texts: list[str],
                 table: Mapping[str, np.ndarray], /) -> list[Decision]: ...


#: what the pipeline runs: (ids, texts, signal table) -> one Decision per document, in order
Step = Callable[[list[str], list[str], dict[str, np.ndarray]], list[Decision]]


def build_step(spec: dict[str, Any], where: str) -> tuple[str, Step]:
    """Turn ``{dedup: minhash, threshold: 0.8}`` into (label, step); names and options checked now.

    ``label:`` renames the step (default ``"kind:name"``); ``when:`` is the pipeline's business
    (which documents the step sees) and is only type-checked here.
    """
    if not isinstance(spec, dict):
        raise UserError(f"{where}: a step is a mapping like {{dedup: minhash}}, got {spec!r}")
    if not isinstance(spec.get("when", {}), dict):
        raise UserError(f"{where}.when: expected a mapping like {{lang: en}}, got {spec['when']!r}")
    kinds = [k for k in STEP_KINDS if k in spec]
    if len(kinds) != 1:
        raise UserError(f"{where}: a step needs exactly one of {', '.join(STEP_KINDS)}; got {sorted(spec)}")
    kind = kinds[0]
    options = {k: v for k, v in spec.items() if k not in (kind, "label", "when")}
    name = spec[kind]
    label = str(spec.get("label", f"{kind}:{name}"))
    if kind == "filter":
        filter_fn: Filter = catalog.FILTERS.get(name)
        check_options(filter_fn, options, where=f"{where} (filter {name!r})")
        def run_filter(ids: list[str], texts, table) -> list[Decision]:
            return filter_fn(ids, table, **options)

        def filter_on_ray(ray, ids: list[str], texts, table) -> list[Decision]:
            from llm4all.curate.engine import filter_on_ray

            return filter_on_ray(ray, filter_fn, options, ids, table)

        run_filter.on_ray = filter_on_ray  # type: ignore[attr-defined]
        return label, run_filter
    registry = catalog.DEDUPERS if kind == "dedup" else catalog.SELECTORS
    check_options(registry.get(name), options, where=f"{where} ({kind} {name!r})")
    instance = registry.build({"name": name, **options})
    if kind == "dedup":
        deduper: Deduper = instance

        def run(ids: list[str], texts, table) -> list[Decision]:
            return list(deduper(zip(ids, texts, strict=True)))

        run.on_ray = getattr(deduper, "on_ray", None)  # type: ignore[attr-defined]
        return label, run
    selector: Selector = instance
    return label, selector


def check_decisions(label: str, decisions: list[Decision], ids: list[str]) -> None:
    """RuntimeError (a bug in the step) unless there is one decision per id, in order."""
    if len(decisions) != len(ids) or any(d.id != i for d, i in zip(decisions, ids, strict=True)):
        raise RuntimeError(f"step {label!r} did not answer once per document, in order")
