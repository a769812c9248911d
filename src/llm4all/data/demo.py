"""The demo corpus: real English and French text from Debian packages, as a compact snapshot.

Eight parts, each read from the files a Debian package installs (never generated, never
downloaded) and cut into documents of a sensible size:

============== ==== ========================== ==================== ===========================
part           lang package(s)                 document             id
============== ==== ========================== ==================== ===========================
kjv            en   bible-kjv-text, bible-kjv  one Bible chapter    ``kjv/genesis/1``
pydoc          en   python3.11-doc             one HTML page        ``pydoc/library/os``
fortunes       en   fortunes, fortunes-min     ~1 KB of fortunes    ``fortunes/wisdom/0003``
debref-en      en   debian-reference-en        one numbered section ``debref-en/ch01/1.2``
debref-fr      fr   debian-reference-fr        one numbered section ``debref-fr/ch01/1.2``
maint-guide-fr fr   maint-guide-fr             one numbered section ``maint-guide-fr/first/2.1``
debian-faq-fr  fr   debian-faq-fr              one numbered section ``debian-faq-fr/kernel/10.1``
devref-fr      fr   developers-reference-fr    one numbered section ``devref-fr/pkgs/5.1``
============== ==== ========================== ==================== ===========================

``llm4all demo-corpus`` rebuilds the snapshot (``data/demo`` in the repo, committed, so tests
and ``make demo`` need no apt): one ``LANG/PART.jsonl.zst`` per part, one JSON document per
line (``{"id", "text", "meta": {"source", "lang", "license", ...}}``), plus ``manifest.json``
(counts, bytes, sha256) and ``PROVENANCE.md`` (packages, versions, paths, licences). The
bytes are deterministic: the same installed packages give the same files.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import zstandard

from llm4all.data.demo_sources import OUTSIDE_PARTS, PARTS, UNTRANSLATED, Part, build_part, installed_packages
from llm4all.errors import UserError
from llm4all.runs import atomic_path

#: where the committed snapshots live inside a checkout: the demo corpus, and text outside its domains
SNAPSHOT = Path("data") / "demo"
OUTSIDE = Path("data") / "outside"


def outside_corpus_path() -> Path:
    """The committed snapshot of text outside the demo's domains (``data/outside``: licence texts)."""
    return demo_corpus_path(OUTSIDE)


def shipped_file(relative: Path) -> Path:
    """A data file the repository ships (``data/...``): beside the package source, or under the
    cwd; the first candidate when neither exists (so an error names where it belongs)."""
    candidates = [Path(__file__).resolve().parents[3] / relative, Path.cwd() / relative]
    return next((p for p in candidates if p.is_file()), candidates[0])


def write_records(path: Path, records: list[dict]) -> Path:
    """Write ``records`` as a zstd JSONL file (atomically, through ``DocumentWriter``)."""
    from llm4all.data.writers import DocumentWriter

    with DocumentWriter(path) as writer:
        for r in records:
            writer.write(r)
    return path


def demo_corpus_path(snapshot: Path | None = None) -> Path:
    """The committed demo snapshot: ``data/demo`` beside the package source, or under the cwd."""
    snapshot = snapshot or SNAPSHOT
    candidates = [Path(__file__).resolve().parents[3] / snapshot, Path.cwd() / snapshot]
    for path in candidates:
        if (path / "manifest.json").is_file():
            return path
    looked = ", ".join(str(p) for p in dict.fromkeys(candidates))
    raise UserError(
        f"demo corpus not found (looked for manifest.json in {looked}); build it with "
        f"`llm4all demo-corpus --out data/demo` on Debian with the packages "
        f"{', '.join(sorted({p for part in PARTS.values() for p in part.packages}))}"
    )


def iter_demo(lang: str | None = None, path: Path | None = None) -> Iterator[dict]:
    """Stream the demo documents (all, or one language) from the snapshot, part by part."""
    path = path or demo_corpus_path()
    manifest = json.loads((path / "manifest.json").read_text())
    for rel, entry in manifest["files"].items():
        if lang is None or entry["lang"] == lang:
            with zstandard.ZstdDecompressor().stream_reader(open(path / rel, "rb")) as raw:
                for line in io.TextIOWrapper(raw, encoding="utf-8"):
                    yield json.loads(line)


def encode_jsonl(docs: list[dict]) -> bytes:
    """One JSON object per line, keys in a fixed order, UTF-8 kept as is (deterministic)."""
    lines = (json.dumps(d, ensure_ascii=False, sort_keys=True) for d in docs)
    return ("\n".join(lines) + "\n").encode("utf-8")


def check_documents(docs: list[dict], name: str) -> None:
    """Every document has a non-empty text and a unique id (a builder bug otherwise)."""
    seen: set[str] = set()
    for d in docs:
        if not d["text"].strip():
            raise RuntimeError(f"{name}: empty document {d['id']!r}")
        if d["id"] in seen:
            raise RuntimeError(f"{name}: duplicate document id {d['id']!r}")
        seen.add(d["id"])


def _check_installed(root: Path, names: list[str], parts: dict[str, Part] = PARTS) -> dict[str, str]:
    versions = installed_packages(root)
    wanted = [p for name in names for p in parts[name].packages]
    missing = [p for p in dict.fromkeys(wanted) if p not in versions]
    if missing:
        raise UserError(
            f"missing Debian package(s) {', '.join(missing)} under {root} (not installed per "
            f"{root / 'var/lib/dpkg/status'}); install with `sudo apt-get install -y "
            f"{' '.join(missing)}`, or use the committed snapshot in data/demo"
        )
    return versions


