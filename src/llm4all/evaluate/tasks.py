"""Zero-shot tasks scored by log-likelihood: multiple choice (acc, acc_norm) and cloze (LAMBADA).

A task is a YAML file plus a JSONL file of items (one JSON object per line)::

    name: kjv-next-verse
    description: which verse follows this one
    type: multiple_choice          # or cloze
    data: kjv-next-verse.jsonl     # relative to the YAML file
    template: "{context}"          # the context; {field} is filled from the item
    choices: choices               # an item field holding the list, or a literal list
    answer: label                  # an item field: index into choices (or the choice text)
    target_delimiter: " "          # put between context and each continuation (lm-eval's default)
    metrics: [acc, acc_norm]
    few_shot: 0

Scoring follows lm-evaluation-harness (Gao et al. 2021-2024, ``lm_eval/api/task.py``
``process_results``): each continuation's log-likelihood is summed over its tokens given the
context, ``acc`` takes the argmax, ``acc_norm`` the argmax of log-likelihood divided by the
continuation's length in characters (``completion_len = len(choice)``). A cloze item (``type:
cloze``; LAMBADA, Paperno et al. 2016) has one continuation; ``acc`` is 1 when greedy decoding
reproduces every token of it, and ``ppl`` is exp(mean negative log-likelihood per item), as
lm-eval's ``lambada_openai`` reports.

Context and continuation are tokenised as lm-eval's HFLM ``_encode_pair`` does: the whole string
is encoded once and the continuation is what follows the context's tokens; spaces at the end of
the context move to the continuation. One forward pass per (context, continuation) pair,
batched; logits are computed only at continuation positions.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llm4all.errors import UserError, did_you_mean
from llm4all.runs import write_json, write_manifest

#: the shipped task files
TASK_DIR = Path(__file__).with_name("tasks")
TYPES = ("multiple_choice", "cloze")
METRICS = {"multiple_choice": ("acc", "acc_norm"), "cloze": ("acc", "ppl")}


@dataclass
class Task:
    name: str
    type: str
    template: str
    answer: str
    items: list[dict]
    choices: str | list[str] | None = None
    metrics: list[str] = field(default_factory=list)
    target_delimiter: str = " "
    description: str = ""
    source: str = ""
    data: Path | None = None  # the JSONL file the items came from

    def context(self, item: dict) -> str:
        try:
            return self.template.format(**item)
        except KeyError as e:
            raise UserError(f"task {self.name}: template field {e} is not in item "
                            f"{item.get('id', '?')}") from e

    def continuations(self, item: dict) -> tuple[list[str], int]:
        """The (choice texts, gold index) of an item; a cloze item has one choice, index 0."""
        if self.type == "cloze":
            return [item[self.answer]], 0
        choices = self.choices if isinstance(self.choices, list) else item[self.choices]
        gold = item[self.answer]
        if isinstance(gold, str):
            if gold not in choices:
                raise UserError(f"task {self.name}: answer {gold!r} is not one of the choices {choices}")
            gold = choices.index(gold)
        if not 0 <= gold < len(choices):
            raise UserError(f"task {self.name}: answer index {gold} out of range for {len(choices)} choices")
        return list(choices), int(gold)


def task_names() -> list[str]:
    return sorted(p.stem for p in TASK_DIR.glob("*.yaml"))


def load_task(name_or_path: str | Path) -> Task:
    """A shipped task by name (``llm4all eval tasks --help`` lists them) or a task YAML file."""
    import yaml

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        if str(name_or_path) not in task_names():
            raise UserError(f"unknown task {str(name_or_path)!r}: not a YAML file; shipped tasks "
                            f"{did_you_mean(str(name_or_path), task_names())}")
        path = TASK_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserError(f"{path}: no such task file")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(spec, dict):
        raise UserError(f"{path}: a task file must be a YAML mapping")
    ttype = spec.get("type", "multiple_choice")
    if ttype not in TYPES:
        raise UserError(f"{path}: key 'type' must be one of {', '.join(TYPES)}, got {ttype!r}")
    required = ["name", "data", "template", "answer"] + (["choices"] if ttype == "multiple_choice" else [])
    for key in required:
        if key not in spec:
            raise UserError(f"{path}: missing key {key!r} (a {ttype} task needs {', '.join(required)})")
    if spec.get("few_shot", 0) != 0:
        raise UserError(f"{path}: key 'few_shot' must be 0 (only zero-shot evaluation is implemented)")
    metrics = spec.get("metrics", list(METRICS[ttype]))
    bad = [m for m in metrics if m not in METRICS[ttype]]
    if bad:
        raise UserError(f"{path}: key 'metrics' has {bad}; valid for {ttype}: {', '.join(METRICS[ttype])}")
    known = {"name", "description", "source", "type", "data", "template", "choices", "answer",
             "target_delimiter", "metrics", "few_shot"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}; {did_you_mean(unknown[0], sorted(known))}")
    data = path.parent / spec["data"]
    if not data.is_file():
        raise UserError(f"{path}: key 'data' names {data}, which does not exist")
    items = []
    for n, line in enumerate(data.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{data}:{n}: not valid JSON: {e.msg}") from e
    if not items:
        raise UserError(f"{data}: no items")
    task = Task(name=spec["name"], type=ttype, template=spec["template"], answer=spec["answer"],
                items=items, choices=spec.get("choices"), metrics=metrics,
                target_delimiter=spec.get("target_delimiter", " "),
                description=spec.get("description", ""), source=spec.get("source", ""), data=data.resolve())
    for n, item in enumerate(items, 1):
        missing = [k for k in (task.answer, *([task.choices] if isinstance(task.choices, str) else []))
                   if k not in item]
        if missing:
            raise UserError(f"{data}:{n}: item has no field {missing[0]!r} (named by the task's YAML)")
    return task


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-eval's HFLM ``_encode_pair`` makes them."""
    n_space = len(context) - len(context.rstrip())
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
    cont = whole[len(ctx):]
    if not cont or whole[: len(ctx)] != ctx:  # the join merged across the boundary: encode apart
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not ctx:  # condition an empty context on BOS (or EOS), as lm-eval's prefix_token_id
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ctx = [prefix]
    if not cont:
        raise UserError(f"continuation {continuation!r} encodes to no tokens")
    return ctx, cont


