"""Tokenisation and syllable heuristics shared by the text signals (hand-checked values)."""

import pytest

from llm4all.curate.signals.text import Doc, count_sentences, syllables_en, syllables_fr


def test_words_keep_contractions_and_hyphenated_compounds():
    doc = Doc("Don't stop -- well-known 3.14, e\u0301te\u0301 ... snake_case!")
    assert doc.words == ["don't", "stop", "well-known", "3", "14", "e\u0301te\u0301", "snake_case"]


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("", 0),
        ("...!?", 0),
        ("no sentence end", 1),
        ("Hi there. How are you? Fine", 3),
        ("Pi is 3.14 or so.", 1),
        ('He said "stop." Then left!', 2),
        ("One.Two", 1),  # no space after the period: not a sentence end
    ],
)
def test_sentence_count(text, n):
    assert count_sentences(text) == n


def test_doc_lines_paragraphs_and_ids():
    doc = Doc("a b\n\n  a b \n\n\nc\n")
    assert doc.lines == ["a b", "a b", "c"]
    assert doc.paragraphs == ["a b", "a b", "c"]
    assert doc.word_ids == [0, 1, 0, 1, 2]
    assert doc.word_counts == {"a": 2, "b": 2, "c": 1}


@pytest.mark.parametrize(
    ("word", "n"),
    [
        ("the", 1), ("cat", 1), ("make", 1), ("table", 2), ("little", 2), ("agree", 2),
        ("walked", 1), ("wanted", 2), ("makes", 1), ("boxes", 2), ("houses", 2),
        ("lion", 2), ("radio", 3), ("nation", 2), ("period", 3), ("readability", 5),
        ("well-known", 2), ("don't", 1), ("42", 1), ("hmm", 1),
    ],
)
def test_syllables_english(word, n):
    assert syllables_en(word) == n


@pytest.mark.parametrize(
    ("word", "n"),
    [
        ("table", 1), ("livres", 1), ("chat", 1), ("bonjour", 2), ("école", 2),
        ("réalité", 4), ("naïf", 2), ("l'homme", 1), ("qu'il", 1), ("aujourd'hui", 3),
        ("joie", 1), ("porte-monnaie", 3),
    ],
)
def test_syllables_french(word, n):
    assert syllables_fr(word) == n


def test_doc_syllables_sums_over_tokens():
    assert Doc("The table, the table.").syllables("en") == 6
    assert Doc("La table, la table.").syllables("fr") == 4