def _provenance(manifest: dict, parts: dict[str, Part]) -> str:
    outside = parts is not PARTS
    rows = [
        "# Text outside the demo corpus's domains: provenance" if outside else "# Demo corpus: provenance",
        "",
        "Real text from Debian packages, cut into documents by "
        "`llm4all.data.demo` and stored as zstandard-compressed JSONL, one JSON document per "
        "line: `{\"id\", \"text\", \"meta\": {\"source\", \"lang\", \"license\", ...}}`. "
        "Written by the builder; do not edit by hand.",
        "",
        "Rebuild (on Debian, with the packages below installed):",
        "",
        "    sudo apt-get install -y " + " ".join(
            sorted({p for part in parts.values() for p in part.packages})
        ),
        "    llm4all demo-corpus --corpus outside" if outside else "    llm4all demo-corpus --out data/demo",
        "",
        "| file | lang | documents | text bytes (UTF-8) | compressed bytes |",
        "|---|---|---:|---:|---:|",
    ]
    for rel, e in manifest["files"].items():
        rows.append(
            f"| `{rel}` | {e['lang']} | {e['documents']:,} | {e['text_bytes']:,} | "
            f"{e['compressed_bytes']:,} |"
        )
    for lang, n in manifest["text_bytes_by_lang"].items():
        rows.append(f"| **total {lang}** | {lang} | | {n:,} | |")
    for rel, e in manifest["files"].items():
        part = parts[e["part"]]
        rows += ["", f"## {e['part']} (`{rel}`)", ""]
        pkgs = ", ".join(f"`{p}` {e['packages'][p]}" for p in part.packages)
        rows.append(f"- Debian package(s): {pkgs}")
        rows.append(f"- Files read: {', '.join(f'`{p}`' for p in part.paths)}")
        rows.append(f"- Licence: **{part.license}** — {part.license_note}")
        rows.append(f"- Documents: {part.granularity}")
        if part.notes:
            rows.append(f"- Notes: {part.notes}")
        if "untranslated_sections_left_out" in e:
            rows.append(f"- Untranslated (English) sections left out: "
                        f"{e['untranslated_sections_left_out']}")
    return "\n".join(rows) + "\n"


def main(out: Path | None = None, root: Path = Path("/"), level: int = 19,
         corpus: Literal["demo", "outside"] = "demo") -> dict:
    """Build the demo corpus snapshot from installed Debian packages.

    Reads the King James Bible, the Python 3.11 documentation, the fortunes, the Debian
    Reference (English and French), the Debian New Maintainers' Guide, the Debian FAQ and
    the Debian Developer's Reference (French) from the files their Debian packages install,
    and writes one zstd-compressed JSONL file per part plus manifest.json and PROVENANCE.md.
    ``--corpus outside`` builds the text outside those domains instead (the licence texts of
    base-files, on every Debian system), on which adapting to the demo domain measures forgetting.

    Args:
        out: output directory (default data/demo or data/outside; files in it are replaced one
            by one, others are left alone).
        root: file-system root the packages are installed under (for chroots and tests).
        level: zstandard compression level (1-22; 19 keeps the committed snapshot small).
        corpus: demo (the demo corpus) or outside (text outside its domains).
    """
    from rich.console import Console
    from rich.table import Table

    if not 1 <= level <= 22:
        raise UserError(f"--level must be between 1 and 22 (zstandard levels), got {level}")
    parts = PARTS if corpus == "demo" else OUTSIDE_PARTS
    out, root = Path(out or (SNAPSHOT if corpus == "demo" else OUTSIDE)), Path(root)
    versions = _check_installed(root, list(parts), parts)
    built: dict[str, tuple[Part, list[dict]]] = {}
    for name, part in parts.items():
        docs = build_part(name, root)
        check_documents(docs, name)
        built[name] = (part, docs)
    compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)
    files, by_lang = {}, {}
    for name, (part, docs) in built.items():
        raw = encode_jsonl(docs)
        blob = compressor.compress(raw)
        rel = f"{part.lang}/{name}.jsonl.zst"
        with atomic_path(out / rel) as tmp:
            tmp.write_bytes(blob)
            tmp.chmod(0o644)
        text_bytes = sum(len(d["text"].encode("utf-8")) for d in docs)
        by_lang[part.lang] = by_lang.get(part.lang, 0) + text_bytes
        files[rel] = {
            "part": name,
            "lang": part.lang,
            "documents": len(docs),
            "text_bytes": text_bytes,
            "jsonl_bytes": len(raw),
            "compressed_bytes": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "license": part.license,
            "packages": {p: versions[p] for p in part.packages},
        }
        if part.lang == "fr":
            files[rel]["untranslated_sections_left_out"] = UNTRANSLATED.get(name, 0)
    manifest = {
        "format": "jsonl.zst: one {id, text, meta} JSON object per line",
        "zstd_level": level,
        "files": files,
        "text_bytes_by_lang": dict(sorted(by_lang.items())),
    }
    with atomic_path(out / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        tmp.chmod(0o644)
    with atomic_path(out / "PROVENANCE.md") as tmp:
        tmp.write_text(_provenance(manifest, parts))
        tmp.chmod(0o644)

    table = Table(title=f"demo corpus → {out}")
    for col in ("file", "documents", "text MB", "zst MB", "licence"):
        left = col in ("file", "licence")
        table.add_column(col, justify="left" if left else "right", no_wrap=col != "licence")
    for rel, e in files.items():
        table.add_row(
            rel, f"{e['documents']:,}", f"{e['text_bytes'] / 1e6:.2f}",
            f"{e['compressed_bytes'] / 1e6:.2f}", e["license"],
        )
    Console().print(table)
    return manifest
