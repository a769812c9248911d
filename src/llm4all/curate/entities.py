"""Entities and numbers of a summary, and whether its source document supports them (rules, no model).

Nan et al. 2021, "Entity-level Factual Consistency of Abstractive Text Summarization" (EACL),
measure a summary h against its source s by the precision of its named entities,
``prec_s = |N(h) ∩ N(s)| / |N(h)|``, and filter training pairs whose summary names an entity the
source does not (their ``preprocess/data_prepro_clean.py``: spaCy NER, entity types PERSON, FAC,
GPE, ORG, NORP, LOC, EVENT). No NER model can be downloaded here (spaCy's models are not on PyPI),
so the entities are found by rules, and numbers are checked as well:

- **entity**: a run of capitalised words ("Debian Reference", "Joseph", "NetworkManager"), an
  acronym ("APT", "LORD", "UTF-8") or a word with inner capitals ("CPython"), joined across the
  connectors of names ("Bank of England", "Ludwig van Beethoven") and cut at punctuation. A
  function word is never an entity word ("We", "The", "Unto"; the list below), nor is a word
  that the summary or the document also writes in lower case ("Come" in "said unto Noah, Come"),
  and a capitalised word that starts a sentence (or a line) counts only if the summary or the
  document also has it capitalised elsewhere, or it starts a multi-word name ("Debian can ..."
  yes when the document says "on Debian", "Network interfaces ..." no).
- **number**: digits with thousands separators and decimals ("1,024" = 1024, "3.11"), signs,
  percentages ("50%" = "50 percent" = "fifty per cent"), ordinals ("3rd" = "third"; "first" and
  "second" are left out: mostly not numbers), years and ISO dates, version strings ("3.4.1"),
  decades ("1980s"), times ("10:30"), and English number words, including compounds ("nine
  hundred and thirty" = 930, "an hundred" = 100, "twenty-one" = 21; "one" alone is left out: a
  pronoun as often as a number). Digits glued to letters ("bz2", "UTF-8", "0x03") are not numbers.
  Decimals are compared as written, not as floats ("3.10" is not "3.1": Python versions).

**Matching** normalises words on both sides the same way: case, possessives ("Debian's" =
"Debian"), a plural -s ("Pythons" = "Python"), hyphens and slashes ("Wi-Fi" = "Wi Fi" = "WiFi",
"GNU/Linux" = "GNU Linux"). ``match="span"`` (the default) supports an entity when all its words
occur in the document as one contiguous span; ``match="nan2021"`` is Nan et al.'s lenient
``entity_match(level=2)``: supported if any sub-span of two or more of its words occurs, else any
one of its words that is not a stop word (so "Ubuntu Reference" is supported by a document saying
"Reference"). Unlike their code, words match on word boundaries ("Ham" is not found in "Hampshire").
A number is supported when the document has the same normalised number. Each distinct entity and
number counts once; a summary with none has precision 1 (nothing unsupported; Nan et al.'s
``prec_s`` is undefined there).

What rules cannot see: an entity written differently (an alias, a pronoun), a number the summary
derives (a sum, a count), and errors that move supported entities around (Maynez et al. 2020's
intrinsic hallucinations: "the Knicks beat the Bucks" from "the Bucks beat the Knicks"). The
entailment scorer (``entailment.py``) is the tool for those.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Match = Literal["span", "nan2021"]
MATCHES = ("span", "nan2021")

# English function words (and the archaic ones of the King James Version): never entity words
FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every all both either neither no not nor none
i me my mine we us our ours you your yours he him his she her hers it its they them their theirs
one ones who whom whose which what whatever whoever where when why how there here then than thus
and or but if so as because since although though while whereas unless until till after before
of to in on at by for from with without within into onto upon over under about above below
between among through throughout across against along around behind beyond beside besides
near off out up down via per
is am are was were be been being have has had do does did done can could may might must shall
should will would ought let lets
also only just even still yet again ever never always often sometimes perhaps however moreover
furthermore therefore hence indeed instead otherwise meanwhile
yes yeah ok okay oh o please thanks thank now
thou thee thy thine ye unto hath doth saith shalt wilt art behold lo thereof therein wherefore
whereby yea nay hast didst dost
mr mrs ms dr st prof sir
note see example examples warning tip important
""".split())
# lower-case words that join the words of a name: "Bank of England", "Ludwig van Beethoven"
CONNECTORS = frozenset("of de du des la le van von der den da di del".split())
# Nan et al.'s level-2 match skips stop words when it falls back to single words
STOP_WORDS = FUNCTION_WORDS | CONNECTORS | frozenset("new old first last".split())
# abbreviations whose period does not end a sentence
ABBREVIATIONS = frozenset("e.g i.e etc vs cf mr mrs ms dr st no fig al approx resp jr sr".split())

UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven "
                                     "twelve thirteen fourteen fifteen sixteen seventeen eighteen "
                                     "nineteen".split())}
TENS = {w: 10 * (i + 2)
        for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12}
ORDINALS = {"third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8, "ninth": 9,
            "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14,
            "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19,
            "twentieth": 20, "thirtieth": 30, "fortieth": 40, "fiftieth": 50, "sixtieth": 60,
            "seventieth": 70, "eightieth": 80, "ninetieth": 90, "hundredth": 100, "thousandth": 1000}
MONTHS = ("january february march april may june july august september october november december")

_NUMBER = re.compile(r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_ORDINAL = re.compile(r"(\d+)(?:st|nd|rd|th)")
_PERCENT_WORDS = ("percent", "per cent", "pct")
_OPEN = "([{\"'“‘«"
_CLOSE = ")]}\"'”’»"
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")  # a word of the matching index (no _ - / .)
_TOKEN = re.compile(r"\S+")


@dataclass(frozen=True)
class Mention:
    """An entity or a number as written (``text``) and normalised (``key``)."""

    text: str
    key: tuple[str, ...]


def normalise(word: str) -> str:
    """A word as matched: lower case, no possessive, no plural -s (both sides alike)."""
    w = word.lower().replace("’", "'")
    if w.endswith("'s"):
        w = w[:-2]
    w = w.rstrip("'")
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    return w


def words(text: str) -> list[str]:
    """Normalised words of a text: runs of letters and digits (hyphens, slashes, underscores and
    periods separate words)."""
    return [normalise(w) for w in _WORD.findall(text)]


def _tokens(text: str) -> list[tuple[str, bool, bool, bool]]:
    """(token without surrounding punctuation, sentence-initial, breaks before, breaks after)."""
    out = []
    for line in text.splitlines():
        initial = True
        for raw in _TOKEN.findall(line):
            core = raw.lstrip(_OPEN).rstrip(_CLOSE + ".,;:!?")
            if not any(c.isalnum() for c in core):  # punctuation alone: a bullet, a dash
                initial = initial or raw[-1] in ".!?"
                continue
            tail = raw[len(raw) - len(raw.lstrip(_OPEN)) + len(core):]
            out.append((core, initial, raw[0] in _OPEN, bool(tail)))
            ends = tail.rstrip(_CLOSE).endswith(("!", "?")) or (
                tail.rstrip(_CLOSE).endswith(".") and core.lower().rstrip(".") not in ABBREVIATIONS
                and not re.fullmatch(r"[A-Z]", core))
            initial = ends or tail.endswith(":")
    return out


def _name_like(token: str) -> bool:
    """Capitalised, an acronym or with inner capitals, and not a function word or a number."""
    if not token[0].isalpha() or token.lower().strip("'’") in FUNCTION_WORDS:
        return False
    return token[0].isupper() or any(c.isupper() for c in token[1:])


def _plainly_capitalised(token: str) -> bool:
    """Only the first letter is upper case ("Network"): the capital a sentence start gives any word."""
    return token[0].isupper() and not any(c.isupper() for c in token[1:])


def lower_case_words(text: str) -> set[str]:
    """Normalised words that ``text`` writes in lower case."""
    return {normalise(w) for w in _WORD.findall(text) if w.islower()}


def capitalised_elsewhere(text: str) -> set[str]:
    """Normalised name-like words that ``text`` capitalises away from a sentence start."""
    return {normalise(t) for t, initial, _, _ in _tokens(text) if not initial and _name_like(t)}


def entities(text: str, known: set[str] = frozenset(), common: set[str] = frozenset()) -> list[Mention]:
    """Entity mentions of ``text`` in order (see the module docstring).

    A plainly capitalised word ("Come", not "NM" or "CPython") is a common word, not a name, if it
    is also written in lower case (``common``: normalised words seen in lower case in the text or,
    e.g., the document: "said unto Noah, Come" names Noah only). At a sentence start it counts only
    if it is ``known`` (normalised words capitalised elsewhere, e.g. in the document) or starts a
    name ("Ubuntu Reference explains ...")."""
    tokens = _tokens(text)
    known = set(known) | {normalise(t) for t, initial, _, _ in tokens if not initial and _name_like(t)}
    common = set(common) | lower_case_words(text)
    out: list[Mention] = []
    run: list[str] = []

    def close() -> None:
        while run and run[-1].lower() in CONNECTORS:
            run.pop()
        if run:
            surface = " ".join(run)
            out.append(Mention(surface, tuple(words(surface))))
        run.clear()

    for k, (tok, initial, breaks_before, breaks_after) in enumerate(tokens):
        if breaks_before:
            close()
        plain = _plainly_capitalised(tok)
        starts_name = (k + 1 < len(tokens) and not breaks_after and _name_like(tokens[k + 1][0])
                       and normalise(tok) not in common)
        name = (_name_like(tok) and not (plain and normalise(tok) in common)
                and not (initial and plain and normalise(tok) not in known and not starts_name))
        joins = (run and tok.lower() in CONNECTORS and k + 1 < len(tokens) and not breaks_after
                 and _name_like(tokens[k + 1][0]))
        if name or joins:
            run.append(tok)
        else:
            close()
        if breaks_after:
            close()
    close()
    return [m for m in out if m.key]


def _number_words(tokens: list[str], k: int) -> tuple[str | None, int]:
    """The number spelt by the words starting at ``k``: (normalised value or None, words used)."""
    total, current, used, ordinal, seen_scale = 0, 0, 0, False, False
    j = k
    if tokens[j] in ("a", "an") and j + 1 < len(tokens) and tokens[j + 1] in SCALES:
        j += 1
        current = 1
    while j < len(tokens) and not ordinal:
        w = tokens[j]
        if w in UNITS or w in TENS:
            current += UNITS.get(w, TENS.get(w, 0))
        elif w in ORDINALS or (w in ("first", "second") and current >= 20):  # "twenty-first"
            step = ORDINALS.get(w) or ("first", "second").index(w) + 1
            current, ordinal = (max(current, 1) * step if step >= 100 else current + step), True
        elif w in SCALES and (current or j > k):
            seen_scale = True
            if SCALES[w] == 100:
                current = max(current, 1) * 100
            else:
                total, current = total + max(current, 1) * SCALES[w], 0
        elif w == "and" and seen_scale and j + 1 < len(tokens) and (
                tokens[j + 1] in UNITS or tokens[j + 1] in TENS or tokens[j + 1] in ORDINALS):
            pass
        else:
            break
        j += 1
        used = j - k
    words_used = tokens[k:k + used]
    if not used or words_used == ["one"] or words_used[-1] == "and":
        return None, max(used, 1)
    value = total + current
    return (f"ord:{value}" if ordinal else str(value)), used


def numbers(text: str) -> list[Mention]:
    """Number mentions of ``text`` in order, each keyed by its normalised value (see the docstring)."""
    out: list[Mention] = []
    raw = [t.lstrip(_OPEN).rstrip(_CLOSE + ".,;:!?") for t in _TOKEN.findall(text)]
    lowered = []  # the text's words for the number-word parser (hyphenated words split)
    for t in raw:
        lowered += [p for p in re.split(r"[-‐–]", t.lower()) if p] or [""]
    for k, tok in enumerate(raw):
        nxt = " ".join(raw[k + 1:k + 3]).lower()
        percent = tok.endswith("%") or nxt.startswith(_PERCENT_WORDS)
        core = tok.lstrip("$€£¥").rstrip("%")
        value = _digits(core)
        for v in value or ():
            plain = _NUMBER.fullmatch(v) is not None  # a percentage is a plain number's
            out.append(Mention(tok, (v + ("%" if percent and plain else ""),)))
    k = 0
    while k < len(lowered):
        value, used = _number_words(lowered, k)
        if value is not None:
            percent = " ".join(lowered[k + used:k + used + 2]).startswith(_PERCENT_WORDS)
            out.append(Mention(" ".join(lowered[k:k + used]), (value + ("%" if percent else ""),)))
        k += used
    return out


def _digits(core: str) -> list[str] | None:
    """The normalised numbers of one token written with digits, or None if it is not one."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", core) or re.fullmatch(r"\d{1,2}:\d{2}", core):
        return [core]  # an ISO date, a time
    if re.fullmatch(r"\d+(?:\.\d+){2,}", core) or re.fullmatch(r"\d{2,4}'?s", core):
        return [core.replace("'", "")]  # a version string, a decade
    if m := re.fullmatch(r"(\d+)[-–](\d+)", core):
        return [m[1], m[2]]  # a range
    if m := _ORDINAL.fullmatch(core):
        return [f"ord:{int(m[1])}"]
    if m := re.fullmatch(r"(\d+)-[a-z]+", core):
        return [m[1]]  # 32-bit, 3-day
    if _NUMBER.fullmatch(core):
        return [core.replace(",", "").replace("−", "-").lstrip("+")]
    return None


class Source:
    """A source document indexed once: its words, their positions, and its numbers."""

    def __init__(self, text: str):
        self.text = text
        self.words = words(text)
        self.positions: dict[str, list[int]] = {}
        for i, w in enumerate(self.words):
            self.positions.setdefault(w, []).append(i)
        # words joined without spaces, 1 to 4 at a time: "WiFi" is found in "Wi-Fi"
        self.compact = {"".join(self.words[i:i + n]) for n in range(1, 5) for i in range(len(self.words))}
        self.numbers = {m.key[0] for m in numbers(text)}
        self.capitalised = capitalised_elsewhere(text)
        self.lower_case = lower_case_words(text)

    def has_span(self, seq: tuple[str, ...]) -> bool:
        """Whether the normalised words ``seq`` occur contiguously."""
        n = len(seq)
        return any(tuple(self.words[p:p + n]) == seq for p in self.positions.get(seq[0], ()))

    def supports(self, entity: Mention, match: Match = "span") -> bool:
        """Whether the document supports ``entity`` under ``match`` (module docstring)."""
        key = entity.key
        if self.has_span(key) or "".join(key) in self.compact:
            return True
        if match == "span":
            return False
        for n in range(len(key) - 1, 1, -1):  # nan2021: any sub-span of 2+ words, longest first
            if any(self.has_span(key[i:i + n]) for i in range(len(key) - n + 1)):
                return True
        return any(w not in STOP_WORDS and w in self.positions for w in key)


@dataclass(frozen=True)
class Support:
    """What a summary names and which of it its document does not support."""

    entities: list[str]
    unsupported_entities: list[str]
    numbers: list[str]
    unsupported_numbers: list[str]

    @property
    def entity_precision(self) -> float:
        """prec_s of Nan et al. 2021 over distinct entities (1.0 when there are none)."""
        return 1.0 - len(self.unsupported_entities) / len(self.entities) if self.entities else 1.0

    @property
    def number_precision(self) -> float:
        """The same over distinct numbers."""
        return 1.0 - len(self.unsupported_numbers) / len(self.numbers) if self.numbers else 1.0


def _distinct(mentions: list[Mention]) -> list[Mention]:
    seen: dict[tuple[str, ...], Mention] = {}
    for m in mentions:
        seen.setdefault(m.key, m)
    return list(seen.values())


def check(summary: str, document: str | Source, match: Match = "span") -> Support:
    """The entities and numbers of ``summary`` and those ``document`` does not support."""
    if match not in MATCHES:
        raise ValueError(f"match must be one of {', '.join(MATCHES)}, got {match!r}")
    source = document if isinstance(document, Source) else Source(document)
    ents = _distinct(entities(summary, source.capitalised, source.lower_case))
    nums = _distinct(numbers(summary))
    return Support(entities=[e.text for e in ents],
                   unsupported_entities=[e.text for e in ents if not source.supports(e, match)],
                   numbers=[n.text for n in nums],
                   unsupported_numbers=[n.text for n in nums if n.key[0] not in source.numbers])


def unigram_precision(summary: str, document: str | Source) -> float:
    """ROUGE-1 precision of the summary against the document (Lin 2004): the share of the summary's
    words, with clipped counts, that the document has. The baseline of benchmarks/factual_consistency.py."""
    from collections import Counter

    source = document if isinstance(document, Source) else Source(document)
    mine = Counter(words(summary))
    if not mine:
        return 1.0
    theirs = {w: len(p) for w, p in source.positions.items()}
    return sum(min(c, theirs.get(w, 0)) for w, c in mine.items()) / sum(mine.values())
