"""Plant labelled near-duplicates and junk into a corpus, to measure what curation removes.

A curation pipeline is only as good as its recall on the problems it claims to fix. This
module makes those problems on purpose, deterministically from a seed, and labels each
planted document (``meta.planted``: the kind, ``meta.of``: the source document), so a run's
``removed.jsonl.zst`` can be scored: which planted documents were caught, by which step.

Kinds:
- ``exact_copy``: the same text with case and spacing changed (exact dedup after
  normalisation should catch it);
- ``near_copy``: ~``rate`` of the words deleted, inserted or substituted (MinHash at Jaccard
  0.8 catches light edits; heavier ones fall below the threshold by design);
- ``boilerplate``: navigation/cookie-banner lines repeated (Gopher repetition rules);
- ``keyword_spam``: one phrase repeated (top n-gram fraction);
- ``symbols``: symbol and number noise (alpha-word fraction, symbol ratio);
- ``fragment``: a few words cut from a document (word-count minimum).
"""

from __future__ import annotations

import random
from pathlib import Path

from llm4all.data.document import Document
from llm4all.errors import UserError

NAV = ["Home | About us | Products | Blog | Contact | Login", "Accept all cookies  Reject  Settings",
       "Share on Facebook  Share on Twitter  Print this page", "Copyright (c) All rights reserved.",
       "Subscribe to our newsletter!", "Terms of use | Privacy policy | Sitemap"]
SPAM = ["best cheap deals online", "buy now free shipping", "click here to win", "top rated discount"]


def perturb(text: str, rate: float, vocab: list[str], rng: random.Random) -> str:
    """A copy with ~rate of its words deleted/inserted/substituted, plus case and spacing noise."""
    out: list[str] = []
    for w in text.split():
        if rng.random() < rate:
            op = rng.choice(("delete", "insert", "substitute"))
            if op == "insert":
                out += [w, rng.choice(vocab)]
            elif op == "substitute":
                out.append(rng.choice(vocab))
            continue
        out.append(w.upper() if rng.random() < 0.05 else w)
    return "  ".join(out) if rng.random() < 0.5 else "\n".join(out)


def junk(kind: str, source: str, rng: random.Random) -> str:
    """One junk document of ``kind`` made from (or beside) ``source``."""
    if kind == "boilerplate":
        lines = [rng.choice(NAV) for _ in range(rng.randint(20, 40))]
        return "\n".join(lines[:3] + source.split("\n")[:2] + lines[3:])
    if kind == "keyword_spam":
        phrase = rng.choice(SPAM)
        return " ".join([phrase] * rng.randint(40, 80)) + "."
    if kind == "symbols":
        chars = "#$%&*@~^|<>{}[]0123456789"
        return " ".join("".join(rng.choice(chars) for _ in range(rng.randint(2, 8)))
                        for _ in range(rng.randint(80, 200)))
    if kind == "fragment":
        words = source.split()
        start = rng.randrange(max(len(words) - 8, 1))
        return " ".join(words[start : start + rng.randint(3, 8)])
    raise UserError(f"unknown junk kind {kind!r}; valid: boilerplate, keyword_spam, symbols, fragment")


def plant(docs: list[Document], fraction: float = 0.05, seed: int = 0,
          rates: tuple[float, ...] = (0.01, 0.03, 0.05)) -> list[Document]:
    """Planted documents (not the originals) for ``fraction`` of ``docs``, labelled in meta."""
    if not 0 < fraction <= 1:
        raise UserError(f"--fraction must be in (0, 1], got {fraction}")
    if not docs:
        raise UserError("nothing to plant into: no documents")
    rng = random.Random(seed)
    vocab = sorted({w for d in docs[:2000] for w in d.text.split()[:500]})
    sources = rng.sample(range(len(docs)), max(1, int(fraction * len(docs))))
    kinds = ["exact_copy", "near_copy", "near_copy", "boilerplate", "keyword_spam", "symbols", "fragment"]
    out = []
    for n, i in enumerate(sources):
        src, kind = docs[i], kinds[n % len(kinds)]
        meta = {"planted": kind, "of": src.id, "lang": src.meta.get("lang", "en"), "source": "planted"}
        if kind == "exact_copy":
            text = "  ".join(src.text.upper().split()) if n % 2 else src.text.lower()
        elif kind == "near_copy":
            meta["rate"] = rates[n % len(rates)]
            text = perturb(src.text, meta["rate"], vocab, rng)
        else:
            text = junk(kind, src.text, rng)
        out.append(Document(f"planted/{kind}/{n:05d}", text, meta))
    return out


def main(data: list[Path], *, out: Path, fraction: float = 0.05, seed: int = 0) -> dict:
    """Write labelled near-duplicates and junk made from DATA to OUT (a .jsonl.zst file).

    The stage manifest goes beside OUT (``llm4all.json`` in its folder): what was read, how
    many documents of each kind were planted, and the file written.

    Args:
        data: document files or folders to copy and spoil.
        out: output file (.jsonl, .jsonl.gz, .jsonl.zst or .parquet).
        fraction: planted documents per original document.
        seed: random seed (same seed, same data: same bytes).
    """
    from collections import Counter

    from llm4all.data.readers import read_documents
    from llm4all.data.writers import write_documents
    from llm4all.runs import MANIFEST, read_manifest, write_manifest

    folder = Path(out).parent
    if (folder / MANIFEST).exists() and (read_manifest(folder) or {}).get("command") != "plant":
        raise UserError(f"{folder / MANIFEST} belongs to another stage (or not to llm4all); "
                        "write --out into a folder of its own")
    docs = list(read_documents(data))
    planted = plant(docs, fraction, seed)
    write_documents(out, planted)
    counts = dict(Counter(d.meta["planted"] for d in planted))
    write_manifest(folder, "plant", inputs={"data": [str(p) for p in data]},
                   files={"documents": Path(out).name}, arguments={"fraction": fraction, "seed": seed},
                   metrics={"read": len(docs), "planted": len(planted), "by_kind": counts})
    print(f"planted {len(planted)} documents -> {out}: {counts}")
    return counts
