"""A summarisation set from the demo corpus, with planted unsupported summaries (issue 19 item 5).

**Real pairs**, XSum-style (Narayan et al. 2018: a BBC article's introductory sentence is the
summary, the rest of the article the document): the lead sentence of a text is the summary and
the text after it, up to ``MAX_DOCUMENT`` characters of whole paragraphs, is the document.
Nothing is written by a model; the parts are the demo corpus's English prose:

- ``debref-en`` (Debian Reference, GPL-2+): each numbered section; the lead is the first
  sentence of its first prose paragraph;
- ``pydoc`` (Python 3.11 documentation, PSF-2.0): each page; the lead is the first sentence of
  its first prose paragraph (after "Source code:" and availability notes);
- ``kjv`` (King James Version, public domain): every ``KJV_EVERY``-th chapter; the lead is
  verse 1, the document the verses after it (without their numbers).

A lead of fewer than ``MIN_WORDS`` words takes the next sentence too; a pair is kept when its
summary has a capitalised word or a number that the document also has (a pair with neither has no
entity to check: Nan et al. 2021's precision is undefined there). As in XSum, a real lead may
name what the rest of the text does not: real pairs are not all supported.

**Planted pairs**: copies of real pairs whose summary has one change (a number change for every
pair with a number to change, an entity change for about ``PLANT_FRACTION`` of the pairs, chosen
by a hash of the id), recorded in ``meta.change`` (``from``, ``to``) with
``meta.planted`` (the kind) and ``meta.of`` (the real pair's id). The kinds follow Maynez et al.
2020's extrinsic / intrinsic hallucinations:

- ``extrinsic_entity``: a capitalised word that the document has, replaced by one from another
  pair's summary of the same part that the document does not have;
- ``extrinsic_number``: a number the document has (digits or an English number word), replaced
  by one the document does not have;
- ``intrinsic_entity`` / ``intrinsic_number``: the same, replaced by another capitalised word or
  number *of the document*: the summary is wrong, but every name and number in it is in the
  document (what entity-level precision cannot see, by design).

The candidates are found by the simple patterns below, independent of ``curate/entities.py``, so
the filter is not scored against its own rules. Choices are made by a hash of the pair's id:
``main`` rebuilds the same file (a test checks it equals the shipped one).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from pathlib import Path

PARTS = ("debref-en", "pydoc", "kjv")
MAX_DOCUMENT = 2500  # characters of whole paragraphs (or verses) after the lead
MIN_DOCUMENT = 300
MIN_WORDS, MAX_WORDS = 8, 60  # words of a lead
KJV_EVERY = 3  # one chapter in three
PLANT_FRACTION = 0.5
KINDS = ("extrinsic_entity", "extrinsic_number", "intrinsic_entity", "intrinsic_number")
SKIP_PARAGRAPHS = ("Source code:", "Availability:", "Deprecated since", "New in version",
                   "Changed in version")

_SENTENCE_END = re.compile(r"(?<!\be\.g\.)(?<!\bi\.e\.)(?<!\betc\.)(?<!\bvs\.)(?<=[.!?])\s+(?=[A-Z\"“(])")
_NAME = re.compile(r"\b[A-Z][a-z]{2,}\b")
_DIGITS = re.compile(r"(?<![\w.,-])\d+(?![\w.,]\d|\w)")
NUMBER_WORDS = ("two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty "
                "sixty seventy eighty ninety hundred thousand").split()
_NUMBER_WORD = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r")\b")
NOT_NAMES = frozenset("The This That These Those There Then Thus And But For Nor When Where While Which "
                      "What Who How Its Note See For With From Into Unto Also Each Every Some Any All "
                      "When Since Although However".split())


def sentences(paragraph: str) -> list[str]:
    """The paragraph's sentences (a period after e.g., i.e., etc., vs. does not end one)."""
    return [s.strip() for s in _SENTENCE_END.split(paragraph.replace("\n", " ")) if s.strip()]


def _lead(paragraphs: list[str]) -> tuple[str, list[str]] | None:
    """(summary, the paragraphs after it) from the first prose paragraph, or None."""
    for k, p in enumerate(paragraphs):
        words = p.split()
        if len(words) < MIN_WORDS or not p.rstrip().endswith(".") or p.startswith(("$", "-", "#")):
            continue
        sents = sentences(p)
        n = 1 if len(sents[0].split()) >= MIN_WORDS or len(sents) == 1 else 2
        summary = " ".join(sents[:n])
        rest = " ".join(sents[n:])
        if not MIN_WORDS <= len(summary.split()) <= MAX_WORDS:
            return None
        return summary, ([rest] if rest else []) + paragraphs[k + 1:]
    return None


def _document(paragraphs: list[str], sep: str = "\n\n") -> str | None:
    out: list[str] = []
    for p in paragraphs:
        if out and len(sep.join([*out, p])) > MAX_DOCUMENT:
            break
        out.append(p)
    text = sep.join(out).strip()
    return text if len(text) >= MIN_DOCUMENT else None


def names(text: str) -> list[str]:
    """Capitalised words not starting a sentence (the candidates for an entity swap)."""
    out = []
    for sent in sentences(text):
        for m in _NAME.finditer(sent):
            if m.start() > 0 and m[0] not in NOT_NAMES:
                out.append(m[0])
    return list(dict.fromkeys(out))


def number_words(text: str) -> list[str]:
    """Numbers written with digits or as English number words, in order, once each."""
    return list(dict.fromkeys(_DIGITS.findall(text) + _NUMBER_WORD.findall(text)))


def _has(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w.,]){re.escape(word)}(?!\w|[.,]\d)", text, re.IGNORECASE) is not None


