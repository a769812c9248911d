"""Web input: WARC archives and HTML pages, boilerplate removed, languages identified (issue 17)."""

import io
import json
from pathlib import Path

import pytest

from llm4all.data.readers import Rejects, read_documents
from llm4all.data.web import NO_TEXT
from llm4all.errors import UserError

NAV = "<nav><a href='/'>Home</a> | <a href='/about'>About us</a> | <a href='/contact'>Contact</a></nav>"
FOOTER = "<footer>Copyright 2026 Example Corp. All rights reserved. Privacy policy. Cookie settings.</footer>"
EN = ("The river flooded the lower town twice this spring, and the council has now approved a plan to "
      "raise the embankment by one metre. Engineers expect the work to take eighteen months. Residents "
      "who were displaced in April will receive grants to repair their homes, and the school that served "
      "as a shelter will be reopened to pupils after the summer holidays.")
FR = ("La rivière a inondé la ville basse deux fois ce printemps, et le conseil a approuvé un projet pour "
      "rehausser la digue d'un mètre. Les ingénieurs prévoient dix-huit mois de travaux. Les habitants "
      "déplacés en avril recevront une aide pour réparer leurs maisons, et l'école qui a servi d'abri "
      "rouvrira ses portes aux élèves après les vacances d'été.")


def page(title: str, body: str) -> bytes:
    return (f"<html><head><title>{title}</title></head><body>{NAV}<main><article><h1>{title}</h1>"
            f"<p>{body}</p><p>{body[::-1][:0]}{body.split('. ')[0]}.</p></article></main>"
            f"<aside>Related: ten tips for gardening</aside>{FOOTER}</body></html>").encode()


def write_warc(path: Path, records: list[tuple[str, str, str, bytes]]) -> list[str]:
    """(kind, url, content type, body) records into a gzipped WARC; returns the response ids."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    ids = []
    with path.open("wb") as f:
        writer = WARCWriter(f, gzip=path.name.endswith(".gz"))
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "llm4all tests"}))
        for kind, url, ctype, body in records:
            if kind == "request":
                headers = StatusAndHeaders(f"GET {url} HTTP/1.1", [("Host", "example.org")],
                                           is_http_request=True)
                record = writer.create_warc_record(url, "request", http_headers=headers)
            else:
                headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
                record = writer.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                   http_headers=headers)
                if ctype.startswith("text/html"):
                    ids.append(record.rec_headers.get_header("WARC-Record-ID").strip("<>"))
            writer.write_record(record)
    return ids


@pytest.fixture()
def warc(tmp_path):
    path = tmp_path / "crawl.warc.gz"
    ids = write_warc(path, [
        ("request", "https://example.org/flood", "", b""),
        ("response", "https://example.org/flood", "text/html; charset=utf-8", page("Flood plan", EN)),
        ("response", "https://example.org/logo.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(64)),
        ("response", "https://example.fr/crue", "text/html; charset=utf-8",
         page("Plan contre les crues", FR)),
        ("response", "https://example.org/empty", "text/html",
         b"<html><head><title>Redirecting</title></head><body><script>location='/'</script></body></html>"),
    ])
    return path, ids


def test_warc_pages_become_documents_without_their_boilerplate(warc, tmp_path):
    path, ids = warc
    rejects = Rejects(tmp_path / "rejects.jsonl")
    docs = list(read_documents(path, skip_bad=True, rejects=rejects))
    rejects.close()
    assert [d.id for d in docs] == ids[:2]  # the two pages with text, in archive order
    en, fr = docs
    assert en.meta["url"] == "https://example.org/flood" and en.meta["warc"] == "crawl.warc.gz"
    assert en.meta["date"] and en.meta["offset"] > 0 and fr.meta["url"] == "https://example.fr/crue"
    assert "raise the embankment by one metre" in en.text and "rehausser la digue" in fr.text
    for boilerplate in ("About us", "Copyright 2026", "Cookie settings", "ten tips for gardening"):
        assert boilerplate not in en.text and boilerplate not in fr.text
    # the page with no main text is a reject with its reason, not a silent loss
    rows = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rows] == [NO_TEXT] and "Redirecting" in rows[0]["raw"]


def test_a_page_without_text_or_a_damaged_archive_is_an_error_without_skip_bad(warc, tmp_path):
    path, _ = warc
    with pytest.raises(UserError, match=r"crawl.warc.gz: record at byte \d+ \(https://example.org/empty\): "
                                        r"no main text .*--skip-bad"):
        list(read_documents(path))
    cut = tmp_path / "cut.warc.gz"
    data = path.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(UserError, match=r"cut.warc.gz: unreadable: damaged WARC"):
        list(read_documents(cut))
    rejects = Rejects()
    list(read_documents(cut, skip_bad=True, rejects=rejects))
    assert rejects.count >= 1
    # an uncompressed archive cut anywhere, inside a record's headers or its content
    plain = tmp_path / "plain.warc"
    write_warc(plain, [("response", f"https://example.org/{i}", "text/html", page("p", EN))
                       for i in range(3)])
    whole = plain.read_bytes()
    assert len(list(read_documents(plain))) == 3
    for frac in (0.2, 0.45, 0.5, 0.7, 0.99):
        (tmp_path / "cut.warc").write_bytes(whole[: int(len(whole) * frac)])
        with pytest.raises(UserError, match="damaged WARC"):
            list(read_documents(tmp_path / "cut.warc"))


def test_html_files_in_a_folder(tmp_path):
    (tmp_path / "site" / "news").mkdir(parents=True)
    (tmp_path / "site" / "news" / "flood.html").write_bytes(page("Flood plan", EN))
    (tmp_path / "site" / "crue.htm").write_bytes(page("Crue", FR))
    docs = list(read_documents(tmp_path / "site"))
    assert sorted(d.id for d in docs) == ["crue", "news/flood"]
    assert all("About us" not in d.text for d in docs)


def test_curate_a_warc_groups_the_mixture_by_identified_language(warc, tmp_path):
    from llm4all.curate.pipeline import main as curate

    path, ids = warc
    summary = curate([path], out=tmp_path / "out", workers=1, signals=["ttr"], steps=[], skip_bad=True,
                     mixture={"by": "lang", "method": "temperature", "tau": 1.0})
    assert summary["read"] == 3 and summary["kept"] == 2  # the empty page is removed at step read
    groups = json.loads((tmp_path / "out" / "mixture.json").read_text())["groups"]
    assert {lang: g["ids"] for lang, g in groups.items()} == {"en": [ids[0]], "fr": [ids[1]]}
