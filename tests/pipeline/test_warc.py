"""WARC / WET reader: framing, bad-input quarantine, accounting, agreement with fastwarc."""
from __future__ import annotations

import gzip
import logging
import pathlib

import pyarrow as pa
import pytest

from pipeline.warc import read_warc_batches

DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")


def _record(rid: str, body: bytes, *, status: str = "200 OK", ctype: str = "text/html; charset=utf-8",
            cl_delta: int = 0, wtype: str = "response", http: bool = True) -> bytes:
    block = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n\r\n".encode() + body) if http else body
    head = (f"WARC/1.0\r\nWARC-Type: {wtype}\r\nWARC-Record-ID: <urn:uuid:{rid}>\r\n"
            f"WARC-Target-URI: http://example.com/{rid}\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
            f"Content-Type: application/http; msgtype=response\r\n"
            f"Content-Length: {len(block) + cl_delta}\r\n\r\n").encode()
    return head + block + b"\r\n\r\n"


def _page(i: int) -> bytes:
    return (f"<html><head><title>Page {i}</title></head><body><p>Paragraph number {i} "
            f"with some words.</p></body></html>").encode()


def _read(path, **kw) -> pa.Table:
    tables = list(read_warc_batches(str(path), **kw))
    assert tables, "reader yielded nothing"
    return pa.concat_tables(tables)


def _write(tmp_path, name, data: bytes) -> pathlib.Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _members(n=5):
    return [gzip.compress(_record(f"rec-{i}", _page(i))) for i in range(n)]


def test_good_gzip_file_columns_and_order(tmp_path):
    p = _write(tmp_path, "ok.warc.gz", gzip.compress(_record("info", b"software: x", wtype="warcinfo", http=False))
               + b"".join(_members(5)))
    t = _read(p)
    assert t.column_names == ["id", "url", "warc_date", "warc_record_id", "http_status", "content_type",
                              "html", "text", "drop_reason"]
    assert t["id"].to_pylist() == [f"rec-{i}" for i in range(5)]
    assert t["url"].to_pylist()[0] == "http://example.com/rec-0"
    assert t["http_status"].type == pa.int32() and set(t["http_status"].to_pylist()) == {200}
    assert t["html"].to_pylist()[3] == _page(3)
    assert t["content_type"].to_pylist()[0] == "text/html; charset=utf-8"
    assert t["drop_reason"].null_count == 5
    assert t["text"].null_count == 5


def test_uncompressed_and_whole_file_gzip_give_the_same_rows(tmp_path):
    raw = b"".join(_record(f"rec-{i}", _page(i)) for i in range(4))
    a = _read(_write(tmp_path, "a.warc", raw))
    b = _read(_write(tmp_path, "b.warc.gz", gzip.compress(raw)))
    assert a.equals(b)
    assert a.num_rows == 4 and a["drop_reason"].null_count == 4


def test_batches_respect_batch_rows_and_id_prefix(tmp_path):
    p = _write(tmp_path, "many.warc.gz", b"".join(_members(10)))
    tables = list(read_warc_batches(str(p), batch_rows=3, id_prefix="crawl1/"))
    assert [t.num_rows for t in tables] == [3, 3, 3, 1]
    assert tables[0]["id"][0].as_py() == "crawl1/rec-0"


