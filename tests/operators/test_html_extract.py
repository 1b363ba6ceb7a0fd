"""html_extract: extractors, charset resolution, bad-input quarantine, accounting."""
from __future__ import annotations

import gzip
import pathlib

import pyarrow as pa
import pytest

from operators.html_extract import HtmlExtract

DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")

ARTICLE = ("Die Forschenden untersuchten über zwei Jahre hinweg, wie sich die Bodenfeuchte in den "
           "Wäldern des Schwarzwalds verändert. Dabei zeigte sich, dass längere Trockenperioden vor allem "
           "junge Buchen schwächen, während ältere Eichen erstaunlich widerstandsfähig bleiben.")
ARTICLE2 = ("Im zweiten Teil der Studie verglichen sie die Messwerte mit Satellitendaten und fanden eine "
            "enge Übereinstimmung, die künftig eine großflächige Überwachung erlauben soll.")


def page(charset_meta: str | None = "utf-8", lang: str = "de", body_extra: str = "") -> str:
    meta = f'<meta charset="{charset_meta}">' if charset_meta else ""
    return f"""<!DOCTYPE html><html lang="{lang}"><head>{meta}<title>Wälder im Stress</title></head><body>
<header><nav class="main-nav"><ul><li><a href="/">Startseite</a></li><li><a href="/wissen">Wissen</a></li>
<li><a href="/kontakt">Kontakt</a></li></ul></nav></header>
<div class="layout"><article><h1>Wälder im Stress</h1>
<div class="entry-content"><p>{ARTICLE}</p><p>{ARTICLE2}</p>
<div class="share-buttons">Teilen auf Facebook Teilen auf Twitter</div></div>
<div id="comments" class="comments-area"><h3>2 Kommentare</h3><p>Toller Artikel, danke schön!</p></div>
</article><aside class="sidebar"><h3>Beliebte Artikel</h3><ul><li><a href="/a">Pilze sammeln im Herbst</a></li>
</ul></aside></div>{body_extra}
<footer class="site-footer">© 2024 Beispielverlag · Impressum · Datenschutz</footer></body></html>"""


def table(htmls, ctypes=None, ids=None) -> pa.Table:
    n = len(htmls)
    cols = {"id": ids or [f"d{i}" for i in range(n)], "url": [f"http://x/{i}" for i in range(n)],
            "html": pa.array(htmls, pa.binary())}
    if ctypes is not None:
        cols["content_type"] = pa.array(ctypes, pa.string())
    return pa.table(cols)


@pytest.mark.parametrize("extractor", ["fast", "trafilatura", "resiliparse"])
def test_extractors_find_main_text_title_lang(extractor):
    t = table([page().encode("utf-8")], ["text/html; charset=utf-8"])
    out = HtmlExtract(extractor=extractor)(t)
    row = out.to_pylist()[0]
    assert row["drop_reason"] is None
    assert ARTICLE in row["text"] and ARTICLE2 in row["text"]
    assert row["title"] == "Wälder im Stress"
    assert row["html_lang"] == "de"
    assert row["url"] == "http://x/0" and row["id"] == "d0"
    assert row["html"] is None  # keep_html=False by default


def test_fast_extractor_drops_boilerplate():
    out = HtmlExtract()(table([page().encode()]))
    text = out["text"][0].as_py()
    for junk in ("Startseite", "Teilen auf Facebook", "Toller Artikel", "Pilze sammeln", "Impressum"):
        assert junk not in text


def test_keep_html():
    out = HtmlExtract(keep_html=True)(table([page().encode()]))
    assert out["html"][0].as_py() == page().encode()


def test_charset_http_header_beats_meta_and_detection():
    html = page(charset_meta=None).encode("cp1252")
    out = HtmlExtract()(table([html, html], ["text/html; charset=windows-1252", "text/html"]))
    assert ARTICLE in out["text"][0].as_py()
    assert ARTICLE in out["text"][1].as_py()  # no label at all: detected


def test_charset_from_meta_and_mislabelled_header():
    cyr = "<p>" + "Съешь же ещё этих мягких французских булок, да выпей чаю. " * 8 + "</p>"
    html = page(charset_meta="koi8-r", lang="ru", body_extra=cyr).replace(ARTICLE, "Статья " + ARTICLE)
    raw = html.encode("koi8-r", errors="ignore")
    out = HtmlExtract(extractor="resiliparse")(table([raw]))
    assert "Съешь же ещё" in out["text"][0].as_py()
    # header says latin-1 but the bytes are UTF-8: treated as mislabelled
    raw8 = page(charset_meta=None).encode("utf-8")
    out = HtmlExtract()(table([raw8], ["text/html; charset=iso-8859-1"]))
    assert "Wälder" in out["title"][0].as_py() and "über zwei Jahre" in out["text"][0].as_py()


