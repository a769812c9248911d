"""Claim: the HTML extractor `curate` uses for web input (WARC and .html records) is the better
of the two maintained ones we considered, trafilatura and resiliparse, on our pages.

Pages: the Python 3.11 documentation (every 8th page of `library/`, `reference/`, `tutorial/`
and `howto/`) and the Debian Reference chapters in English and French, from their Debian
packages (`apt-get download python3.11-doc debian-reference-en debian-reference-fr`, extracted
with `dpkg-deb -x` into --root). Each page has chrome around its content: navigation bars, a
sidebar, breadcrumbs, footers, "previous / next" links.

Gold: the text of the page's content element only, which the page's structure names (the
Python docs' `<div role="main">` and the DocBook `<div class="chapter">`/`"appendix"` of the
Debian Reference), by llm4all's own html_to_text with that element given. The extractors get
the whole page and must find the content themselves. Score: word-level precision, recall and
F1 of the extracted words against the gold words (bags of words, as in trafilatura's own
evaluation), averaged over pages; and pages/s. Prints one row per extractor and last the
ratio of their mean F1 (trafilatura, the one `curate` uses, over resiliparse).

    .venv/bin/python benchmarks/html_extract.py --root /tmp/html-pages/root
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections import Counter
from pathlib import Path

from llm4all.data.htmltext import html_to_text

WORD = re.compile(r"\w+", re.UNICODE)


def pages(root: Path) -> list[tuple[str, str, dict]]:
    """(name, html, main-element attributes) of the evaluated pages."""
    out = []
    pydoc = root / "usr/share/doc/python3.11/html"
    for part in ("library", "reference", "tutorial", "howto"):
        for page in sorted((pydoc / part).glob("*.html"))[::8]:
            out.append((f"pydoc/{part}/{page.name}", page.read_text(encoding="utf-8"), {"role": "main"}))
    for page in sorted((root / "usr/share/debian-reference").glob("ch*.html")):
        html = page.read_text(encoding="utf-8")
        out.append((f"debref/{page.name}", html, {"class": "chapter"}))
    return out


def f1(extracted: str, gold: str) -> tuple[float, float, float]:
    a, b = Counter(WORD.findall(extracted.lower())), Counter(WORD.findall(gold.lower()))
    common = sum((a & b).values())
    p = common / max(sum(a.values()), 1)
    r = common / max(sum(b.values()), 1)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def extractors():
    import trafilatura
    from resiliparse.extract.html2text import extract_plain_text

    return {
        "trafilatura": lambda html: trafilatura.extract(html, include_tables=True, include_comments=False,
                                                        deduplicate=False) or "",
        "resiliparse": lambda html: extract_plain_text(html, main_content=True, alt_texts=False,
                                                       links=False, list_bullets=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="where the .deb files were extracted")
    args = parser.parse_args()
    data = pages(args.root)
    gold = [html_to_text(html, main=main) for _, html, main in data]
    keep = [i for i, g in enumerate(gold) if len(WORD.findall(g)) >= 50]
    print(f"{len(keep)} pages with ≥ 50 gold words (of {len(data)})")
    rows = {}
    for name, fn in extractors().items():
        start = time.perf_counter()
        texts = [fn(data[i][1]) for i in keep]
        seconds = time.perf_counter() - start
        scores = [f1(t, gold[i]) for t, i in zip(texts, keep, strict=True)]
        rows[name] = {"precision": statistics.mean(s[0] for s in scores),
                      "recall": statistics.mean(s[1] for s in scores),
                      "f1": statistics.mean(s[2] for s in scores), "pages_per_s": len(keep) / seconds}
        r = rows[name]
        print(f"{name:<12} precision {r['precision']:.3f}  recall {r['recall']:.3f}  F1 {r['f1']:.3f}  "
              f"{r['pages_per_s']:.1f} pages/s")
    ratio = rows["trafilatura"]["f1"] / rows["resiliparse"]["f1"]
    print(f"ratio (trafilatura F1 / resiliparse F1): {ratio:.3f}")


if __name__ == "__main__":
    main()