def loglikelihoods(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 16,
                   max_length: int | None = None, advance=None) -> list[tuple[float, bool, int]]:
    """(summed log-prob in nats, greedy?, n tokens) of each continuation given its context.

    Rows are sorted by length and right-padded: with causal attention, padding after the real
    tokens cannot change them, so no attention mask is needed. Contexts longer than
    ``max_length`` (default: the model's maximum positions) lose their oldest tokens.
    """
    import torch

    from llm4all.models.device import model_device

    device = model_device(model)
    max_length = max_length or getattr(model.config, "max_position_embeddings", 2048)
    encoded = [encode_pair(tokenizer, c, x) for c, x in pairs]
    rows = [(ctx + cont)[-(max_length + 1):][:-1] for ctx, cont in encoded]  # inputs predict the next token
    order = sorted(range(len(pairs)), key=lambda i: -len(rows[i]))
    out: list[tuple[float, bool, int] | None] = [None] * len(pairs)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    head = model.get_output_embeddings()
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            T = len(rows[idx[0]])
            x = torch.zeros(len(idx), T, dtype=torch.long)
            if advance is not None:
                advance(len(idx))
            for b, i in enumerate(idx):
                x[b, : len(rows[i])] = torch.tensor(rows[i])
            x = x.to(device)
            if decoder is not None:
                hidden = decoder(input_ids=x).last_hidden_state  # (B, T, H)
            else:
                logits_all = model(input_ids=x).logits  # (B, T, V)
            for b, i in enumerate(idx):
                cont = encoded[i][1]
                n, end = len(cont), len(rows[i])
                pos = slice(end - n, end)  # the positions whose next token is a continuation token
                logits = head(hidden[b, pos]) if decoder is not None else logits_all[b, pos]
                logp = torch.log_softmax(logits.float(), dim=-1)  # (n, V)
                target = torch.tensor(cont, device=device)
                total = logp.gather(-1, target[:, None]).double().sum().item()
                out[i] = (total, bool((logp.argmax(-1) == target).all()), n)
    return out  # type: ignore[return-value]


