"""A real instruction set built from the demo corpus's documentation (issue 18 item 4).

Nothing here is written by a model: every answer is whole paragraphs of a shipped documentation page,
and every question is the page's own heading, put as a request by a fixed phrase:

- **Python library reference** (``pydoc``, PSF-2.0): each documented function, method or class
  of a ``library/`` page (its signature paragraph, e.g. ``textwrap.dedent(text)``) asked about
  ("What does `textwrap.dedent(text)` do?"), answered by the paragraphs that document it;
- **Debian Reference** (``debref-en``, ``debref-fr``, GPL-2+): each numbered section asked about
  by its title ("Explain “The root account” on a Debian system."), answered by its text;
- **Debian FAQ** (``debian-faq-fr``, the FAQ's permission notice): its section titles are already
  questions ("Qu'est-ce que cette FAQ ?"), answered by their sections.

Answers keep whole paragraphs up to ``MAX_ANSWER`` characters; an entry with less than
``MIN_ANSWER`` characters of answer is skipped. The phrase for a question is chosen by a hash of
the entry's id, so the set is a pure function of the demo corpus (``main`` rebuilds it; a test
checks the shipped file equals the rebuild). Each record is an OpenAI-style ``messages``
conversation with its provenance in ``meta``: the source document id, the part, its licence
(as recorded for the demo corpus in data/demo/PROVENANCE.md) and the language.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

MIN_ANSWER, MAX_ANSWER = 80, 1500
SECTION_PARTS = ("debref-en", "debref-fr", "debian-faq-fr")

PYDOC_QUESTIONS = (
    "What does `{sig}` do?",
    "Explain `{name}` from Python's `{module}` module.",
    "How is `{sig}` used in Python?",
    "In the Python 3.11 standard library, what is `{name}` for?",
)
PYDOC_CLASS_QUESTIONS = (
    "What is the `{name}` class in Python's `{module}` module?",
    "Explain the Python class `{sig}`.",
)
SECTION_QUESTIONS = {
    "en": ("Explain “{title}” on a Debian system.", "What should I know about {title} in Debian?",
           "Tell me about {title} (Debian Reference, section {section}).",
           "I use Debian. {title}: how does it work?"),
    "fr": ("Expliquez « {title} » sur un système Debian.", "Que faut-il savoir sur {title} dans Debian ?",
           "Parlez-moi de {title} (Référence Debian, section {section}).",
           "J'utilise Debian. {title} : comment ça marche ?"),
}


def _pick(options: tuple[str, ...], key: str) -> str:
    h = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")
    return options[h % len(options)]


def _answer(paragraphs: list[str]) -> str | None:
    """Whole paragraphs up to MAX_ANSWER characters (at least the first), or None when short."""
    out: list[str] = []
    for p in paragraphs:
        if out and len("\n\n".join([*out, p])) > MAX_ANSWER:
            break
        out.append(p)
    text = "\n\n".join(out).strip()
    return text if len(text) >= MIN_ANSWER else None


def _record(doc: dict, entry: str, question: str, answer: str, kind: str) -> dict:
    meta = doc["meta"]
    return {"id": f"{doc['id']}#{entry}",
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "meta": {"source": doc["id"], "part": meta["source"], "kind": kind, "license": meta["license"],
                     "lang": meta["lang"]}}


def pydoc_entries(doc: dict) -> Iterator[dict]:
    """One conversation per documented name of a Python library reference page."""
    module = doc["meta"].get("title", "").split(" — ")[0].strip()
    if not doc["meta"].get("page", "").startswith("library/") or not re.fullmatch(r"[\w.]+", module):
        return
    entry = re.compile(rf"(?P<cls>class |exception )?(?P<name>{re.escape(module)}(\.\w+)+)(?P<args>\(.*\))?")
    paragraphs = [p.strip() for p in doc["text"].split("\n\n") if p.strip()]
    heads = [(k, m) for k, p in enumerate(paragraphs) if "\n" not in p and (m := entry.fullmatch(p))]
    seen = set()
    ends = [k for k, _ in heads[1:]] + [len(paragraphs)] if heads else []
    for (k, m), nxt in zip(heads, ends, strict=True):
        name = m["name"]
        if name in seen or not m["args"] and not m["cls"]:
            continue  # a data attribute's bare name, or a second signature of the same name
        seen.add(name)
        answer = _answer(paragraphs[k + 1 : nxt])
        if answer is None:
            continue
        sig = f"{name}{m['args'] or ''}"
        options = PYDOC_CLASS_QUESTIONS if m["cls"] else PYDOC_QUESTIONS
        question = _pick(options, f"{doc['id']}#{name}").format(sig=sig, name=name, module=module)
        yield _record(doc, name, question, answer, "pydoc-entry")


def section_entry(doc: dict) -> dict | None:
    """The conversation of one numbered documentation section: its title asked, its text answered."""
    meta = doc["meta"]
    section, title = str(meta.get("section", "")), meta.get("title", "")
    if not re.fullmatch(r"\d+(\.\d+)*", section):
        return None  # a chapter's introduction or its footnotes
    heading = re.sub(rf"^{re.escape(section)}\.?\s*", "", title).strip()
    paragraphs = [p.strip() for p in doc["text"].split("\n\n") if p.strip()]
    try:  # the answer starts after the section's own heading line
        start = next(k for k, p in enumerate(paragraphs) if p == title) + 1
    except StopIteration:
        return None
    answer = _answer(paragraphs[start:])
    if answer is None or not heading:
        return None
    if meta["source"] == "debian-faq-fr" and heading.endswith("?"):
        question, kind = heading, "faq"
    else:
        question = _pick(SECTION_QUESTIONS[meta["lang"]], doc["id"]).format(title=heading, section=section)
        kind = "section"
    return _record(doc, section, question, answer, kind)


def build(demo: Path | None = None) -> list[dict]:
    """Every conversation of the set, in the demo corpus's order."""
    from llm4all.data.demo import iter_demo

    out = []
    for doc in iter_demo(path=demo):
        part = doc["meta"]["source"]
        if part == "pydoc":
            out.extend(pydoc_entries(doc))
        elif part in SECTION_PARTS and (record := section_entry(doc)) is not None:
            out.append(record)
    return out


SHIPPED = Path("data") / "sft" / "docs-qa.jsonl.zst"


def shipped_path() -> Path:
    """The shipped set, data/sft/docs-qa.jsonl.zst beside the package source (or under the cwd)."""
    from llm4all.data.demo import shipped_file

    return shipped_file(SHIPPED)


def main(out: Path | None = None) -> Path:
    """Rebuild the instruction set from the demo corpus and write it (zstd JSONL)."""
    from llm4all.data.demo import write_records

    out = Path(out or shipped_path())
    records = build()
    write_records(out, records)
    print(f"{out}: {len(records):,} conversations")
    return out


if __name__ == "__main__":
    main()
