"""llm4all.curate.signals: per-document information-density and quality signals.

``compute_signals(texts, names)`` returns one float64 column per signal column; each entry
of the ``signals`` registry lives in a submodule (entropy, compression, lexical, readability,
heuristics) and declares its columns. ``THRESHOLDS`` holds the published filter cut-offs.
"""

from llm4all.curate.signals.compute import compute_signals, resolve, signal, signals_of
from llm4all.curate.signals.heuristics import THRESHOLDS
from llm4all.curate.signals.text import Doc

__all__ = ["THRESHOLDS", "Doc", "compute_signals", "resolve", "signal", "signals_of"]
