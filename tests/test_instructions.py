"""The shipped instruction set (issue 18 item 4): real documentation text, provenance and
licence on every record, and exactly what rebuilding it from the shipped demo corpus gives."""

import json
from collections import Counter

import pytest
import zstandard

from llm4all.data.chat import read_conversations
from llm4all.data.instructions import build, pydoc_entries, section_entry, shipped_path


def _shipped() -> list[dict]:
    data = zstandard.ZstdDecompressor().stream_reader(shipped_path().read_bytes()).read()
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def test_shipped_set_is_the_rebuild_of_the_demo_corpus():
    assert _shipped() == build()


def test_every_record_is_a_valid_conversation_with_its_provenance():
    shipped = _shipped()
    docs = list(read_conversations(shipped_path()))
    assert len(docs) == len(shipped) > 1000 and len({d.id for d in docs}) == len(docs)
    kinds = Counter(r["meta"]["kind"] for r in shipped)
    assert set(kinds) == {"pydoc-entry", "section", "faq"}
    licences = {r["meta"]["part"]: r["meta"]["license"] for r in shipped}
    assert licences == {"pydoc": "PSF-2.0", "debref-en": "GPL-2+", "debref-fr": "GPL-2+",
                        "debian-faq-fr": "permission-notice"}
    from llm4all.data.demo import iter_demo

    sources = {d["id"]: d["text"] for d in iter_demo()}
    for r in shipped:  # every paragraph of an answer is a paragraph of its source document, verbatim
        answer = r["messages"][1]["content"]
        assert all(p in sources[r["meta"]["source"]] for p in answer.split("\n\n")), r["id"]
        assert len(answer) >= 80 and r["messages"][0]["role"] == "user"


def test_pydoc_entries_and_sections_on_known_pages():
    doc = {"id": "pydoc/library/textwrap", "meta": {"title": "textwrap — Text wrapping and filling",
                                                     "page": "library/textwrap.html", "license": "PSF-2.0",
                                                     "lang": "en", "source": "pydoc"},
           "text": "textwrap — Text wrapping and filling\n\nIntro.\n\ntextwrap.dedent(text)\n\n"
                   "Remove any common leading whitespace from every line in text, so that "
                   "triple-quoted strings line up with the left edge.\n\ntextwrap.x\n\nshort\n\n"
                   "class textwrap.TextWrapper(**kwargs)\n\nThe TextWrapper constructor accepts a "
                   "number of optional keyword arguments, each an instance attribute."}
    entries = list(pydoc_entries(doc))
    assert [e["id"] for e in entries] == ["pydoc/library/textwrap#textwrap.dedent",
                                         "pydoc/library/textwrap#textwrap.TextWrapper"]
    assert entries[0]["messages"][1]["content"].startswith("Remove any common leading whitespace")
    assert "textwrap.dedent" in entries[0]["messages"][0]["content"]
    faq = {"id": "debian-faq-fr/basic-defs/1.1", "text": "Chapitre 1.\n\n1.1. Qu'est-ce que cette FAQ ?\n\n"
           + "Ce document présente les questions les plus fréquemment posées. " * 3,
           "meta": {"section": "1.1", "title": "1.1. Qu'est-ce que cette FAQ ?", "lang": "fr",
                    "license": "permission-notice", "source": "debian-faq-fr"}}
    entry = section_entry(faq)
    assert entry["messages"][0]["content"] == "Qu'est-ce que cette FAQ ?" and entry["meta"]["kind"] == "faq"
    assert entry["messages"][1]["content"].startswith("Ce document présente")
    assert section_entry({**faq, "meta": {**faq["meta"], "section": "intro"}}) is None


@pytest.mark.parametrize("part", ["pydoc", "debref-en", "debref-fr", "debian-faq-fr"])
def test_each_source_contributes(part):
    assert sum(r["meta"]["part"] == part for r in _shipped()) >= 50
