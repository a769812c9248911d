"""Readers for the demo corpus parts: installed Debian package files → documents.

Each reader takes the file-system root the packages are installed under and returns a list
of ``{"id", "text", "meta"}`` documents in a fixed order. The licence of each part is the one
named in the package's ``/usr/share/doc/PKG/copyright`` file.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from llm4all.data.htmltext import html_sections, html_to_text
from llm4all.errors import UserError


@dataclass(frozen=True)
class Part:
    """One part of the demo corpus and where it comes from."""

    lang: str  # "en" or "fr"
    packages: tuple[str, ...]  # Debian packages that install the files read
    paths: tuple[str, ...]  # files or directories read, relative to the root
    license: str  # SPDX-style short name
    license_note: str  # what the copyright file says, quoted
    granularity: str  # what one document is
    notes: str = ""


KJV_DATA = "usr/lib/bible.data"
KJV_PROGRAM = "usr/bin/bible"
PYDOC_HTML = "usr/share/doc/python3.11/html"
FORTUNE_DIR = "usr/share/games/fortunes"
DEBREF_DIR = "usr/share/debian-reference"
DOCBOOK_GRANULARITY = (
    "one numbered section (`1.2`) of a DocBook HTML page, plus the text before the first "
    "section (`intro`: a chapter's introduction, the title page with the copyright notice) "
    "and the page's footnotes (`notes`)"
)

PARTS: dict[str, Part] = {
    "kjv": Part(
        "en", ("bible-kjv-text", "bible-kjv"), (KJV_DATA, KJV_PROGRAM), "public-domain",
        "/usr/share/doc/bible-kjv-text/copyright: \"The copyright for the King James Version "
        "text of the Bible is expired since the translation was done in 1611\" (in the United "
        "Kingdom the KJV remains under Crown letters patent).",
        "one chapter (1,189), verses one per line with their numbers, after a `Book N` title",
        "the text is read through the package's own `bible -f Gen1:1-Rev22:21` (the data file "
        "is in the program's compressed format); book names are the 66 KJV titles.",
    ),
    "pydoc": Part(
        "en", ("python3.11-doc",), (PYDOC_HTML,), "PSF-2.0",
        "/usr/share/doc/python3.11-doc/copyright: \"PYTHON SOFTWARE FOUNDATION LICENSE "
        "VERSION 2\".",
        "one HTML page, main content only (`role=\"main\"`), navigation and permalink marks "
        "dropped",
        "index pages without prose (genindex*, py-modindex, search, contents) and the "
        "`includes/` fragments are skipped.",
    ),
    "fortunes": Part(
        "en", ("fortunes", "fortunes-min"), (FORTUNE_DIR,), "BSD-3-Clause",
        "/usr/share/doc/fortunes/copyright: \"This program falls under the BSD copyright\" "
        "(Regents of the University of California; clause 3 deleted); quotations keep their "
        "attributions.",
        "consecutive fortunes of one file grouped to at least 1 KB, separated by blank lines",
        "only the fortune files the two packages install (their dpkg file lists); the "
        "offensive set (`fortunes-off`, `off/`) is never read; `ascii-art` is skipped "
        "(drawings, not text); overstrike (char + backspace) is removed.",
    ),
    "debref-en": Part(
        "en", ("debian-reference-en",), (f"{DEBREF_DIR}/*.en.html",), "GPL-2+",
        "/usr/share/doc/debian-reference-common/copyright: \"License: GPL-2+\" (Osamu Aoki).",
        DOCBOOK_GRANULARITY,
        "navigation and tables of contents are dropped.",
    ),
    "debref-fr": Part(
        "fr", ("debian-reference-fr",), (f"{DEBREF_DIR}/*.fr.html",), "GPL-2+",
        "/usr/share/doc/debian-reference-common/copyright: \"License: GPL-2+\" (Osamu Aoki; "
        "translators under the same licence).",
        DOCBOOK_GRANULARITY,
        "the French translation is incomplete: sections where English function words "
        "outnumber French ones 3 to 1 are left out (counted below); mixed sections stay.",
    ),
    "maint-guide-fr": Part(
        "fr", ("maint-guide-fr",), ("usr/share/doc/maint-guide-fr/html/*.fr.html",), "GPL-2+",
        "/usr/share/doc/maint-guide-fr/copyright: \"License: GPL-2.0+\" (Josip Rodin, Osamu "
        "Aoki, Craig Small, Raphaël Hertzog).",
        DOCBOOK_GRANULARITY,
        "Debian New Maintainers' Guide, French translation.",
    ),
    "debian-faq-fr": Part(
        "fr", ("debian-faq-fr",), ("usr/share/doc/debian/FAQ/fr/*.fr.html",),
        "permission-notice",
        "/usr/share/doc/debian-faq-fr/copyright: \"Copyright (C) 1996-2003 Software in the "
        "Public Interest. Permission is granted to make and distribute verbatim copies of this "
        "document provided the copyright notice and this permission notice are preserved on "
        "all copies. Permission is granted to copy and distribute modified versions of this "
        "document under the conditions for verbatim copying, provided that the entire "
        "resulting derived work is distributed under the terms of a permission notice "
        "identical to this one.\"",
        DOCBOOK_GRANULARITY,
        "the notice is preserved: the title page (`debian-faq-fr/index/intro`) carries it.",
    ),
    "devref-fr": Part(
        "fr", ("developers-reference-fr",), ("usr/share/developers-reference/fr/*.html",),
        "GPL-2", "/usr/share/doc/developers-reference-fr/copyright: \"License: GPL-2\" "
        "(Christian Schwarz, Adam Di Carlo, Raphaël Hertzog, Andreas Barth, Lucas Nussbaum, "
        "Hideki Yamane, Holger Levsen).",
        "one numbered section (`5.1`) of a Sphinx HTML chapter (main content only), plus the "
        "chapter's introduction (`intro`)",
        "Debian Developer's Reference, French translation; the single-page edition "
        "(`developers-reference.html`) and `search.html` are skipped.",
    ),
}
#: text outside the demo corpus's domains (scripture, Python docs, fortunes, Debian manuals), to
#: measure what adapting to the demo domain forgets: the licence texts every Debian system has
OUTSIDE_PARTS: dict[str, Part] = {
    "licenses": Part(
        "en", ("base-files",), ("usr/share/common-licenses",), "verbatim-copying",
        "each licence text permits verbatim copies of itself (e.g. GPL-3: \"Everyone is permitted "
        "to copy and distribute verbatim copies of this license document, but changing it is not "
        "allowed.\"); /usr/share/doc/base-files/copyright.",
        "one licence text (Apache-2.0, Artistic, BSD, CC0-1.0, GFDL-1.2/1.3, GPL-1/2/3, "
        "LGPL-2/2.1/3, MPL-1.1/2.0), split into paragraphs grouped to at least 2 KB",
        "symbolic links (GPL -> GPL-3, ...) are skipped so no text is read twice.",
    ),
}
#: Sphinx manuals: the element holding the content, and pages that repeat other pages
MANUAL_MAIN = {"devref-fr": {"role": "main"}}
MANUAL_SKIP = {"devref-fr": frozenset({"developers-reference.html", "search.html"})}

#: the 66 books of the KJV in canonical order, matching the ``bible`` program's book order
KJV_BOOKS = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth",
    "1 Samuel", "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra",
    "Nehemiah", "Esther", "Job", "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon",
    "Isaiah", "Jeremiah", "Lamentations", "Ezekiel", "Daniel", "Hosea", "Joel", "Amos",
    "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah",
    "Malachi", "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians",
    "2 Corinthians", "Galatians", "Ephesians", "Philippians", "Colossians", "1 Thessalonians",
    "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews", "James",
    "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude", "Revelation",
)
_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def installed_packages(root: Path) -> dict[str, str]:
    """Installed Debian packages → version, from ``ROOT/var/lib/dpkg/status``."""
    status = root / "var/lib/dpkg/status"
    if not status.is_file():
        return {}
    out = {}
    for stanza in status.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", stanza, flags=re.M))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            out[fields["Package"]] = fields.get("Version", "unknown")
    return out


def _need(root: Path, rel: str, package: str) -> Path:
    path = root / rel
    if not path.exists():
        raise UserError(
            f"{path} is missing although {package} is installed (a dpkg path-exclude rule "
            f"under /etc/dpkg/dpkg.cfg.d/ may drop it); reinstall with "
            f"`sudo apt-get install --reinstall -y {package}`"
        )
    return path


def _doc(id: str, text: str, part: str, **meta: object) -> dict:
    p = PARTS.get(part) or OUTSIDE_PARTS[part]
    return {"id": id, "text": text, "meta": {"source": part, "lang": p.lang,
                                             "license": p.license, **meta}}


def kjv_documents(root: Path) -> list[dict]:
    """One document per chapter, from the ``bible`` program's one-verse-per-line output."""
    data = _need(root, KJV_DATA, "bible-kjv-text")
    program = _need(root, KJV_PROGRAM, "bible-kjv")
    run = subprocess.run(  # -f switches pretty-printing off: "Ge1:1 In the beginning ..."
        [str(program), "-f", "-p", str(data.parent), "Gen1:1-Rev22:21"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, encoding="utf-8", check=False,
    )
    if run.returncode != 0:
        raise UserError(f"{program} failed ({run.returncode}): {run.stderr.strip()}")
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in run.stdout.splitlines():
        m = _VERSE.match(line)
        if not m:
            raise RuntimeError(f"unexpected line from {program}: {line[:80]!r}")
        chapters.setdefault((m[1], int(m[2])), []).append(f"{m[3]} {m[4].strip()}")
    abbrevs = list(dict.fromkeys(book for book, _ in chapters))
    if len(abbrevs) != len(KJV_BOOKS):
        raise RuntimeError(f"{program} printed {len(abbrevs)} books, expected {len(KJV_BOOKS)}")
    names = dict(zip(abbrevs, KJV_BOOKS, strict=True))
    docs = []
    for (abbrev, chapter), verses in chapters.items():
        book = names[abbrev]
        slug = book.lower().replace(" ", "-")
        text = f"{book} {chapter}\n\n" + "\n".join(verses)
        docs.append(_doc(f"kjv/{slug}/{chapter}", text, "kjv", book=book, chapter=chapter))
    return docs


PYDOC_SKIP = re.compile(r"^(genindex.*|py-modindex|search|contents|includes/.*)\.html$")


def pydoc_documents(root: Path) -> list[dict]:
    """One document per page of the Python 3.11 HTML documentation (main content only)."""
    html_dir = _need(root, PYDOC_HTML, "python3.11-doc")
    docs = []
    for page in sorted(html_dir.rglob("*.html"), key=lambda p: p.relative_to(html_dir).as_posix()):
        rel = page.relative_to(html_dir).as_posix()
        if rel.startswith("_") or PYDOC_SKIP.match(rel):
            continue
        text = html_to_text(page.read_text(encoding="utf-8"), main={"role": "main"},
                            drop={"headerlink"})
        if text:
            title = text.split("\n", 1)[0]
            docs.append(_doc(f"pydoc/{rel[:-5]}", text, "pydoc", page=rel, title=title))
    return docs


FORTUNE_SKIP = frozenset({"ascii-art"})  # drawings, not text
FORTUNE_MIN_BYTES = 1024  # group fortunes until a document has at least this many bytes


def fortune_files(root: Path) -> list[Path]:
    """The fortune files the fortunes and fortunes-min packages install (their dpkg lists)."""
    files = set()
    for package in PARTS["fortunes"].packages:
        listing = root / f"var/lib/dpkg/info/{package}.list"
        if not listing.is_file():
            raise UserError(f"{listing} is missing: is {package} installed under {root}?")
        for line in listing.read_text().splitlines():
            parent, _, name = line.rpartition("/")
            if parent == f"/{FORTUNE_DIR}" and "." not in name and name not in FORTUNE_SKIP:
                files.add(name)
    return [_need(root, f"{FORTUNE_DIR}/{name}", "fortunes") for name in sorted(files)]


def fortune_documents(root: Path) -> list[dict]:
    """Fortunes (``%``-separated) grouped, file by file, into documents of ≥ 1 KB."""
    docs = []
    for path in fortune_files(root):
        raw = re.sub(r".\x08", "", path.read_text(encoding="utf-8"))  # overstrike: x BS x
        fortunes = [f.strip("\n") for f in re.split(r"^%$", raw, flags=re.M)]
        fortunes = ["\n".join(ln.rstrip() for ln in f.split("\n")) for f in fortunes if f.strip()]
        group: list[str] = []
        for i, fortune in enumerate(fortunes):
            group.append(fortune)
            if len("\n\n".join(group).encode()) >= FORTUNE_MIN_BYTES or i == len(fortunes) - 1:
                n = sum(d["meta"]["file"] == path.name for d in docs)
                docs.append(_doc(f"fortunes/{path.name}/{n:04d}", "\n\n".join(group),
                                 "fortunes", file=path.name, fortunes=len(group)))
                group = []
    return docs


#: chrome of DocBook (navheader ...) and Sphinx (headerlink: the ¶ permalink) pages
MANUAL_DROP = frozenset(
    {"navheader", "navfooter", "toc", "list-of-tables", "list-of-figures", "headerlink"}
)
_SECTION_NUMBER = re.compile(r"^([0-9A-Z]+(?:\.[0-9]+)*)\.\s")


#: frequent function words; a French-part section with 3× more English than French ones is an
#: untranslated section (the Debian Reference's French edition keeps some in English)
FRENCH_WORDS = frozenset({
    "le", "la", "les", "des", "et", "est", "un", "une", "du", "pour", "que", "qui", "dans",
    "sur", "pas", "avec", "ce", "vous",
})
ENGLISH_WORDS = frozenset({
    "the", "and", "is", "of", "to", "in", "for", "that", "with", "you", "this", "are", "be", "it",
})


#: part -> sections left out of the last build because they were untranslated English
UNTRANSLATED: dict[str, int] = {}


def mostly_english(text: str) -> bool:
    """True when English function words outnumber French ones 3 to 1 (mixed text stays)."""
    words = re.findall(r"[a-zà-ÿ']+", text.lower())
    return sum(w in ENGLISH_WORDS for w in words) > 3 * sum(w in FRENCH_WORDS for w in words)


def manual_documents(root: Path, part: str) -> list[dict]:
    """One document per numbered section (h2) of an HTML manual (the Debian manuals)."""
    spec = PARTS[part]
    folder = _need(root, str(Path(spec.paths[0]).parent), spec.packages[0])
    pattern = Path(spec.paths[0]).name
    skip = MANUAL_SKIP.get(part, frozenset())
    pages = sorted(p for p in folder.glob(pattern) if p.name not in skip)
    if not pages:
        raise UserError(f"no {folder}/{pattern}: reinstall {spec.packages[0]}")
    docs = []
    UNTRANSLATED[part] = 0
    for page in pages:
        stem = page.name.split(".")[0]  # index (title page), pr01 (preface), ch01, apa, ...
        sections = html_sections(page.read_text(encoding="utf-8"), main=MANUAL_MAIN.get(part),
                                 drop=MANUAL_DROP, split_at={"h1", "h2", ".footnotes"})
        heading = ""  # a chapter title with no text of its own goes with the next section
        for i, (title, text) in enumerate(sections):
            if text == title and i + 1 < len(sections):
                heading = f"{heading}{text}\n\n"
                continue
            m = _SECTION_NUMBER.match(title)
            section = m[1] if m else ("notes" if i and not title else "intro")
            text, heading = heading + text, ""
            if spec.lang == "fr" and mostly_english(text):
                UNTRANSLATED[part] = UNTRANSLATED.get(part, 0) + 1
                continue
            docs.append(_doc(f"{part}/{stem}/{section}", text, part, page=page.name,
                             section=section, title=title))
    return docs


def licence_documents(root: Path) -> list[dict]:
    """The licence texts of base-files, each cut at blank lines into pieces of at least 2 KB."""
    folder = _need(root, OUTSIDE_PARTS["licenses"].paths[0], "base-files")
    docs = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink()):
        text = path.read_text(encoding="utf-8", errors="replace")
        paragraphs = [p.strip() for p in text.split("\n\n")]
        chunk: list[str] = []
        pieces = 0
        for para in [p for p in paragraphs if p] + [""]:
            if para:
                chunk.append(para)
            if chunk and (not para or sum(len(c) for c in chunk) >= 2048):
                docs.append(_doc(f"licenses/{path.name}/{pieces}", "\n\n".join(chunk), "licenses",
                                 license_name=path.name))
                chunk, pieces = [], pieces + 1
    return docs


def build_part(name: str, root: Path) -> list[dict]:
    """The documents of one part, read from the packages installed under ``root``."""
    if name == "licenses":
        return licence_documents(root)
    if name == "kjv":
        return kjv_documents(root)
    if name == "pydoc":
        return pydoc_documents(root)
    if name == "fortunes":
        return fortune_documents(root)
    return manual_documents(root, name)