def test_truncated_gzip_keeps_records_before_and_names_file_and_offset(tmp_path, caplog):
    members = _members(4)
    offset = sum(len(m) for m in members[:3])
    p = _write(tmp_path, "cut.warc.gz", b"".join(members[:3]) + members[3][: len(members[3]) // 2])
    with caplog.at_level(logging.ERROR, logger="gristmill.warc"):
        t = _read(p)
    assert t["id"].to_pylist()[:3] == ["rec-0", "rec-1", "rec-2"]
    assert t["drop_reason"].to_pylist()[:3] == [None] * 3
    assert t.num_rows == 4
    reason = t["drop_reason"][3].as_py()
    assert reason == f"input:truncated_gzip at byte {offset} of cut.warc.gz"
    assert any("cut.warc.gz" in r.getMessage() and "truncated_gzip" in r.getMessage() for r in caplog.records)


def test_corrupt_gzip_member_is_quarantined_and_reading_resumes(tmp_path):
    members = _members(5)
    bad = bytearray(members[2])
    for k in range(25, 45):
        bad[k] ^= 0x5A
    offset = len(members[0]) + len(members[1])
    p = _write(tmp_path, "corrupt.warc.gz", members[0] + members[1] + bytes(bad) + members[3] + members[4])
    t = _read(p)
    ids, reasons = t["id"].to_pylist(), t["drop_reason"].to_pylist()
    assert ids[:2] == ["rec-0", "rec-1"] and reasons[:2] == [None, None]
    assert reasons[2] == f"input:corrupt_gzip at byte {offset} of corrupt.warc.gz"
    assert ids[-2:] == ["rec-3", "rec-4"] and reasons[-2:] == [None, None]
    assert t.num_rows == 5  # docs in (5 records) = kept (4) + quarantined (1)


def test_garbage_between_members(tmp_path):
    members = _members(3)
    p = _write(tmp_path, "junk.warc.gz", members[0] + b"this is not gzip at all" + members[1] + members[2])
    t = _read(p)
    assert [r is None for r in t["drop_reason"].to_pylist()] == [True, False, True, True]
    assert t["drop_reason"][1].as_py().startswith(f"input:corrupt_gzip at byte {len(members[0])} of junk.warc.gz")


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("delta", [+17, -9])
def test_content_length_mismatch_is_quarantined_and_neighbours_kept(tmp_path, compress, delta):
    recs = [_record("a", _page(0)), _record("b", _page(1), cl_delta=delta), _record("c", _page(2))]
    data = b"".join(gzip.compress(r) if compress else r for r in recs)
    t = _read(_write(tmp_path, "cl.warc.gz" if compress else "cl.warc", data))
    assert t["id"].to_pylist() == ["a", "b", "c"]
    reasons = t["drop_reason"].to_pylist()
    assert reasons[0] is None and reasons[2] is None
    assert reasons[1].startswith("input:content_length_mismatch at byte ")
    assert t["html"][2].as_py() == _page(2)


def test_truncated_uncompressed_file(tmp_path):
    raw = b"".join(_record(f"rec-{i}", _page(i)) for i in range(3))
    t = _read(_write(tmp_path, "cut.warc", raw[:-40]))
    assert t["drop_reason"].to_pylist()[:2] == [None, None]
    assert t["drop_reason"][2].as_py().startswith("input:truncated_record at byte ")


def test_http_errors_redirects_empty_bodies_are_quarantined(tmp_path):
    recs = [_record("ok", _page(1)), _record("nf", b"<html>gone</html>", status="404 Not Found"),
            _record("mv", b"", status="301 Moved Permanently"), _record("empty", b""),
            _record("blank", b"  \r\n "), _record("err", b"oops", status="503 Service Unavailable"),
            _record("nohttp", b"not an http response at all", http=False)]
    t = _read(_write(tmp_path, "http.warc.gz", b"".join(gzip.compress(r) for r in recs)))
    got = dict(zip(t["id"].to_pylist(), t["drop_reason"].to_pylist()))
    assert got["ok"] is None
    assert got["nf"] == "input:http_error" and got["err"] == "input:http_error"
    assert got["mv"] == "input:http_redirect"
    assert got["empty"] == "input:empty_body" and got["blank"] == "input:empty_body"
    assert got["nohttp"].startswith("input:bad_http")
    assert t.num_rows == len(recs)


def test_only_response_records_become_rows(tmp_path):
    recs = [_record("req", b"GET / HTTP/1.1\r\n\r\n", wtype="request", http=False), _record("resp", _page(1)),
            _record("meta", b"fetchTimeMs: 1\r\n", wtype="metadata", http=False)]
    t = _read(_write(tmp_path, "mixed.warc.gz", b"".join(gzip.compress(r) for r in recs)))
    assert t["id"].to_pylist() == ["resp"]


def test_wet_conversion_records(tmp_path):
    recs = [_record("info", b"x: y", wtype="warcinfo", http=False),
            _record("w1", "Hello wörld\nSecond line".encode(), wtype="conversion", http=False),
            _record("w2", b"", wtype="conversion", http=False)]
    t = _read(_write(tmp_path, "x.warc.wet.gz", b"".join(gzip.compress(r) for r in recs)), fmt="wet")
    assert t.column_names == ["id", "url", "warc_date", "warc_record_id", "text", "drop_reason"]
    assert t["text"][0].as_py() == "Hello wörld\nSecond line"
    assert t["drop_reason"].to_pylist() == [None, "input:empty_body"]


def test_pyarrow_filesystem_argument(tmp_path):
    from pyarrow.fs import LocalFileSystem

    p = _write(tmp_path, "fs.warc.gz", b"".join(_members(3)))
    t = pa.concat_tables(list(read_warc_batches(str(p), filesystem=LocalFileSystem())))
    assert t["id"].to_pylist() == ["rec-0", "rec-1", "rec-2"]
    t2 = pa.concat_tables(list(read_warc_batches(p.as_uri())))
    assert t2.equals(t)


def test_large_file_streams_across_read_chunks(tmp_path, monkeypatch):
    import pipeline.warc as w

    monkeypatch.setattr(w, "READ_CHUNK", 257)  # many records straddle chunk boundaries
    members = _members(40)
    t = _read(_write(tmp_path, "big.warc.gz", b"".join(members)))
    assert t["id"].to_pylist() == [f"rec-{i}" for i in range(40)]
    assert t["drop_reason"].null_count == 40


@needs_data
@pytest.mark.parametrize("rel", ["cc/whirlwind.warc.gz", "cc/warcfile.warc.gz", "cc/clueweb-quirk.warc.gz",
                                 "peers/dolma/sample-0000.warc.gz", "peers/dolma/sample-0001.warc.gz",
                                 "cc/whirlwind.warc.wet.gz", "cc/block-sized-records.warc.gz",
                                 "cc/whirlwind.warc.wat.gz", "web/pages.warc.gz"])
def test_real_files_match_fastwarc(rel):
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    path = DATA / rel
    wet = ".wet." in rel
    rtype = WarcRecordType.conversion if wet else WarcRecordType.response
    expected = {}
    with open(path, "rb") as f:
        for r in ArchiveIterator(f, record_types=rtype, parse_http=not wet, auto_decode="all"):
            expected[r.headers["WARC-Record-ID"]] = r.reader.read()
    tables = list(read_warc_batches(str(path), fmt="wet" if wet else "warc"))
    rows = pa.concat_tables(tables).to_pylist() if tables else []
    assert len(rows) == len(expected)
    for row in rows:
        assert row["drop_reason"] is None
        payload = row["text"].encode() if wet else row["html"]
        assert payload == expected[row["warc_record_id"]]


@needs_data
def test_clipped_real_file_errors_with_file_and_offset():
    t = _read(DATA / "cc" / "clipped.warc.gz")
    assert t.num_rows == 1
    assert t["drop_reason"][0].as_py() == "input:truncated_gzip at byte 0 of clipped.warc.gz"
    assert t["url"][0].as_py().startswith("http://www.houstonpress.com/")


def test_sample_warc_is_deterministic_and_readable(tmp_path):
    from pipeline.samples_html import make_sample_warc

    a, b = tmp_path / "a.warc.gz", tmp_path / "b.warc.gz"
    info = make_sample_warc(str(a), n_pages=8)
    make_sample_warc(str(b), n_pages=8)
    assert a.read_bytes() == b.read_bytes()
    t = _read(a)
    assert t.num_rows == 8 and t["drop_reason"].null_count == 8
    assert t["url"].to_pylist() == [i["url"] for i in info]
    assert {i["language"] for i in info} == {"en", "de", "fr", "es", "pl"}
    assert {i["charset"] for i in info} > {"utf-8"}  # some pages in legacy charsets


@pytest.mark.parametrize("compress", [True, False])
def test_content_length_overrunning_to_the_end_keeps_the_next_record(tmp_path, compress):
    """A Content-Length past the end of the file must not take the good record after it along."""
    recs = [_record("a", _page(0)), _record("b", _page(1), cl_delta=5000), _record("c", _page(2))]
    data = b"".join(gzip.compress(r) if compress else r for r in recs)
    t = _read(_write(tmp_path, "over.warc.gz" if compress else "over.warc", data))
    assert t["id"].to_pylist() == ["a", "b", "c"]
    reasons = t["drop_reason"].to_pylist()
    assert reasons[0] is None and reasons[2] is None
    assert reasons[1].startswith("input:content_length_mismatch at byte ")
    assert t["html"][2].as_py() == _page(2)


def test_only_warcinfo_and_zero_bytes_read_as_no_rows(tmp_path):
    info = gzip.compress(_record("info", b"software: x\r\n", wtype="warcinfo", http=False))
    assert list(read_warc_batches(str(_write(tmp_path, "info.warc.gz", info)))) == []
    assert list(read_warc_batches(str(_write(tmp_path, "zero.warc.gz", b"")))) == []
