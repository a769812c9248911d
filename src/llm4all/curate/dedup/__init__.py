"""Deduplication: one file per registered deduper, one module of shared shingle hashing.

- ``exact.py``: ``exact`` — a 128-bit hash of the normalised text, first occurrence kept;
- ``minhash.py``: ``minhash`` — MinHash + LSH near-duplicates, verified exactly, clustered;
- ``semdedup.py``: ``semdedup`` — embeddings closer than 1 − ε within a k-means cluster;
- ``shingles.py``: what ``exact`` and ``minhash`` share — ``normalize``, shingle hashes,
  MinHash signatures, the exact Jaccard of shingle sets and their spill file.

Every deduper consumes ``(id, text)`` pairs and yields one ``Decision`` per document
(``llm4all.curate.step``). The pure functions are re-exported here.
"""

from llm4all.curate.dedup.exact import ExactDedup, exact_duplicates
from llm4all.curate.dedup.minhash import (
    MinHashDedup,
    candidate_pairs,
    lsh_params,
    near_duplicates,
    recall_params,
)
from llm4all.curate.dedup.shingles import (
    jaccard,
    minhash_signatures,
    normalize,
    set_jaccard,
    signatures_and_shingles,
)
from llm4all.curate.dedup.spill import ShingleStore

__all__ = [
    "ExactDedup", "MinHashDedup", "ShingleStore", "candidate_pairs", "exact_duplicates", "jaccard",
    "lsh_params", "minhash_signatures", "near_duplicates", "normalize", "recall_params",
    "set_jaccard", "signatures_and_shingles",
]
