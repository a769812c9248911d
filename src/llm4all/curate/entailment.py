"""Does the document entail the summary? Two model scorers for the ``factual`` selector.

- **An NLI classifier** (a sequence-classification model whose ``config.id2label`` has an
  entailment label, e.g. an MNLI-tuned RoBERTa): SummaC-ZS, Laban et al. 2022, "SummaC:
  Re-Visiting NLI-based Models for Inconsistency Detection in Summarization" (TACL), sec. 3.1,
  as in their ``summac/model_summac.py`` (``SummaCZS``, ``op1=max, op2=mean, use_ent, use_con``):
  every (document sentence, summary sentence) pair is classified; for each summary sentence j,
  ``score_j = max_i P(entail | d_i, s_j) - max_i P(contradict | d_i, s_j)``; the pair's score is
  the mean over j, in [-1, 1]. Sentences of 10 characters or fewer are dropped and at most
  ``MAX_DOCUMENT_SENTENCES`` document sentences are used, as there. Kryściński et al. 2020's
  FactCC is a classifier of the same shape (its labels CORRECT/INCORRECT are not read here).
- **Any causal LM** (through ``llm4all.models.load``, e.g. ``smollm2-135m``): the model is shown
  the document and the summary and asked whether the summary is supported; the score is
  P(yes) / (P(yes) + P(no)) of its next token (the Ask-LLM scoring of ``signals/model.py``), in
  [0, 1]. A small LM is a weak judge: benchmarks/factual_consistency.py measures it.

No such model ships with llm4all except SmolLM2-135M (an LM, not an NLI model); the scorer is off
unless the selector is given ``entailment:``.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Literal

import numpy as np

from llm4all.curate.signals.model import (
    _batches,
    _encode,
    _hidden,
    _right_padded,
    answer_tokens,
    cached_model,
    progress,
    yes_probability,
)
from llm4all.errors import UserError

Scorer = Literal["summac_zs", "lm_yes_no"]
MAX_DOCUMENT_SENTENCES = 100  # SummaCImager's max_doc_sents
MIN_SENTENCE_CHARS = 10  # SummaC keeps sentences longer than this
FACT_PROMPT = ("Document:\n{document}\n\nSummary:\n{summary}\n\n"
               "Is the summary supported by the document? Answer yes or no.")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"“(\[]?[A-Z0-9])")


def sentences(text: str) -> list[str]:
    """Sentences (and lines) longer than ``MIN_SENTENCE_CHARS`` characters, as SummaC splits them."""
    out = []
    for line in text.splitlines():
        out += [s.strip() for s in _SENTENCE_END.split(line) if len(s.strip()) > MIN_SENTENCE_CHARS]
    return out


def nli_labels(config: dict) -> tuple[int, int | None] | None:
    """(entailment index, contradiction index or None) of an NLI classifier's config, or None."""
    labels = {int(k): str(v).lower() for k, v in (config.get("id2label") or {}).items()}
    entail = [i for i, name in labels.items() if name.startswith("entail")]
    if not entail:
        return None
    contradict = [i for i, name in labels.items() if name.startswith("contradict")]
    return entail[0], (contradict[0] if contradict else None)


def scorer_of(model: str) -> tuple[Scorer, Path]:
    """Which scorer ``model`` gets (an NLI classifier or a causal LM) and its local directory."""
    from llm4all.models.load import resolve

    path = resolve(model)
    config = json.loads((path / "config.json").read_text())
    return ("summac_zs" if nli_labels(config) else "lm_yes_no"), path


