"""Shannon entropy of a document's characters, UTF-8 bytes and words, in bits per symbol.

H = -sum_x p(x) log2 p(x) over the empirical distribution of symbols in the document
(Shannon 1948, "A Mathematical Theory of Communication", eq. 4). A document with no symbol
(empty text; no word for ``word_entropy``) has entropy 0, as does one with a single repeated
symbol. Token entropy under a real tokenizer is a model-based signal and lives elsewhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from llm4all.curate.signals.compute import signal
from llm4all.curate.signals.text import Doc


def shannon_entropy(counts: Iterable[int]) -> float:
    """Entropy in bits of the distribution given by symbol ``counts`` (0 for no symbol)."""
    c = np.fromiter(counts, dtype=np.float64)
    c = c[c > 0]
    total = c.sum()
    if total <= 0:
        return 0.0
    # H = log2(T) - sum(c log2 c) / T, clipped at 0 against rounding for one symbol
    return max(0.0, float(np.log2(total) - (c * np.log2(c)).sum() / total))


@signal("char_entropy", ("char_entropy",))
def char_entropy(doc: Doc) -> dict[str, float]:
    """Shannon entropy of the Unicode code points, bits/char (Shannon 1948)."""
    return {"char_entropy": shannon_entropy(Counter(doc.text).values())}


@signal("byte_entropy", ("byte_entropy",))
def byte_entropy(doc: Doc) -> dict[str, float]:
    """Shannon entropy of the UTF-8 bytes, bits/byte in [0, 8] (Shannon 1948)."""
    data = np.frombuffer(doc.text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    return {"byte_entropy": shannon_entropy(np.bincount(data, minlength=256))}


@signal("word_entropy", ("word_entropy",))
def word_entropy(doc: Doc) -> dict[str, float]:
    """Shannon entropy of the lower-cased word types, bits/word (Shannon 1948)."""
    return {"word_entropy": shannon_entropy(doc.word_counts.values())}