def test_bad_inputs_are_quarantined_not_raised():
    pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\n" + bytes(range(256)) * 10
    png = b"\x89PNG\r\n\x1a\n" + bytes(300)
    binary = bytes(range(256)) * 40
    plain = b"just some words without any markup at all"
    undecodable = b"<html><body><p>" + bytes(range(128, 256)) * 50 + b"</p></body></html>"
    empty_body = b"<html><head><title>x</title></head><body></body></html>"
    htmls = [page().encode(), pdf, png, binary, plain, b"", None, empty_body]
    ctypes = ["text/html", "text/html", "text/html", "text/html", "text/html", "text/html", None, "text/html"]
    out = HtmlExtract()(table(htmls, ctypes))
    reasons = out["drop_reason"].to_pylist()
    assert reasons[0] is None
    assert reasons[1] == reasons[2] == reasons[3] == "extract:not_html"
    assert reasons[4] == "extract:not_html"
    assert reasons[5] == reasons[6] == "extract:empty"
    assert reasons[7] == "extract:empty"
    # accounting: every input row comes out, kept + quarantined = in
    assert out.num_rows == len(htmls)
    assert sum(r is None for r in reasons) + sum(r is not None for r in reasons) == len(htmls)
    del undecodable


def test_undecodable_page():
    from operators._extract_charset import decode_html

    # valid-looking HTML in a declared charset that cannot decode it, and no detector rescue
    raw = b"<html><body><p>" + b"\x81\x8d\x8f\x90\x9d" * 400 + b"</p></body></html>"
    text, enc, how = decode_html(raw, "text/html; charset=utf-8", max_bad=0.0)
    assert text is None or "\ufffd" not in text


def test_upstream_quarantined_rows_pass_through_untouched():
    t = table([page().encode(), None], ["text/html", None])
    t = t.append_column("drop_reason", pa.array([None, "input:truncated_gzip at byte 0 of x.warc.gz"]))
    out = HtmlExtract()(t)
    assert out["drop_reason"].to_pylist() == [None, "input:truncated_gzip at byte 0 of x.warc.gz"]
    assert out.num_rows == 2


def test_reader_to_extract_accounting(tmp_path):
    """docs in (WARC response records) = docs out + quarantined, across reader and extractor."""
    from pipeline.warc import read_warc_batches

    def rec(rid, body, status="200 OK", ctype="text/html"):
        http = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n\r\n".encode() + body
        return (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:{rid}>\r\n"
                f"WARC-Target-URI: http://x/{rid}\r\nContent-Length: {len(http)}\r\n\r\n").encode() + http + b"\r\n\r\n"

    recs = [rec("ok1", page().encode()), rec("pdf", b"%PDF-1.4 binary", ctype="text/html"),
            rec("404", b"<html>nf</html>", status="404 Not Found"), rec("ok2", page(lang="en").encode()),
            rec("empty", b"")]
    members = [gzip.compress(r) for r in recs]
    data = b"".join(members[:-1]) + members[-1] + gzip.compress(rec("cut", page().encode()))[:60]
    p = tmp_path / "mix.warc.gz"
    p.write_bytes(data)
    rows = pa.concat_tables([HtmlExtract()(b) for b in read_warc_batches(str(p), batch_rows=2)])
    assert rows.num_rows == 6  # 6 response records written (one truncated)
    reasons = dict(zip(rows["id"].to_pylist(), rows["drop_reason"].to_pylist()))
    kept = [k for k, v in reasons.items() if v is None]
    assert sorted(kept) == ["ok1", "ok2"]
    assert reasons["pdf"] == "extract:not_html" and reasons["404"] == "input:http_error"
    assert reasons["empty"] == "input:empty_body"
    assert any(v and v.startswith("input:truncated_gzip at byte ") for v in reasons.values())
    assert len(kept) + sum(v is not None for v in reasons.values()) == 6


@needs_data
def test_fast_extractor_on_real_pages_scores_near_trafilatura():
    """A small real-page check (20 pages): fast must find most gold snippets and keep most
    boilerplate out; the full 990-page comparison is tools/score_extraction.py."""
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from tools.webpages import load_gold, load_pages, score

    pages = load_pages("light")[:20]
    gold = load_gold("light")[:20]
    out = HtmlExtract()(table([h for _, h in pages]))
    s = score(out["text"].to_pylist(), gold)
    assert s["with_found"] > 0.7 and s["without_absent"] > 0.7