@functools.lru_cache(maxsize=2)
def _nli_model(path: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llm4all.models.device import resolve_device

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        net = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot load the NLI model ({str(e).splitlines()[0]})") from None
    return net.to(str(resolve_device())).eval(), tok


def summac_zs(image_entail: np.ndarray, image_contradict: np.ndarray) -> float:
    """SummaC-ZS of one pair from its (N_doc, N_sum) entailment and contradiction probabilities."""
    return float(np.mean(image_entail.max(axis=0) - image_contradict.max(axis=0)))


def nli_scores(documents: list[str], summaries: list[str], model: str, batch_size: int = 32,
               max_tokens: int = 512) -> np.ndarray:
    """SummaC-ZS of each (document, summary) pair under an NLI classifier (module docstring)."""
    import torch

    from llm4all.models.device import model_device

    path = str(scorer_of(model)[1])
    net, tok = _nli_model(path)
    entail, contradict = nli_labels(net.config.to_dict())
    scores = np.zeros(len(documents))
    with torch.inference_mode(), progress(len(documents), "entailment") as advance:
        for n, (document, summary) in enumerate(zip(documents, summaries, strict=True)):
            premises = sentences(document)[:MAX_DOCUMENT_SENTENCES] or [document]
            hypotheses = sentences(summary) or [summary]
            pairs = [(p, h) for p in premises for h in hypotheses]  # row-major: (N_doc, N_sum)
            probs = []
            for s in range(0, len(pairs), batch_size):
                enc = tok([p for p, _ in pairs[s:s + batch_size]], [h for _, h in pairs[s:s + batch_size]],
                          padding=True, truncation="only_first", max_length=max_tokens, return_tensors="pt")
                logits = net(**{k: v.to(model_device(net)) for k, v in enc.items()}).logits
                probs.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
            p = np.concatenate(probs).reshape(len(premises), len(hypotheses), -1)  # (N_doc, N_sum, labels)
            con = p[..., contradict] if contradict is not None else np.zeros(p.shape[:2])
            scores[n] = summac_zs(p[..., entail], con)
            advance(1)
    return scores


def prompt_pieces(tokenizer) -> tuple[list[int], list[int], list[int], bool]:
    """Token ids before the document, between it and the summary, and after the summary; and
    whether the prompt ends in whitespace (chat-formatted when the tokenizer has a template)."""
    doc_mark, sum_mark = "\x00DOC\x00", "\x00SUM\x00"
    from llm4all.curate.signals.model import as_user_turn

    rendered = as_user_turn(tokenizer, FACT_PROMPT.format(document=doc_mark, summary=sum_mark), "\nAnswer:")
    head, rest = rendered.split(doc_mark)
    middle, tail = rest.split(sum_mark)
    head_ids, middle_ids, tail_ids = _encode(tokenizer, [head, middle, tail])
    return head_ids, middle_ids, tail_ids, rendered[-1:].isspace()


def lm_scores(documents: list[str], summaries: list[str], model: str, dtype: str = "bfloat16",
              batch_size: int = 8, max_tokens: int = 1024) -> np.ndarray:
    """P(yes) of a causal LM asked whether each summary is supported by its document."""
    import torch

    from llm4all.models.device import model_device

    net, tok = cached_model(str(model), dtype)
    head, middle, tail, after_space = prompt_pieces(tok)
    yes, no = answer_tokens(tok, after_space)
    limit = min(max_tokens, getattr(net.config, "max_position_embeddings", None) or max_tokens)
    rows = []
    for doc_ids, sum_ids in zip(_encode(tok, documents), _encode(tok, summaries), strict=True):
        room = limit - len(head) - len(middle) - len(tail) - len(sum_ids)
        if room < 1:
            raise UserError(f"factual: a summary of {len(sum_ids)} tokens leaves no room for its "
                            f"document in {limit} tokens; raise max_tokens")
        rows.append(head + doc_ids[:room] + middle + sum_ids + tail)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    scores = np.zeros(len(rows))
    with torch.inference_mode(), progress(len(rows), "entailment") as advance:
        for batch in _batches(rows, batch_size):
            ids, mask = _right_padded([rows[i] for i in batch], pad, model_device(net))
            hidden = _hidden(net, ids, mask)  # (B, T, H)
            last = hidden[torch.arange(len(batch), device=ids.device), mask.sum(1) - 1]  # (B, H)
            scores[batch] = yes_probability(net.get_output_embeddings()(last), yes, no).double().cpu().numpy()
            advance(len(batch))
    return scores


def entailment_scores(documents: list[str], summaries: list[str], model: str, *, dtype: str = "bfloat16",
                      batch_size: int = 8, max_tokens: int = 1024) -> tuple[np.ndarray, Scorer]:
    """(score of each pair, the scorer used): SummaC-ZS for an NLI classifier, else LM P(yes)."""
    scorer, _ = scorer_of(model)
    if scorer == "summac_zs":
        return nli_scores(documents, summaries, model, max_tokens=min(max_tokens, 512)), scorer
    return lm_scores(documents, summaries, model, dtype, batch_size, max_tokens), scorer