def score_task(model, tokenizer, task: Task, batch_size: int = 16, limit: int | None = None,
               progress=None) -> dict:
    """Metrics of one task (module docstring) and per-item predictions; ``progress``: a
    ``progress.progress``-like context factory (description, total, unit) for a bar."""
    items = task.items[:limit] if limit else task.items
    pairs, spans = [], []
    for item in items:
        ctx = task.context(item)
        choices, gold = task.continuations(item)
        spans.append((len(pairs), choices, gold))
        pairs += [(ctx, task.target_delimiter + c) for c in choices]
    if progress is None:
        lls = loglikelihoods(model, tokenizer, pairs, batch_size)
    else:
        with progress(f"task {task.name}", len(pairs), "continuations") as advance:
            lls = loglikelihoods(model, tokenizer, pairs, batch_size, advance=advance)
    acc = acc_norm = nll = 0.0
    rows = []
    for item, (start, choices, gold) in zip(items, spans, strict=True):
        ll = [lls[start + j][0] for j in range(len(choices))]
        if task.type == "cloze":
            hit = lls[start][1]
            nll -= ll[0]
            rows.append({"id": item.get("id"), "loglikelihood": ll[0], "greedy": hit})
            acc += hit
            continue
        pred = max(range(len(ll)), key=ll.__getitem__)
        pred_norm = max(range(len(ll)), key=lambda j: ll[j] / len(choices[j]))  # chars, as lm-eval
        acc += pred == gold
        acc_norm += pred_norm == gold
        rows.append({"id": item.get("id"), "gold": gold, "pred": pred, "pred_norm": pred_norm,
                     "loglikelihoods": ll})
    n = len(items)
    metrics = {"acc": acc / n}
    if task.type == "cloze":
        metrics["ppl"] = math.exp(nll / n)
    else:
        metrics["acc_norm"] = acc_norm / n
    metrics = {k: v for k, v in metrics.items() if k in task.metrics}
    chance = None if task.type == "cloze" else sum(1 / len(s[1]) for s in spans) / n
    return {"task": task.name, "type": task.type, "items": n, **metrics, "chance": chance,
            "predictions": rows}


def main(
    model: str,
    *,
    tasks: list[str] | None = None,
    batch_size: int = 16,
    dtype: Literal["float32", "bfloat16"] = "float32",
    limit: int | None = None,
    device: str = "auto",
    out: Path | None = None,
) -> dict:
    """Zero-shot log-likelihood tasks (multiple choice, cloze) on MODEL.

    Args:
        model: a registered name, an HF directory or a .gguf file.
        tasks: shipped task names or task YAML files (default: every shipped task).
        batch_size: (context, continuation) pairs per forward pass.
        dtype: float32 or bfloat16 weights (log-probabilities are summed in fp32).
        limit: score only the first N items of each task (quick runs).
        device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N.
        out: directory for tasks.json and per-task predictions (nothing written if not given).
    """
    from rich.console import Console
    from rich.table import Table

    from llm4all.models.device import resolve_device
    from llm4all.models.load import load
    from llm4all.progress import progress

    if batch_size < 1 or (limit is not None and limit < 1):
        raise UserError("--batch-size and --limit must be at least 1")
    loaded = [load_task(t) for t in (tasks or task_names())]  # fail on a bad task before loading
    net, tokenizer = load(model, dtype=dtype, device=str(resolve_device(device)))
    results = {}
    for task in loaded:
        start = time.perf_counter()
        r = score_task(net, tokenizer, task, batch_size, limit, progress=progress)
        r["seconds"] = round(time.perf_counter() - start, 2)
        results[task.name] = r
    table = Table(title=f"zero-shot tasks: {model} ({dtype})")
    for col in ("task", "items", "acc", "acc_norm", "ppl", "chance", "s"):
        table.add_column(col, justify="right" if col != "task" else "left")
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    for r in results.values():
        table.add_row(r["task"], str(r["items"]), fmt(r.get("acc")), fmt(r.get("acc_norm")),
                      fmt(r.get("ppl")), fmt(r["chance"]), f"{r['seconds']:.1f}")
    Console().print(table)
    summary = {"model": str(model), "dtype": dtype, "limit": limit,
               "results": {k: {m: v for m, v in r.items() if m != "predictions"} for k, r in results.items()}}
    if out is not None:
        for name, r in results.items():
            write_json(Path(out) / f"{name}.predictions.json", r["predictions"])
        write_json(Path(out) / "tasks.json", summary)
        accs = {k: r["acc"] for k, r in summary["results"].items() if r.get("acc") is not None}
        write_manifest(out, "eval tasks", inputs={"model": str(model)},
                       metrics={"tasks_acc": sum(accs.values()) / len(accs) if accs else None, "acc": accs,
                                "limit": limit}, results=summary)
    return summary


