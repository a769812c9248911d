"""Claim (issue 19 item 1): prompt compression with a small model keeps zero-shot accuracy on long
distractor contexts better than dropping tokens at random, at 2x, 4x and 8x, and what it costs or
saves end to end.

Tasks: the shipped zero-shot tasks, each item buried in deterministic distractor text (built
from the shipped JSONL files only; ``random.Random(item id)`` orders everything):

- ``demo-cloze``: the question is the paragraph's last, unfinished sentence (the target word
  completes it); the paragraph's earlier sentences are the true context, put at a random place
  among whole paragraphs of *other* documents' items until the context holds ``--context-tokens``
  tokens. The prompt is ``context + "\\n\\n" + question``; the item is right when greedy decoding
  gives the target (acc, as the task scores it).
- ``kjv-next-verse``: the question is the verse whose successor is asked; the true context is the
  chapter's verses before it (the items' own contexts), put at a random place among passages of
  *other* chapters' verses (none of them one of the item's four choices). Right when the true
  next verse has the highest log-likelihood (acc).

Rows, all with SmolLM2-135M (``smollm2-135m``, fp32) as compressor and scorer, on the same items
(``--limit`` of each task, spread evenly over it), interleaved item by item: the question alone
(how much any context adds), the item as shipped (no distractors), the full long prompt, and at
2x, 4x, 8x (the context's tokens before / after; the question is kept whole in every row):
``lingua`` (LLMLingua), ``longlingua`` (LongLLMLingua, question-aware) and ``random`` (seeded
uniform token dropping). Besides accuracy, the gold continuation's negative log-likelihood
(nats, mean over items; lower: the prompt supports the answer better), which moves long before
accuracy does on a few items. Latency per item = compression + scoring (every choice's
log-likelihood), wall clock, torch threads on the free cores. Last line: the accuracy of
question-aware 4x over random 4x, items of both tasks pooled.

    flock /tmp/llm4all-bench.lock .venv/bin/python benchmarks/prompt_compression.py [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections import defaultdict
from pathlib import Path

import torch

from llm4all.compress.prompt import compress_prompt, sentence_spans
from llm4all.evaluate.tasks import TASK_DIR, loglikelihoods
from llm4all.models.load import load
from llm4all.threads import free_cores

RATIOS = (2, 4, 8)
METHODS = ("lingua", "longlingua", "random")


def read(name: str) -> list[dict]:
    return [json.loads(x) for x in (TASK_DIR / f"{name}.jsonl").read_text().splitlines() if x.strip()]


def assemble(body: str, distractors: list[str], rng: random.Random, count, tokens: int) -> str:
    """The true context at a random place among distractor pieces, enough of them for ``tokens``."""
    pieces, n = [], count(body) if body else 0
    for d in distractors:
        if n >= tokens:
            break
        pieces.append(d)
        n += count(d)
    if body:
        pieces.insert(rng.randint(0, len(pieces)), body)
    return "\n\n".join(pieces)


def cloze_items(count, tokens: int) -> list[dict]:
    items = read("demo-cloze")
    out = []
    for it in items:
        rng = random.Random(it["id"])
        a, _ = sentence_spans(it["context"])[-1]
        body, question = it["context"][:a].strip(), it["context"][a:].strip()
        doc = it["id"].split("#")[0]
        others = [f"{o['context']} {o['target']}" for o in items if o["id"].split("#")[0] != doc]
        rng.shuffle(others)
        out.append({"task": "demo-cloze", "id": it["id"], "original": it["context"], "question": question,
                    "context": assemble(body, others, rng, count, tokens), "choices": [it["target"]],
                    "gold": 0, "cloze": True})
    return out


def verse_items(count, tokens: int) -> list[dict]:
    items = read("kjv-next-verse")
    chapters: dict[str, list[str]] = defaultdict(list)
    for it in items:  # an item's context is verse i of its chapter, items in verse order
        chapters[it["id"].rsplit(":", 1)[0]].append(it["context"])
    out = []
    for it in items:
        rng = random.Random(it["id"])
        chapter, i = it["id"].rsplit(":", 1)
        body = " ".join(chapters[chapter][: int(i) - 1])
        passages = []
        for other, verses in sorted(chapters.items()):
            kept = [v for v in verses if v not in it["choices"]]
            if other != chapter and kept:
                start = rng.randrange(len(kept))
                passages.append(" ".join(kept[start : start + 4]))
        rng.shuffle(passages)
        out.append({"task": "kjv-next-verse", "id": it["id"], "original": it["context"],
                    "question": it["context"], "context": assemble(body, passages, rng, count, tokens),
                    "choices": it["choices"], "gold": it["label"], "cloze": False})
    return out


def score(model, tok, prompt: str, item: dict) -> tuple[bool, float, float]:
    """(right?, the gold continuation's negative log-likelihood in nats, seconds)."""
    start = time.perf_counter()
    lls = loglikelihoods(model, tok, [(prompt, " " + c) for c in item["choices"]], batch_size=4)
    seconds = time.perf_counter() - start
    hit = lls[0][1] if item["cloze"] else max(range(len(lls)), key=lambda j: lls[j][0]) == item["gold"]
    return hit, -lls[item["gold"]][0], seconds


def run_item(model, tok, item: dict, count) -> list[dict]:
    full = f"{item['context']}\n\n{item['question']}"
    rows = []
    shipped = (("question only (no context)", item["question"]),
               ("as shipped (no distractors)", item["original"]), ("full prompt", full))
    for name, prompt in shipped:
        hit, nll, s = score(model, tok, prompt, item)
        rows.append({"row": name, "ratio": 1, "hit": hit, "nll": nll, "compress_s": 0.0, "score_s": s,
                     "tokens": count(prompt), "ctx_ratio": 1.0})
    for ratio in RATIOS:
        for method in METHODS:
            r = compress_prompt(model, tok, item["context"], question=item["question"], ratio=ratio,
                                method=method, seed=0)
            hit, nll, s = score(model, tok, r.prompt, item)
            rows.append({"row": f"{method} {ratio}x", "ratio": ratio, "hit": hit, "nll": nll,
                         "compress_s": r.seconds, "score_s": s, "tokens": r.prompt_tokens_after,
                         "ctx_ratio": r.ratio})
    return rows


def table(results: dict[str, list[list[dict]]]) -> dict[tuple[str, str], float]:
    print(f"{'task':<15} {'prompt':<28} {'acc':>6} {'gold nll':>9} {'tokens':>7} {'ctx x':>6} "
          f"{'compress s':>11} {'score s':>8} {'total s':>8} {'vs full':>8}")
    accs = {}
    for task, per_item in results.items():
        names = [r["row"] for r in per_item[0]]
        mean = lambda key, j, p=per_item: sum(rows[j][key] for rows in p) / len(p)  # noqa: E731
        full_total = mean("compress_s", 2) + mean("score_s", 2)
        for j, name in enumerate(names):
            total = mean("compress_s", j) + mean("score_s", j)
            accs[task, name] = mean("hit", j)
            print(f"{task:<15} {name:<28} {accs[task, name]:>6.3f} {mean('nll', j):>9.3f} "
                  f"{mean('tokens', j):>7.0f} {mean('ctx_ratio', j):>6.2f} {mean('compress_s', j):>11.3f} "
                  f"{mean('score_s', j):>8.3f} {total:>8.3f} {full_total / total:>7.2f}x")
    return accs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=12, help="items per task, spread evenly over it")
    parser.add_argument("--context-tokens", type=int, default=512, help="distractor context length")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the free cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    args = parser.parse_args()
    torch.set_num_threads(free_cores(args.threads))  # 2 threads on 1 free core run 3x slower than 1
    start = time.perf_counter()
    print(f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{torch.get_num_threads()} torch threads")
    model, tok = load(args.model)
    count = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    results = {}
    for items in (cloze_items(count, args.context_tokens), verse_items(count, args.context_tokens)):
        items = items[:: max(1, len(items) // args.limit)][: args.limit]  # spread over documents
        results[items[0]["task"]] = [run_item(model, tok, it, count) for it in items]
        print(f"{items[0]['task']}: {len(items)} items, {time.perf_counter() - start:.0f} s", flush=True)
    accs = table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"{time.perf_counter() - start:.0f} s; load average at end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    n = {task: len(rows) for task, rows in results.items()}
    pooled = lambda name: sum(accs[t, name] * n[t] for t in n) / sum(n.values())  # noqa: E731
    q, r = pooled("longlingua 4x"), pooled("random 4x")
    print(f"accuracy of question-aware (longlingua) 4x / random 4x: {q:.3f} / {r:.3f} = "
          f"{q / r if r else float('inf'):.2f}")


if __name__ == "__main__":
    main()
