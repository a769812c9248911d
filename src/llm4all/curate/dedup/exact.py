"""Exact deduplication: a 128-bit hash of the normalised text, first occurrence survives.

Lee et al. 2022, "Deduplicating Training Data Makes Language Models Better": exact copies
are the cheapest duplicates to remove and the most common. The text is first normalised
(``shingles.normalize``: NFKC, lowercase, punctuation and symbols to spaces, whitespace
collapsed — the same front end as MinHash shingling, so "exact" and "near" duplicates are
judged on the same text), so ``"Hello,   World!"`` and ``"hello world"`` are one text.

The hash is BLAKE2b with a 16-byte digest of the UTF-8 normalised text (hashlib, no extra
dependency); two different texts collide with probability about n²/2¹²⁹ for n documents.
Streaming: one decision per document as soon as it is read, holding 16 bytes per distinct
text plus the survivor's id.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from llm4all.catalog import DEDUPERS
from llm4all.curate.dedup.shingles import text_digest
from llm4all.curate.step import Decision


def text_hash(text: str) -> bytes:
    """16-byte BLAKE2b digest of ``normalize(text)``."""
    return text_digest(text)


def exact_duplicates(texts: Iterable[str]) -> list[int]:
    """For each text, the index of the first text with the same normalised hash.

    ``result[i] == i`` means text i survives (first occurrence); otherwise it duplicates
    ``texts[result[i]]``.
    """
    first: dict[bytes, int] = {}
    return [first.setdefault(text_hash(t), i) for i, t in enumerate(texts)]


@DEDUPERS.register("exact")
class ExactDedup:
    """Exact duplicates by a 128-bit hash of the normalised text, first kept (Lee et al. 2022).

    Lee et al. 2022, "Deduplicating Training Data Makes Language Models Better". Streaming:
    ``dedup(docs)`` consumes ``(id, text)`` pairs and yields one ``Decision`` per document as
    soon as it is read, holding 16 bytes per distinct text plus the survivor's id.

    Args:
        normalise: hash ``normalize(text)`` (True) or the raw text (False).
    """

    def __init__(self, normalise: bool = True):
        self.normalise = normalise

    def __call__(self, docs: Iterable[tuple[str, str]]) -> Iterator[Decision]:
        survivors: dict[bytes, str] = {}  # digest -> id of its first occurrence
        for doc_id, text in docs:
            digest = text_digest(text, self.normalise)
            survivor = survivors.get(digest)
            if survivor is None:
                survivors[digest] = doc_id
                yield Decision(doc_id, True)
            else:
                yield Decision(doc_id, False, {"reason": "exact_duplicate", "survivor": survivor})

    def on_ray(self, ray, ids: list[str], texts, table) -> list[Decision]:
        """The same decisions computed on Ray Data (``ray_exact.py``: hash tasks, hash shuffle)."""
        from llm4all.curate.dedup.ray_exact import exact_on_ray

        return exact_on_ray(ray, ids, texts, self.normalise)
