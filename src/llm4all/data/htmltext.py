"""HTML → clean text for corpus building, on the standard library's ``html.parser``.

Keeps what a reader of the page reads and drops the chrome around it: navigation bars,
side bars, tables of contents, search forms, permalink marks, footnote markers. Block
elements become line or paragraph breaks, ``<pre>`` keeps its whitespace, list items get a
``- `` bullet and table cells are joined with `` | `` on one line per row.

A page can be cut into sections at chosen heading tags (``split_at={"h1", "h2"}``), which is
how the Debian Reference becomes one document per numbered section.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

#: elements whose content is never text: scripts, styles, forms, navigation, images' SVG.
SKIP_TAGS = frozenset({"head", "script", "style", "nav", "form", "svg", "noscript", "button"})
#: elements that never have a closing tag (HTML5 void elements).
VOID_TAGS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)
#: break after/before these: 2 = blank line (paragraph), 1 = newline.
BLOCK_BREAK = {
    **dict.fromkeys(("p", "div", "section", "article", "pre", "table", "blockquote"), 2),
    **dict.fromkeys(("h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "figure"), 2),
    **dict.fromkeys(("li", "dt", "dd", "tr", "br", "hr", "caption", "thead", "tbody"), 1),
}
_SPACE = re.compile(r"[ \t\r\n\f\v\u00a0]+")


class _Extractor(HTMLParser):
    def __init__(self, main: dict[str, str] | None, drop: frozenset[str], split_at: frozenset[str]):
        super().__init__(convert_charrefs=True)
        self.main, self.drop, self.split_at = main, drop, split_at
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, skipping, capturing) per open element
        self.sections: list[tuple[list[str], list[str]]] = [([], [])]  # (title parts, text parts)
        self.pending = 0  # break owed before the next text: 0 none, 1 newline, 2 blank line
        self.in_title = False
        self.pre = 0  # depth of <pre>
        self.cells = 0  # cells seen in the current table row
        self.bullet = False  # a list item started and has no text yet
        self.cell_sep = False  # a table cell started after another one in the same row

    # -- state of the innermost open element
    def _state(self) -> tuple[bool, bool]:
        return self.stack[-1][1:] if self.stack else (False, self.main is None)

    def _brk(self, level: int) -> None:
        self.pending = max(self.pending, level)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        skipping, capturing = self._state()
        a = {k: v or "" for k, v in attrs}
        classes = set(a.get("class", "").split())
        if tag in SKIP_TAGS or classes & self.drop:
            skipping = True
        if self.main is not None and all(a.get(k) == v for k, v in self.main.items()):
            capturing = True
        if tag not in VOID_TAGS:
            self.stack.append((tag, skipping, capturing))
        if skipping or not capturing:
            return
        if tag in self.split_at or any(f".{c}" in self.split_at for c in classes):
            self.sections.append(([], []))
            self.pending, self.in_title = 0, tag in self.split_at
        self._brk(BLOCK_BREAK.get(tag, 0))
        if tag == "pre":
            self.pre += 1
        elif tag == "li":
            self.bullet = True
        elif tag == "tr":
            self.cells = 0
        elif tag in ("td", "th"):
            self.cell_sep = self.cells > 0
            self.cells += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        skipping, capturing = self._state()  # <a id="x"/> in XHTML: an empty element
        if not skipping and capturing and tag in ("br", "hr"):
            self._brk(1)

    def handle_endtag(self, tag: str) -> None:
        if not any(t == tag for t, _, _ in self.stack):
            return  # stray end tag
        while self.stack:
            t, skipping, capturing = self.stack.pop()
            if not skipping and capturing:
                if t == "pre":
                    self.pre -= 1
                if t in self.split_at:
                    self.in_title = False
                self._brk(BLOCK_BREAK.get(t, 0))
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        skipping, capturing = self._state()
        if skipping or not capturing:
            return
        if not self.pre:
            data = _SPACE.sub(" ", data)
            parts = self.sections[-1][1]
            if self.pending or not parts or parts[-1][-1:] in (" ", "\n"):
                data = data.lstrip()
        if data:
            self._emit(data)

    def _emit(self, text: str) -> None:
        title, parts = self.sections[-1]
        if self.pending and parts:
            parts.append("\n" * self.pending)
        elif self.cell_sep and parts and parts[-1][-1:] != "\n":
            parts[-1] = parts[-1].rstrip(" ")
            text = " | " + text  # only between cells that have text, on the same line
        if self.bullet:
            text = "- " + text
        self.pending, self.bullet, self.cell_sep = 0, False, False
        parts.append(text)
        if self.in_title:
            title.append(text)


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def html_sections(
    html: str,
    main: dict[str, str] | None = None,
    drop: frozenset[str] | set[str] = frozenset(),
    split_at: frozenset[str] | set[str] = frozenset(),
) -> list[tuple[str, str]]:
    """Clean text of a page as ``(title, text)`` sections, cut at the ``split_at`` headings.

    Args:
        html: the page.
        main: attributes of the element holding the content (e.g. ``{"role": "main"}``);
            None keeps the whole body.
        drop: CSS classes whose elements are removed with everything inside them.
        split_at: heading tags (``"h2"``) or CSS classes (``".footnotes"``) whose elements
            start a new section, titled by the heading's text (empty for a class); text
            before the first one is a section with an empty title. Sections without text
            are left out.
    """
    parser = _Extractor(main, frozenset(drop), frozenset(split_at))
    parser.feed(html)
    parser.close()
    out = []
    for title, parts in parser.sections:
        text = _tidy("".join(parts))
        if text:
            out.append((_SPACE.sub(" ", "".join(title)).strip(), text))
    return out


def html_to_text(
    html: str, main: dict[str, str] | None = None, drop: frozenset[str] | set[str] = frozenset()
) -> str:
    """Clean text of a whole page (see :func:`html_sections` for the arguments)."""
    return "\n\n".join(text for _, text in html_sections(html, main, drop))
