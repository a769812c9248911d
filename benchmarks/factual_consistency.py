"""Claim (issue 19 item 5): entity-level precision (Nan et al. 2021) finds summaries that name an
entity or a number their document does not have, far better than a word-overlap threshold that
removes as many pairs.

Data: the shipped set (data/summaries/demo-pairs.jsonl.zst): 474 XSum-style real pairs from the
demo corpus (lead sentence = summary, the rest = document) and 256 planted copies whose summary
has one change (extrinsic: a name or number the document lacks; intrinsic: another name or number
of the same document). Methods, each a keep/drop decision per pair:

- ``entities+numbers (span)``: ``{select: factual}`` as shipped (prec_s = 1 and all numbers found,
  entity words matched as one span);
- ``entities+numbers (nan2021)``: the same with Nan et al.'s lenient entity match;
- ``numbers only`` / ``entities only``: one half of the rule (the other bound at 0);
- ``ROUGE-1 baseline``: drop the pairs of lowest unigram precision against the document (ties by
  id), as many as the span rule drops;
- ``LM P(yes)`` (``--lm N``, default 40): SmolLM2-135M asked whether the summary is supported, on N
  planted copies and their N originals, dropping below the median score (the scorer's 0.5 default
  drops nearly everything); with ``paired``: how often the original scores above its copy.

Columns: pairs removed, real pairs removed (many real leads are unsupported, as in XSum: they are
counted as false positives here, so precision is a lower bound), recall of each planted kind,
``paired``: of the extrinsic copies whose real original the method keeps, the share it removes
(the change itself caught), and precision (planted removed / removed). The last line is the
ratio of extrinsic recall, rule to baseline.

    flock /tmp/llm4all-bench.lock .venv/bin/python benchmarks/factual_consistency.py [--lm N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

KINDS = ("extrinsic_entity", "extrinsic_number", "intrinsic_entity", "intrinsic_number")


def load() -> list:
    from llm4all.data.pairs import read_pairs
    from llm4all.data.summaries import shipped_path

    return list(read_pairs(shipped_path()))


def rule(pairs: list, match: str, entities: bool = True, numbers: bool = True) -> np.ndarray:
    """True where the factual selector (with these halves of the rule) drops the pair."""
    from llm4all.curate.select.factual import Factual

    select = Factual(min_entity_precision=1.0 if entities else 0.0,
                     min_number_precision=1.0 if numbers else 0.0, match=match)
    decisions = select([p.id for p in pairs], [p.text for p in pairs], {}, metas=[p.meta for p in pairs])
    return np.array([not d.keep for d in decisions])


def lowest(scores: np.ndarray, n: int) -> np.ndarray:
    """True on the ``n`` lowest scores (ties by position)."""
    drop = np.zeros(len(scores), bool)
    drop[np.lexsort((np.arange(len(scores)), scores))[:n]] = True
    return drop


def row(name: str, pairs: list, drop: np.ndarray, seconds: float) -> dict:
    kind = np.array([p.meta.get("planted", "real") for p in pairs])
    index = {p.id: i for i, p in enumerate(pairs)}
    out = {"method": name, "pairs": len(pairs), "removed": int(drop.sum()),
           "real_removed": f"{drop[kind == 'real'].sum()}/{(kind == 'real').sum()}",
           "seconds": f"{seconds:.1f}"}
    for k in KINDS:
        out[k] = f"{drop[kind == k].sum()}/{(kind == k).sum()}"
    extrinsic = np.isin(kind, KINDS[:2])
    out["extrinsic_recall"] = float(drop[extrinsic].mean())
    orig_kept = np.array([p.meta.get("of") in index and not drop[index[p.meta["of"]]] for p in pairs])
    copies = extrinsic & orig_kept
    out["paired"] = f"{drop[copies].sum()}/{copies.sum()}"
    planted = kind != "real"
    out["precision"] = float(drop[planted].sum() / max(drop.sum(), 1))
    return out


def timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    return fn(), time.perf_counter() - start


def lm_rows(pairs: list, n: int) -> tuple[dict, str]:
    """The LM scorer on n planted copies (spread over the kinds) and their originals."""
    from llm4all.curate.entailment import lm_scores

    by_id = {p.id: p for p in pairs}
    copies = [[p for p in pairs if p.meta.get("planted") == k] for k in KINDS]
    chosen = [c for group in copies for c in group[: max(1, n // len(KINDS))]]
    subset = [by_id[c.meta["of"]] for c in chosen] + chosen
    start = time.perf_counter()
    scores = lm_scores([p.meta["document"] for p in subset], [p.text for p in subset], "smollm2-135m",
                       dtype="float32", batch_size=4, max_tokens=384)
    seconds = time.perf_counter() - start
    drop = scores < np.median(scores)
    m = len(chosen)
    wins = int((scores[:m] > scores[m:]).sum())
    return row(f"LM P(yes) < median ({m}+{m} pairs)", subset, drop, seconds), f"{wins}/{m}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", type=int, default=40, help="planted copies scored by the LM (0: skip)")
    args = parser.parse_args()
    from llm4all.curate.entities import Source, unigram_precision

    pairs = load()
    rows = []
    span, seconds = timed(lambda: rule(pairs, "span"))
    rows.append(row("entities+numbers (span)", pairs, span, seconds))
    for name, fn in (("entities+numbers (nan2021)", lambda: rule(pairs, "nan2021")),
                     ("numbers only", lambda: rule(pairs, "span", entities=False)),
                     ("entities only (span)", lambda: rule(pairs, "span", numbers=False))):
        rows.append(row(name, pairs, *timed(fn)))
    overlap, seconds = timed(lambda: np.array([unigram_precision(p.text, Source(p.meta["document"]))
                                               for p in pairs]))
    rows.append(row("ROUGE-1 baseline (same removals)", pairs, lowest(overlap, int(span.sum())), seconds))
    paired = None
    if args.lm:
        lm_row, paired = lm_rows(pairs, args.lm)
        rows.append(lm_row)
    columns = ["method", "removed", "real_removed", *KINDS, "extrinsic_recall", "paired", "precision",
               "seconds"]
    widths = {c: max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in columns}
    print(" | ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print(" | ".join(_fmt(r[c]).ljust(widths[c]) for c in columns))
    if paired:
        print(f"LM: the original scored above its planted copy in {paired} pairs")
    base = rows[4]["extrinsic_recall"]
    ours = rows[0]["extrinsic_recall"]
    print(f"extrinsic recall at {int(span.sum())} removals: entity precision {ours:.3f} "
          f"vs ROUGE-1 baseline {base:.3f} = {ours / max(base, 1e-9):.2f}x")


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    main()
