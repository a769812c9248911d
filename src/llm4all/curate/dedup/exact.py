"""Exact deduplication: a 128-bit hash of the normalised text, first occurrence survives.

``normalize`` is also the front end of MinHash shingling (``minhash.py``), so "exact" and
"near" duplicates are judged on the same text. The normalisation, step by step:

1. Unicode NFKC (compatibility composition: full-width letters, ligatures, non-breaking
   spaces become their plain forms);
2. ``str.lower()``;
3. every character that is neither a word character (Python ``re`` ``\\w``: Unicode
   letters, digits and ``_``) nor whitespace becomes a space — punctuation and symbols;
4. runs of whitespace collapse to one space, and leading/trailing whitespace goes.

So ``"Hello,   World!"`` and ``"hello world"`` normalise to the same ``"hello world"``.
ASCII text takes a fast path (one ``bytes.translate`` with a table built from the same rules,
tested equal to the general path on every ASCII character).
The hash is BLAKE2b with a 16-byte digest of the UTF-8 normalised text (hashlib, no extra
dependency); two different texts collide with probability about n²/2¹²⁹ for n documents.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from llm4all.catalog import DEDUPERS

NON_WORD = re.compile(r"[^\w\s]+")
#: byte -> byte for ASCII text: lowercase word characters, everything else (punctuation,
#: symbols, control characters, whitespace) a space; bytes >= 128 never occur in ASCII text
ASCII_TABLE = bytes(
    i if i >= 128 else 32 if NON_WORD.match(chr(i)) or chr(i).isspace() else ord(chr(i).lower())
    for i in range(256)
)


class Decision(NamedTuple):
    """What a deduper says about one document: keep it, or drop it with a reason.

    ``reason`` is None for kept documents; for dropped ones a dict such as
    ``{"reason": "near_duplicate", "cluster": 3, "survivor": "doc-17", "jaccard": 0.87}``.
    """

    id: str
    keep: bool
    reason: dict[str, Any] | None = None


def normalize(text: str) -> str:
    """NFKC, lowercase, punctuation and symbols to spaces, collapsed whitespace (see module)."""
    if text.isascii():  # NFKC is the identity on ASCII
        return b" ".join(text.encode().translate(ASCII_TABLE).split()).decode()
    return normalize_unicode(text)


def normalize_unicode(text: str) -> str:
    """The general path of ``normalize``, for any text (``normalize`` uses it for non-ASCII)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(NON_WORD.sub(" ", text).split())


def text_hash(text: str) -> bytes:
    """16-byte BLAKE2b digest of ``normalize(text)``."""
    return hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=16).digest()


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
            key = normalize(text) if self.normalise else text
            digest = hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()
            survivor = survivors.get(digest)
            if survivor is None:
                survivors[digest] = doc_id
                yield Decision(doc_id, True)
            else:
                yield Decision(doc_id, False, {"reason": "exact_duplicate", "survivor": survivor})
