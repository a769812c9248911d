"""Factual-consistency filtering of summarisation pairs: every removal names what is unsupported.

Guo et al. 2022, "Questioning the Validity of Summarization Datasets and Improving Their Factual
Consistency" (EMNLP; arXiv:2210.17378), find that popular summarisation sets (XSum, CNN/DM) hold
many summaries their documents do not support, and filter them with factual-consistency models
(their SummFC). Nan et al. 2021, "Entity-level Factual Consistency of Abstractive Text
Summarization" (EACL), filter training pairs whose summary names an entity missing from the
document (prec_s < 1) and show that models trained on what remains hallucinate fewer entities.

``{select: factual}`` does the same on ``curate --format summary`` pairs (the source in
``meta.document``): a pair is dropped when its entity precision (``entities.py``: rule-based
entities, span or Nan et al.'s lenient matching) is below ``min_entity_precision`` (1.0: any
unsupported entity, as Nan et al. filter), when its number precision is below
``min_number_precision``, or, with ``entailment:`` (a model), when the entailment score of the
pairs that pass the rules is below ``min_entailment`` (``entailment.py``: SummaC-ZS with an NLI
classifier, Laban et al. 2022; P(yes) with a causal LM). The reason lists the unsupported
entities and numbers with both precisions, or the score and the scorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llm4all.catalog import SELECTORS
from llm4all.curate.entities import MATCHES, Source, Support, check
from llm4all.curate.select.base import check_lengths
from llm4all.curate.step import Decision
from llm4all.errors import UserError

SOURCE = "Nan et al. 2021 (EACL), entity-level precision prec_s"
#: the default bound per scorer: SummaC-ZS is in [-1, 1] (more entailed than contradicted above 0),
#: the LM's P(yes) in [0, 1]
DEFAULT_MIN_ENTAILMENT = {"summac_zs": 0.0, "lm_yes_no": 0.5}


def _bound(value: float, name: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise UserError(f"factual: {name} must be in [0, 1], got {value}")
    return float(value)


def rule_reason(support: Support, min_entity: float, min_number: float, match: str) -> dict[str, Any] | None:
    """Why the rules drop a pair (None: they keep it)."""
    ent, num = support.entity_precision, support.number_precision
    if ent >= min_entity and num >= min_number:
        return None
    rule = f"entity_precision < {min_entity:g}" if ent < min_entity else f"number_precision < {min_number:g}"
    return {"reason": rule, "unsupported_entities": support.unsupported_entities,
            "unsupported_numbers": support.unsupported_numbers, "entity_precision": round(ent, 4),
            "number_precision": round(num, 4), "match": match, "source": SOURCE}


@SELECTORS.register("factual")
class Factual:
    """Drop summaries whose entities or numbers their document does not support (Nan et al. 2021).

    Args:
        min_entity_precision: keep a pair only if at least this share of its summary's entities is
            in the document (1.0: drop any unsupported entity, as Nan et al. 2021 filter).
        min_number_precision: the same for the summary's numbers.
        match: span (all of an entity's words, contiguous) or nan2021 (Nan et al.'s lenient match:
            any two-word sub-span, else any non-stop word).
        document_key: the meta field holding each summary's source document.
        entailment: a model to score the pairs the rules keep: an NLI classifier (SummaC-ZS) or a
            causal LM (P(yes) asked if the summary is supported); a registered name or a directory.
        min_entailment: drop below this score (default: 0 for SummaC-ZS, 0.5 for an LM).
        dtype: the LM's dtype.
        batch_size: pairs per forward pass of the LM.
        max_tokens: the LM's prompt length (the document is cut to fit).
    """

    reads_meta = True

    def __init__(self, min_entity_precision: float = 1.0, min_number_precision: float = 1.0,
                 match: str = "span", document_key: str = "document", entailment: str | None = None,
                 min_entailment: float | None = None, dtype: str = "bfloat16", batch_size: int = 8,
                 max_tokens: int = 1024):
        if match not in MATCHES:
            raise UserError(f"factual: match must be one of {', '.join(MATCHES)}, got {match!r}")
        if batch_size < 1 or max_tokens < 16:
            raise UserError(f"factual: batch_size must be >= 1 and max_tokens >= 16, got {batch_size}, "
                            f"{max_tokens}")
        self.min_entity = _bound(min_entity_precision, "min_entity_precision")
        self.min_number = _bound(min_number_precision, "min_number_precision")
        self.match, self.document_key = match, document_key
        self.entailment, self.min_entailment = entailment, min_entailment
        self.dtype, self.batch_size, self.max_tokens = dtype, batch_size, max_tokens

    def documents(self, ids: list[str], metas: Sequence[dict] | None) -> list[str]:
        """Each pair's source document, from its meta (a UserError naming the first one without)."""
        if metas is None:
            raise UserError("select 'factual' needs (document, summary) pairs: run curate --format summary")
        out = []
        for doc_id, meta in zip(ids, metas, strict=True):
            document = meta.get(self.document_key)
            if not isinstance(document, str):
                raise UserError(f"select 'factual': document {doc_id!r} has no meta.{self.document_key} "
                                "(its source text); read pairs with curate --format summary")
            out.append(document)
        return out

    def __call__(self, ids: list[str], texts: list[str], table: dict,
                 metas: Sequence[dict] | None = None) -> list[Decision]:
        check_lengths(ids, texts, "factual")
        documents = self.documents(ids, metas)
        reasons = [rule_reason(check(text, Source(document), self.match), self.min_entity, self.min_number,
                               self.match) for text, document in zip(texts, documents, strict=True)]
        if self.entailment:
            self._entailment_reasons(reasons, list(texts), documents)
        return [Decision(doc_id, r is None, r) for doc_id, r in zip(ids, reasons, strict=True)]

    def _entailment_reasons(self, reasons: list[dict | None], summaries: list[str],
                            documents: list[str]) -> None:
        """Fill in a reason for each pair the rules kept whose entailment score is below the bound."""
        from llm4all.curate.entailment import entailment_scores

        todo = [k for k, r in enumerate(reasons) if r is None]
        if not todo:
            return
        scores, scorer = entailment_scores([documents[k] for k in todo], [summaries[k] for k in todo],
                                           str(self.entailment), dtype=self.dtype, batch_size=self.batch_size,
                                           max_tokens=self.max_tokens)
        bound = DEFAULT_MIN_ENTAILMENT[scorer] if self.min_entailment is None else self.min_entailment
        for k, score in zip(todo, np.asarray(scores, np.float64), strict=True):
            if score < bound:
                reasons[k] = {"reason": f"entailment < {bound:g}", "entailment": round(float(score), 4),
                              "scorer": scorer, "model": str(self.entailment),
                              "source": "Laban et al. 2022 (SummaC-ZS)" if scorer == "summac_zs"
                              else "LM asked if the summary is supported (P(yes))"}