def real_pair(doc: dict) -> dict | None:
    """The XSum-style pair of one demo document (its part's rule above), or None."""
    meta, text = doc["meta"], doc["text"]
    part = meta["source"]
    if part == "kjv":
        verses = [re.sub(r"^\d+\s+", "", line) for line in text.split("\n")[1:] if line.strip()]
        if not verses or not MIN_WORDS <= len(verses[0].split()) <= MAX_WORDS:
            return None
        summary, document = verses[0], _document(verses[1:], "\n")
    else:
        if part == "debref-en" and not re.fullmatch(r"\d+(\.\d+)*", str(meta.get("section", ""))):
            return None  # a chapter's introduction or its footnotes
        paragraphs = [p.strip() for p in text.split("\n\n")[1:] if p.strip()]  # after the title
        lead = _lead([p for p in paragraphs if not p.startswith(SKIP_PARAGRAPHS)])
        if lead is None:
            return None
        summary, document = lead[0], _document(lead[1])
    if document is None or not any(_has(document, w) for w in names(summary) + number_words(summary)):
        return None
    return {"id": doc["id"], "document": document, "summary": summary,
            "meta": {"part": part, "license": meta["license"], "lang": meta["lang"]}}


def _rng(key: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big"))


def _replace(summary: str, old: str, new: str) -> str:
    return re.sub(rf"(?<![\w.,]){re.escape(old)}(?!\w|[.,]\d)", new, summary, count=1)


def _number_choices(old: str, document: str, summary: str, inside: bool) -> list[str]:
    """Numbers to put in place of ``old``: ones the document has (``inside``) or has not."""
    if inside:
        return [n for n in number_words(document) if n != old and not _has(summary, n)]
    options = [str(int(old) + d) for d in (1, 2, 3, 5, 7, 10, 11, 13)] if old.isdigit() else NUMBER_WORDS
    return [n for n in options if n != old and not _has(document, n) and not _has(summary, n)]


def plant(pair: dict, kind: str, pool: list[str]) -> dict | None:
    """One planted copy of ``pair`` (a change of ``kind``), or None when it has no candidate.
    ``pool``: capitalised words of other summaries of the part (extrinsic entities come from it)."""
    rng, summary, document = _rng(f"{pair['id']}#{kind}"), pair["summary"], pair["document"]
    entity = kind.endswith("entity")
    olds = [w for w in (names(summary) if entity else number_words(summary)) if _has(document, w)]
    if not olds:
        return None
    old = rng.choice(olds)
    if entity and kind.startswith("extrinsic"):
        choices = [w for w in pool if not _has(document, w) and not _has(summary, w)]
    elif entity:
        choices = [w for w in names(document) if w != old and not _has(summary, w)]
    else:
        choices = _number_choices(old, document, summary, inside=kind.startswith("intrinsic"))
    if not choices:
        return None
    new = rng.choice(sorted(choices))
    return {"id": f"{pair['id']}#{kind}", "document": document, "summary": _replace(summary, old, new),
            "meta": {**pair["meta"], "planted": kind, "of": pair["id"], "change": {"from": old, "to": new}}}


def planted_copies(pair: dict, pool: list[str]) -> list[dict]:
    """The planted copies of a pair: a number change whenever its summary has a number the
    document has (numbers are scarce), and for ``PLANT_FRACTION`` of the pairs (by hash) an entity
    change; extrinsic or intrinsic in a hashed order, the other when the first has no candidate."""
    rng = _rng(pair["id"])
    out = []
    for what, chosen in (("number", True), ("entity", rng.random() < PLANT_FRACTION)):
        if not chosen:
            continue
        for kind in rng.sample([f"extrinsic_{what}", f"intrinsic_{what}"], 2):
            if (planted := plant(pair, kind, pool)) is not None:
                out.append(planted)
                break
    return out


def real_pairs(demo: Path | None = None) -> Iterator[dict]:
    """The real pairs, in the demo corpus's order."""
    from llm4all.data.demo import iter_demo

    chapters = 0
    for doc in iter_demo(lang="en", path=demo):
        if doc["meta"]["source"] not in PARTS:
            continue
        if doc["meta"]["source"] == "kjv":
            chapters += 1
            if chapters % KJV_EVERY != 1:
                continue
        if (pair := real_pair(doc)) is not None:
            yield pair


def build(demo: Path | None = None) -> list[dict]:
    """Every pair of the set: each real pair, followed by its planted copies."""
    real = list(real_pairs(demo))
    pools = {part: sorted({w for p in real if p["meta"]["part"] == part for w in names(p["summary"])})
             for part in PARTS}
    out = []
    for pair in real:
        out.append(pair)
        pool = [w for w in pools[pair["meta"]["part"]] if w not in names(pair["summary"])]
        out.extend(planted_copies(pair, pool))
    return out


SHIPPED = Path("data") / "summaries" / "demo-pairs.jsonl.zst"


def shipped_path() -> Path:
    """The shipped set, data/summaries/demo-pairs.jsonl.zst beside the package source (or under the cwd)."""
    from llm4all.data.demo import shipped_file

    return shipped_file(SHIPPED)


def main(out: Path | None = None) -> Path:
    """Rebuild the summarisation set from the demo corpus and write it (zstd JSONL)."""
    from collections import Counter

    from llm4all.data.demo import write_records

    out = Path(out or shipped_path())
    records = build()
    write_records(out, records)
    kinds = Counter(r["meta"].get("planted", "real") for r in records)
    print(f"{out}: {len(records):,} pairs ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})")
    return out


if __name__ == "__main__":
    main()