# -- the shipped tasks, rebuilt deterministically from the demo corpus (data/demo) -------------------

def _held_out(demo: Path, part: str):
    """Documents of one demo part in the validation split of `llm4all tokenize` (2% by id hash)."""
    from llm4all.data.readers import read_documents
    from llm4all.data.tokenize import split_of

    for doc in read_documents(demo / "en" / f"{part}.jsonl.zst"):
        if split_of(doc.id, 0.02) == "validation":
            yield doc


def build_demo_cloze(demo: Path, per_doc: int = 5, n: int = 200) -> list[dict]:
    """LAMBADA-style items: a held-out paragraph without its last word, the word as target.

    Paragraphs (blank-line separated, whitespace collapsed) of the held-out English fortunes,
    pydoc and debref-en documents, in corpus order, with 25-150 words, no ``--`` attribution
    line (an author's name is not predictable from the text), whose last word, stripped of
    trailing punctuation, is at least 3 letters; the first ``per_doc`` per document, ``n`` in all.
    """
    items = []
    for part in ("fortunes", "pydoc", "debref-en"):
        for doc in _held_out(demo, part):
            taken = 0
            for para in doc.text.split("\n\n"):
                if "--" in para or taken == per_doc or len(items) == n:
                    continue
                words = para.split()
                last = words[-1].rstrip(".,;:!?\"')") if words else ""
                if not 25 <= len(words) <= 150 or len(last) < 3 or not last.isalpha():
                    continue
                context = " ".join(words[:-1])
                items.append({"id": f"{doc.id}#{taken}", "context": context, "target": last})
                taken += 1
    return items


def build_kjv_next_verse(demo: Path, per_chapter: int = 10, n_distractors: int = 3) -> list[dict]:
    """Which verse follows this one: the true next verse against verses of other chapters.

    Held-out KJV chapters; for the first ``per_chapter`` verses i of each (that have a next
    verse), the choices are verse i+1 and ``n_distractors`` verses drawn from the other held-out
    chapters by ``random.Random(f"{chapter id}:{i}")``, shuffled by the same generator.
    """
    import random
    import re

    chapters = {}
    for doc in _held_out(demo, "kjv"):
        verses = [re.sub(r"^\d+ ", "", line) for line in doc.text.split("\n\n", 1)[1].splitlines() if line]
        chapters[doc.id] = verses
    items = []
    for cid, verses in chapters.items():
        pool = [v for other, vs in chapters.items() if other != cid for v in vs]
        for i in range(min(per_chapter, len(verses) - 1)):
            rng = random.Random(f"{cid}:{i}")
            choices = [verses[i + 1], *rng.sample(pool, n_distractors)]
            order = list(range(len(choices)))
            rng.shuffle(order)
            items.append({"id": f"{cid}:{i + 1}", "context": verses[i],
                          "choices": [choices[j] for j in order], "label": order.index(0)})
    return items


def write_shipped(demo: Path, out: Path = TASK_DIR) -> None:
    """Rebuild the shipped JSONL files from the demo corpus (``python -m llm4all.evaluate.tasks``)."""
    from llm4all.runs import atomic_path

    for name, items in (("demo-cloze", build_demo_cloze(demo)),
                        ("kjv-next-verse", build_kjv_next_verse(demo))):
        lines = "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items)
        with atomic_path(out / f"{name}.jsonl") as tmp:
            tmp.write_text(lines, encoding="utf-8")
        print(f"{out / name}.jsonl: {len(items)} items")


if __name__ == "__main__":
    from llm4all.data.demo import demo_corpus_path

    write_shipped(demo_corpus_path())
