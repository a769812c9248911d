"""Deduplication: exact (normalised hash) and near-duplicate (MinHash + LSH) removal.

Pure functions first — ``normalize``, ``exact_duplicates``, ``minhash_signatures``,
``candidate_pairs``, ``set_jaccard``, ``near_duplicates`` — then the two registered dedupers
(``exact``, ``minhash``), which consume ``(id, text)`` pairs and yield one ``Decision`` per
document.
"""

from llm4all.curate.dedup.exact import Decision, ExactDedup, exact_duplicates, normalize
from llm4all.curate.dedup.lsh import (
    MinHashDedup,
    candidate_pairs,
    lsh_params,
    near_duplicates,
    recall_params,
)
from llm4all.curate.dedup.minhash import jaccard, minhash_signatures, signatures_and_shingles
from llm4all.curate.dedup.verify import ShingleStore, set_jaccard

__all__ = [
    "Decision", "ExactDedup", "MinHashDedup", "ShingleStore", "candidate_pairs", "exact_duplicates",
    "jaccard", "lsh_params", "minhash_signatures", "near_duplicates", "normalize", "recall_params",
    "set_jaccard", "signatures_and_shingles",
]