@pytest.mark.parametrize("extractor", ["fast", "resiliparse", "trafilatura"])
def test_sample_warc_pages_extract_in_every_charset(tmp_path, extractor):
    from pipeline.samples_html import make_sample_warc
    from pipeline.warc import read_warc_batches

    info = make_sample_warc(str(tmp_path / "s.warc.gz"), n_pages=10)
    out = pa.concat_tables([HtmlExtract(extractor=extractor)(b) for b in read_warc_batches(str(tmp_path / "s.warc.gz"))])
    assert out["drop_reason"].null_count == 10
    for row, i in zip(out.to_pylist(), info):
        assert i["snippet"] in row["text"], (i["charset"], row["url"])
        assert row["html_lang"] == i["language"]


def test_fast_falls_back_to_trafilatura_only_on_near_empty_text(monkeypatch):
    import operators._extract_fast as fx

    calls = []
    monkeypatch.setattr(fx, "_trafilatura", lambda h: calls.append(h) or "from trafilatura")
    text, _, _ = fx.extract_fast(page(), fallback_chars=300)  # the article (451 chars): no fallback
    assert not calls and ARTICLE in text
    tiny = "<html><body><div><p>Kurz.</p></div></body></html>"
    text, _, _ = fx.extract_fast(tiny, fallback_chars=500)
    assert calls == [tiny] and text == "from trafilatura"
    calls.clear()
    text, _, _ = fx.extract_fast(tiny, fallback_chars=0)
    assert not calls and "Kurz." in text
    # the operator: cascade=0 means never
    HtmlExtract(cascade=0.0)(table([tiny.encode()]))
    assert not calls
    HtmlExtract()(table([tiny.encode()]))
    assert len(calls) == 1


def test_fast_block_rules_lists_links_headings_spaces():
    import operators._extract_fast as fx

    items = "".join(f"<li>Schritt {i}: den Boden gründlich lockern und danach gleichmäßig wässern</li>"
                    for i in range(6))
    links = "".join(f'<li><a href="/n{i}">Meldung {i}</a></li>' for i in range(8))
    more = "".join(f"<p>{i}. {ARTICLE}</p>" for i in range(6))  # a paragraph-rich container
    body = (f"{more}<ul>{items}</ul><h2>Mehr zum Thema</h2><ul>{links}</ul>"
            "<p>Die Ergebnisse erscheinen im Frühjahr&nbsp;2025 in einer Fachzeitschrift.</p>"
            "<div>Foto: Agentur</div><h3>Weitere Artikel</h3>")
    html = page().replace(f"<p>{ARTICLE2}</p>", f"<p>{ARTICLE2}</p>{body}")
    text, _, _ = fx.extract_fast(html, fallback_chars=0)
    assert "- Schritt 0: den Boden" in text and "Schritt 5" in text  # content list kept, as items
    assert "Meldung" not in text  # link list dropped (link density)
    assert "Mehr zum Thema" not in text  # its heading goes with it
    assert "Weitere Artikel" not in text  # trailing heading
    assert "Foto: Agentur" not in text  # loose line in a paragraph-rich container
    assert "im Frühjahr 2025 in" in text  # no-break space normalised as trafilatura does
    assert ARTICLE in text and ARTICLE2 in text


def test_fast_skips_containers_inside_sidebars():
    import operators._extract_fast as fx

    teaser = ('<aside><div class="post"><p>' + "Ein Teaser aus der Seitenleiste mit reichlich Text. " * 8
              + "</p></div></aside>")
    html = page().replace('<div class="layout">', '<div class="layout">' + teaser)
    text, _, _ = fx.extract_fast(html, fallback_chars=0)
    assert ARTICLE in text and "Teaser" not in text


def test_short_article_nested_in_main_is_not_repeated():
    """A short page (text < the container-stage threshold) used to come out twice: once from
    <article>, again from the enclosing <main> / whole-page pass."""
    from operators._extract_fast import extract_fast
    from pipeline.samples import html_page, multilingual_docs

    for doc in multilingual_docs(60, seed=2):
        if doc["lang"] == "und":
            continue
        text, _, lang = extract_fast(html_page(doc), 0)
        lines = [line for line in text.split("\n") if line]
        assert len(lines) == len(set(lines)), doc["id"]
        assert lang == doc["lang"]
