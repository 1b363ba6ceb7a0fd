"""Every kind of bad input (issue 25): each ends in a clear error or quarantined rows whose
drop_reason names the file, line / row / byte offset and the problem, and every good record of the
file is kept. Files are built small here; size guards are proven with lowered limits plus one real
50 MB case."""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.io import MAX_RECORD_BYTES, read_file_batches
from pipeline.lock import OutputError, output_lock

ROOT = Path(__file__).resolve().parents[2]
GOOD = [{"id": f"g{i}", "text": f"good document number {i} with a few words"} for i in range(3)]


def jsonl(records) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def read(path, fmt="jsonl", **kw):
    tables = list(read_file_batches(str(path), "f", fmt, 1000, **kw))
    return pa.concat_tables(tables, promote_options="default").to_pylist() if tables else []


def kept(rows):
    return [r["id"] for r in rows if r["drop_reason"] is None]


def reasons(rows):
    return [r["drop_reason"] for r in rows if r["drop_reason"] is not None]


# -- empty files ------------------------------------------------------------------------------
def _empty_files(d: Path) -> dict[str, tuple[str, Path]]:
    from tests.pipeline.test_warc import _record  # noqa: PLC0415  (the WARC record builder)

    files = {"jsonl_0_bytes": ("jsonl", d / "a.jsonl"), "jsonl_blank_lines": ("jsonl", d / "b.jsonl"),
             "jsonl_gz_empty": ("jsonl", d / "c.jsonl.gz"), "parquet_0_bytes": ("parquet", d / "d.parquet"),
             "parquet_zero_rows": ("parquet", d / "e.parquet"), "warc_0_bytes": ("warc", d / "f.warc.gz"),
             "warc_only_warcinfo": ("warc", d / "g.warc.gz"), "wet_0_bytes": ("wet", d / "h.warc.wet.gz")}
    files["jsonl_0_bytes"][1].write_bytes(b"")
    files["jsonl_blank_lines"][1].write_bytes(b"\n\r\n  \n")
    files["jsonl_gz_empty"][1].write_bytes(gzip.compress(b""))
    files["parquet_0_bytes"][1].write_bytes(b"")
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}),
                   files["parquet_zero_rows"][1])
    files["warc_0_bytes"][1].write_bytes(b"")
    info = _record("info", b"software: test\r\n", wtype="warcinfo", http=False)
    files["warc_only_warcinfo"][1].write_bytes(gzip.compress(info))
    files["wet_0_bytes"][1].write_bytes(b"")
    return files


def test_empty_files_of_every_format_read_as_zero_rows(tmp_path):
    for kind, (fmt, path) in _empty_files(tmp_path).items():
        assert read(path, fmt) == [], kind


def test_empty_first_file_does_not_stop_validation(tmp_path):
    from pipeline.recipe import load_recipe

    (tmp_path / "a.jsonl").write_bytes(b"")
    (tmp_path / "b.jsonl").write_bytes(jsonl(GOOD))
    p = tmp_path / "r.yaml"
    p.write_text(f"name: e\ninput: {{format: jsonl, paths: ['{tmp_path}/*.jsonl']}}\noutput: {tmp_path}/out\n"
                 "steps:\n  - {id: len, op: length_filter}\n")
    assert load_recipe(str(p)).recipe.name == "e"
    (tmp_path / "b.jsonl").unlink()  # only empty files: still valid, zero rows
    assert load_recipe(str(p)).recipe.name == "e"


# -- compression ----------------------------------------------------------------------------------
def test_truncated_gzip_keeps_the_lines_before_and_names_the_offset(tmp_path):
    data = gzip.compress(jsonl(GOOD * 200))
    p = tmp_path / "cut.jsonl.gz"
    p.write_bytes(data[: len(data) // 2])
    rows = read(p)
    assert 0 < len(kept(rows)) < 600
    assert reasons(rows)[-1].startswith("input:truncated_gzip at byte 0 of f")
    assert all(r.startswith("input:truncated_gzip") or r.startswith("input:duplicate_id") for r in reasons(rows))


def test_corrupt_gzip_member_is_quarantined_and_the_next_members_kept(tmp_path):
    good = [gzip.compress(jsonl([r])) for r in GOOD]
    bad = bytearray(gzip.compress(jsonl([{"id": "x", "text": "lost in the corrupt member " * 20}])))
    bad[12:20] = b"\xff" * 8
    p = tmp_path / "multi.jsonl.gz"
    p.write_bytes(good[0] + bytes(bad) + good[1] + good[2])
    rows = read(p)
    assert kept(rows) == ["g0", "g1", "g2"]
    assert len(reasons(rows)) == 1 and reasons(rows)[0].startswith(f"input:corrupt_gzip at byte {len(good[0])} of f")


def test_several_gzip_members_in_one_file_are_all_read(tmp_path):
    p = tmp_path / "members.jsonl.gz"
    p.write_bytes(b"".join(gzip.compress(jsonl([r])) for r in GOOD))
    assert kept(read(p)) == ["g0", "g1", "g2"]


@pytest.mark.parametrize("cut", ["truncated", "corrupt"])
def test_damaged_zstd(tmp_path, cut):
    c = zstandard.ZstdCompressor()
    first = c.compress(jsonl(GOOD[:2]))
    second = bytearray(c.compress(jsonl([{"id": f"z{i}", "text": f"zstd doc {i}"} for i in range(50)])))
    if cut == "truncated":
        second = second[: len(second) // 2]
    else:
        second[len(second) // 2:] = b"\x00" * (len(second) - len(second) // 2)
    p = tmp_path / "z.jsonl.zst"
    p.write_bytes(first + bytes(second))
    rows = read(p)
    assert kept(rows)[:2] == ["g0", "g1"]
    assert reasons(rows)[-1].startswith(f"input:{cut}_zstd at byte {len(first)} of f")


@pytest.mark.parametrize("name,compress", [("plain.jsonl.gz", None), ("gz.jsonl", gzip.compress),
                                           ("gz.jsonl.zst", gzip.compress),
                                           ("zst.jsonl.gz", zstandard.ZstdCompressor().compress)])
def test_extension_that_lies_about_compression(tmp_path, name, compress):
    data = jsonl(GOOD)
    (tmp_path / name).write_bytes(compress(data) if compress else data)
    assert kept(read(tmp_path / name)) == ["g0", "g1", "g2"]


# -- records ----------------------------------------------------------------------------------------
def test_bad_records_are_quarantined_with_line_and_reason(tmp_path):
    lines = [GOOD[0], b"{not json", {"id": "n", "text": 42}, {"id": "l", "text": ["a", "list"]},
             {"id": "o", "text": {"an": "object"}}, {"id": "z", "text": None}, GOOD[1],
             b'{"id": "nul", "text": "a\\u0000b"}', b'{"id": "nulraw", "text": "a\x00b"}',
             b'{"id": "sur", "text": "lone \\ud800 surrogate"}', b'{"id": "pair", "text": "ok \\ud83d\\ude00"}',
             b'{"id": "utf", "text": "bad \xff\xfe bytes"}', {"id": "ws", "text": " \n\t\u3000 "},
             {"id": "g0", "text": "a second document with id g0"}, GOOD[2], b"[1, 2]"]
    p = tmp_path / "bad.jsonl"
    p.write_bytes(jsonl(lines))
    rows = read(p)
    assert kept(rows) == ["g0", "g1", "pair", "g2"]
    got = {r["id"]: r["drop_reason"] for r in rows if r["drop_reason"]}
    assert got["f:2"].startswith("input:invalid_json at line 2 of f")
    assert got["n"] == "input:text_not_string (int) at line 3 of f"
    assert got["l"] == "input:text_not_string (list) at line 4 of f"
    assert got["o"] == "input:text_not_string (dict) at line 5 of f"
    assert got["z"] == "input:missing_text"
    assert got["nul"] == "input:nul_byte at line 8 of f"
    assert got["f:9"].startswith("input:invalid_json at line 9 of f: Invalid control character")
    assert got["sur"] == "input:lone_surrogate at line 10 of f"
    assert got["f:12"].startswith("input:invalid_utf8 at line 12 of f")
    assert got["ws"] == "input:empty_text at line 13 of f"
    assert got["g0"] == "input:duplicate_id 'g0' at line 14 of f (first at line 1)"
    assert got["f:16"].startswith("input:invalid_json at line 16 of f: not a JSON object but list")
    assert len(rows) == len(lines)  # every line accounted for


def test_bom_and_crlf_line_ends(tmp_path):
    p = tmp_path / "win.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + jsonl(GOOD).replace(b"\n", b"\r\n"))
    rows = read(p)
    assert kept(rows) == ["g0", "g1", "g2"] and rows[0]["text"] == GOOD[0]["text"]


def test_no_invented_columns(tmp_path):
    p = tmp_path / "plain.jsonl"
    p.write_bytes(jsonl(GOOD))
    assert set(read(p)[0]) == {"id", "text", "drop_reason"}
    p.write_bytes(jsonl([{**GOOD[0], "url": "http://x", "score": 1}]))
    row = read(p)[0]
    assert row["url"] == "http://x" and json.loads(row["meta"]) == {"score": 1} and "source" not in row


# -- size -----------------------------------------------------------------------------------------------
def test_oversized_line_is_quarantined_without_losing_its_neighbours(tmp_path):
    big = {"id": "big", "text": "word " * 600_000}  # 3 MB line, guard lowered to 1 MB
    p = tmp_path / "big.jsonl.gz"
    p.write_bytes(gzip.compress(jsonl([GOOD[0], big, GOOD[1]])))
    rows = list(_jsonl(p, max_record_bytes=1 << 20))
    assert kept(rows) == ["g0", "g1"]
    assert reasons(rows) == [f"input:too_large ({len(json.dumps(big))} bytes > {1 << 20}) at line 2 of f"]


def _jsonl(path, **kw):
    from pipeline.io import read_jsonl_batches

    for t in read_jsonl_batches(str(path), "f", 1000, "id", "text", **kw):
        yield from t.to_pylist()


def test_real_50mb_document_and_1mb_word(tmp_path):
    p = tmp_path / "huge.jsonl"
    with open(p, "wb") as f:
        f.write(jsonl([GOOD[0], {"id": "word", "text": "x" * (1 << 20)}]))
        f.write(b'{"id": "huge", "text": "' + b"lorem ipsum " * (50 * (1 << 20) // 12) + b'"}\n')
        f.write(jsonl([GOOD[1]]))
    rows = read(p)
    assert kept(rows) == ["g0", "word", "g1"]
    assert reasons(rows)[0].startswith("input:too_large (") and f"> {MAX_RECORD_BYTES}) at line 3 of f" in reasons(rows)[0]
    assert rows[2]["text"] is None  # the 50 MB line was never kept in memory


def test_text_operators_stay_bounded_on_a_1mb_word_and_a_huge_line():
    """The quickstart's text filters on pathological documents: they finish and keep accounting."""
    from operators.base import load_operators

    reg = load_operators()
    texts = ["A normal English sentence. Another one follows here.\n" * 20, "x" * (1 << 20),
             "one enormous line with words " * 36_000]  # 1 MB word, 1 MB line (cost grows linearly)
    batch = pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts,
                      "language": ["en"] * len(texts)})
    for name in ("gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality", "length_filter"):
        out = reg[name]()(batch)
        assert out.num_rows == batch.num_rows, name
        assert out.column("id").to_pylist() == batch.column("id").to_pylist(), name


# -- Parquet --------------------------------------------------------------------------------------------
def test_parquet_truncated_footer_is_one_quarantined_row(tmp_path):
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x y", "z w"]}), tmp_path / "ok.parquet")
    data = (tmp_path / "ok.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[:-20])
    rows = read(tmp_path / "cut.parquet", "parquet")
    assert kept(rows) == [] and len(rows) == 1
    assert rows[0]["drop_reason"].startswith("input:corrupt_parquet f:")


def test_parquet_corrupt_row_group_keeps_the_others(tmp_path):
    t = pa.table({"id": [f"r{i}" for i in range(3000)], "text": [f"row {i} " * 30 for i in range(3000)]})
    pq.write_table(t, tmp_path / "rg.parquet", row_group_size=1000, compression="zstd")
    md = pq.ParquetFile(tmp_path / "rg.parquet").metadata
    col = md.row_group(1).column(1)
    data = bytearray((tmp_path / "rg.parquet").read_bytes())
    mid = col.data_page_offset + col.total_compressed_size // 2
    data[mid:mid + 64] = os.urandom(64)
    (tmp_path / "rg.parquet").write_bytes(bytes(data))
    rows = read(tmp_path / "rg.parquet", "parquet")
    assert len(reasons(rows)) == 1
    m = re.match(r"input:corrupt_parquet row group (\d) of f \(1000 rows\): ", reasons(rows)[0])
    assert m, reasons(rows)
    lost = range(int(m.group(1)) * 1000, int(m.group(1)) * 1000 + 1000)
    assert kept(rows) == [f"r{i}" for i in range(3000) if i not in lost]


def test_parquet_text_types(tmp_path):
    pq.write_table(pa.table({"id": ["a", "b"], "text": pa.array(["large string", "ok"], pa.large_string())}),
                   tmp_path / "large.parquet")
    assert kept(read(tmp_path / "large.parquet", "parquet")) == ["a", "b"]
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": [1, 2, None]}), tmp_path / "ints.parquet")
    rows = read(tmp_path / "ints.parquet", "parquet")
    assert kept(rows) == []
    assert reasons(rows) == ["input:text_not_string (int64 column 'text') in f"] * 2 + ["input:missing_text"]
    pq.write_table(pa.table({"id": ["a", "a", "b"], "text": ["x y", "z", " \n "]}), tmp_path / "dup.parquet")
    rows = read(tmp_path / "dup.parquet", "parquet")
    assert kept(rows) == ["a"] and reasons(rows) == ["input:duplicate_id 'a' at row 1 of f (first at row 0)",
                                           "input:empty_text at row 2 of f"]


def _validate(tmp_path, input_yaml: str) -> tuple[int, str]:
    p = tmp_path / "r.yaml"
    p.write_text(f"name: v\ninput: {input_yaml}\noutput: {tmp_path}/out\nsteps:\n  - {{id: len, op: length_filter}}\n")
    from pipeline import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["validate", str(p)])
    return rc, err.getvalue() + out.getvalue()


def test_parquet_text_column_of_another_type_is_a_clear_error_at_validation(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "text": [7]}), tmp_path / "ints.parquet")
    rc, msg = _validate(tmp_path, f"{{format: parquet, paths: ['{tmp_path}/ints.parquet']}}")
    assert rc == 2 and "Traceback" not in msg
    assert "ints.parquet: column 'text' is int64, not text" in msg


# -- HTML ------------------------------------------------------------------------------------------------
def _html_batch(pages: dict[str, bytes], ctypes=None) -> pa.Table:
    cols = {"id": list(pages), "html": list(pages.values())}
    if ctypes:
        cols["content_type"] = ctypes
    return pa.table(cols)


GOOD_PAGE = ("<html><head><title>t</title></head><body><article><p>"
             + "A good page with plenty of words to extract here. " * 30 + "</p></article></body></html>").encode()


def test_html_size_and_depth_guards():
    from operators.html_extract import HtmlExtract

    deep = ("<html><body>" + "<div>" * 100_000 + "<p>deep</p>" + "</div>" * 100_000 + "</body></html>").encode()
    para = ("<p>" + "Some ordinary sentence with words in it. " * 20 + "</p>\n").encode()
    big50 = b"<html><body>" + para * (50_000_000 // len(para)) + b"</body></html>"
    mid = b"<html><body>" + para * (300_000 // len(para)) + b"</body></html>"
    batch = _html_batch({"good": GOOD_PAGE, "deep": deep, "big50": big50, "mid": mid})
    out = HtmlExtract()(batch)  # defaults: 16 MB, depth 2000
    assert out.column("drop_reason").to_pylist() == [None, "extract:too_deep", "extract:too_large", None]
    out = HtmlExtract(max_page_bytes=200_000)(batch)  # the guard is a parameter
    assert out.column("drop_reason").to_pylist() == [None, "extract:too_large", "extract:too_large",
                                                     "extract:too_large"]


def test_html_time_guard_stops_one_slow_page():
    from operators.html_extract import HtmlExtract

    para = ("<div><p>" + "An ordinary sentence with <a href='#'>a link</a> and words. " * 20 + "</p></div>\n").encode()
    slow = b"<html><body>" + para * (3_000_000 // len(para)) + b"</body></html>"  # seconds in trafilatura
    op = HtmlExtract(extractor="trafilatura", time_limit_s=0.3)
    op(_html_batch({"warm": GOOD_PAGE}))  # imports and first-call costs out of the way
    out = op(_html_batch({"good": GOOD_PAGE, "slow": slow, "good2": GOOD_PAGE}))
    assert out.column("drop_reason").to_pylist() == [None, "extract:timeout", None]
    assert "plenty of words" in out.column("text")[2].as_py()


def test_declared_charset_that_lies_is_decoded():
    from operators.html_extract import HtmlExtract

    ru = ("<html><head><meta charset='utf-8'></head><body><article><p>"
          + "Съешь же ещё этих мягких французских булок, да выпей чаю. " * 20 + "</p></article></body></html>")
    fr = ("<html><body><article><p>" + "Le cœur déçu mais l'âme plutôt naïve, Louÿs rêva de crapaüter. " * 20
          + "</p></article></body></html>")
    batch = _html_batch({"ru": ru.encode("cp1251"), "fr": fr.encode("utf-8")},
                        ["text/html; charset=utf-8", "text/html; charset=iso-8859-1"])
    out = HtmlExtract()(batch)
    assert out.column("drop_reason").to_pylist() == [None, None]
    assert "французских булок" in out.column("text")[0].as_py() and "déçu" in out.column("text")[1].as_py()


# -- output directory -----------------------------------------------------------------------------------
def _cli_run(recipe: Path, *extra) -> tuple[int, str]:
    from pipeline import cli

    err = io.StringIO()
    old, sys.stderr = sys.stderr, err
    try:
        rc = cli.main(["run", str(recipe), "--quiet", *extra])
    finally:
        sys.stderr = old
    return rc, err.getvalue()


def _small_recipe(tmp_path) -> Path:
    (tmp_path / "in.jsonl").write_bytes(jsonl(GOOD))
    p = tmp_path / "r.yaml"
    p.write_text(f"name: lock\ninput: {{format: jsonl, paths: ['{tmp_path}/in.jsonl']}}\noutput: {tmp_path}/out\n"
                 "steps:\n  - {id: len, op: length_filter}\n")
    return p


def _holder(out: Path) -> subprocess.Popen:
    """Another process holding the output dir, as a run in progress does."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        import sys, time; sys.path.insert(0, {str(ROOT)!r})
        from pipeline.lock import output_lock
        with output_lock({str(out)!r}):
            print("held", flush=True); time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_second_run_on_the_same_output_refuses(tmp_path):
    p = _small_recipe(tmp_path)
    holder = _holder(tmp_path / "out")
    try:
        rc, msg = _cli_run(p)
    finally:
        holder.kill()
        holder.wait()
    assert rc == 3
    assert f"output {tmp_path}/out is in use by another gristmill run (pid {holder.pid} on " in msg
    assert "Traceback" not in msg
    assert not (tmp_path / "out" / "recipe.json").exists()  # nothing of the running run overwritten


def test_a_crashed_runs_lock_is_not_stuck(tmp_path):
    out = tmp_path / "out"
    holder = _holder(out)
    try:
        with pytest.raises(OutputError, match=rf"pid {holder.pid} on "):
            with output_lock(str(out)):
                pass
    finally:
        holder.kill()  # SIGKILL: no cleanup runs in the holder
        holder.wait()
    with output_lock(str(out)):  # the kernel released it with the process
        with output_lock(str(out)):  # reentrant in one process (the CLI and the executor both take it)
            pass


def test_unwritable_output_fails_fast(tmp_path):
    p = _small_recipe(tmp_path)
    (tmp_path / "a_file").write_text("x")
    rc, msg = _cli_run(p, "--output", str(tmp_path / "a_file" / "out"))
    assert rc == 3 and "cannot write there" in msg and "Traceback" not in msg


# -- a whole run over a folder of bad files: accounting holds --------------------------------------------
def test_run_over_bad_files_keeps_every_good_record_and_accounts_for_the_rest(ray_session, tmp_path):
    from pipeline.executor import RunOptions, run_recipe
    from pipeline.recipe import load_recipe

    d = tmp_path / "in"
    d.mkdir()
    (d / "00-empty.jsonl").write_bytes(b"")
    (d / "01-good.jsonl.gz").write_bytes(b"".join(gzip.compress(jsonl([r])) for r in GOOD))
    cut = gzip.compress(jsonl([{"id": f"c{i}", "text": f"cut file doc {i} " * 5} for i in range(300)]))
    (d / "02-cut.jsonl.gz").write_bytes(cut[: len(cut) * 2 // 3])
    (d / "03-lying.jsonl.zst").write_bytes(gzip.compress(jsonl([{"id": "l1", "text": "lying extension doc"}])))
    (d / "04-bad.jsonl").write_bytes(jsonl([{"id": "b1", "text": "fine document here"}, b"{oops",
                                            {"id": "b2", "text": 3}, b'{"id": "b3", "text": "\\ud800"}',
                                            {"id": "b4", "text": "   "}, {"id": "b1", "text": "dup"}]))
    p = tmp_path / "r.yaml"
    p.write_text(f"name: bad\ninput: {{format: jsonl, paths: ['{d}/*']}}\noutput: {tmp_path}/out\n"
                 "steps:\n  - {id: len, op: length_filter, params: {min_chars: 5}}\n")
    stats = run_recipe(load_recipe(str(p)), RunOptions(output=str(tmp_path / "out"), quiet=True))
    read_step = stats["steps"][0]
    assert stats["invariant_ok"]
    out = pq.read_table(tmp_path / "out" / "len")
    good_cut = read_step["docs_out"] - 3 - 1 - 1  # good file, lying file, b1
    assert 0 < good_cut < 300
    assert out.num_rows == read_step["docs_out"]
    assert {"g0", "g1", "g2", "l1", "b1"} <= set(out.column("id").to_pylist())
    rejected = pq.read_table(tmp_path / "out" / "rejected" / "read").column("drop_reason").to_pylist()
    assert read_step["docs_dropped"] == len(rejected) == 6
    kinds = sorted(r.split(" ")[0] for r in rejected)
    assert kinds == ["input:duplicate_id", "input:empty_text", "input:invalid_json", "input:lone_surrogate",
                     "input:text_not_string", "input:truncated_gzip"]


def test_engine_units_of_damaged_parquet_are_quarantined(tmp_path):
    """The engine splits Parquet by row group (pipeline.io.input_units / read_unit): a file with an
    unreadable footer becomes one whole-file unit that quarantines it, instead of failing the driver."""
    from pipeline.io import input_units, read_unit
    from pipeline.recipe import InputSpec

    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x y", "z w"]}), tmp_path / "ok.parquet", row_group_size=1)
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "ok.parquet").read_bytes()[:-20])
    (tmp_path / "zero.parquet").write_bytes(b"")
    spec = InputSpec(format="parquet", paths=[str(tmp_path / "*.parquet")])
    files = [str(tmp_path / n) for n in ("cut.parquet", "ok.parquet", "zero.parquet")]
    units = input_units(spec, files)
    assert [(u[1], u[2]) for u in units] == [("cut.parquet", None), ("ok.parquet", [0]), ("ok.parquet", [1]),
                                             ("zero.parquet", None)]
    rows = [r for u in units for t in read_unit(spec, u) for r in t.to_pylist()]
    assert kept(rows) == ["a", "b"] and [r.split(":")[1] for r in reasons(rows)] == ["corrupt_parquet cut.parquet"]


def test_a_write_failing_mid_step_leaves_no_step_marked_complete(ray_session, tmp_path):
    """Stands in for a full disk: every write under rejected/ fails (`rejected` is a file) while the
    step runs. The run fails with an error naming the problem; no step is marked complete; once
    the location is fixed, the rerun completes."""
    from pipeline.executor import RunOptions, run_recipe
    from pipeline.recipe import load_recipe

    (tmp_path / "in.jsonl").write_bytes(jsonl(GOOD + [{"id": "short", "text": "tiny"}]))
    p = tmp_path / "r.yaml"
    p.write_text(f"name: full\ninput: {{format: jsonl, paths: ['{tmp_path}/in.jsonl']}}\noutput: {tmp_path}/out\n"
                 "steps:\n  - {id: len, op: length_filter, params: {min_chars: 10}}\n  - {id: dedup, op: exact_dedup}\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "rejected").write_text("not a directory")
    with pytest.raises(Exception, match="rejected"):
        run_recipe(load_recipe(str(p)), RunOptions(output=str(tmp_path / "out"), quiet=True))
    assert not list((tmp_path / "out").glob("*/_COMPLETE.json"))
    (tmp_path / "out" / "rejected").unlink()
    stats = run_recipe(load_recipe(str(p)), RunOptions(output=str(tmp_path / "out"), quiet=True))
    assert stats["invariant_ok"] and (tmp_path / "out" / "dedup" / "_COMPLETE.json").exists()


def test_a_damaged_first_file_does_not_stop_validation(tmp_path):
    from pipeline.recipe import load_recipe

    data = gzip.compress(jsonl([b"{oops"] + GOOD * 100))
    (tmp_path / "a.jsonl.gz").write_bytes(data[: len(data) // 2])
    p = tmp_path / "r.yaml"
    p.write_text(f"name: d\ninput: {{format: jsonl, paths: ['{tmp_path}/*.jsonl.gz']}}\noutput: {tmp_path}/out\n"
                 "steps:\n  - {id: len, op: length_filter}\n")
    assert load_recipe(str(p)).recipe.name == "d"
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(b"[1]\n" * 200))
    rc, msg = _validate(tmp_path, f"{{format: jsonl, paths: ['{tmp_path}/a.jsonl.gz']}}")
    assert rc == 2 and "none of its first 100 lines is a JSON object" in msg


def test_wet_record_over_the_size_guard(tmp_path, monkeypatch):
    from tests.pipeline.test_warc import _record  # noqa: PLC0415

    import pipeline.io

    monkeypatch.setattr(pipeline.io, "MAX_RECORD_BYTES", 1000)  # the guard, lowered to prove it
    recs = [_record("a", b"short text", wtype="conversion", http=False),
            _record("b", b"long text " * 200, wtype="conversion", http=False)]
    (tmp_path / "x.warc.wet.gz").write_bytes(b"".join(gzip.compress(r) for r in recs))
    rows = read(tmp_path / "x.warc.wet.gz", "wet")
    assert kept(rows) == ["fa"] and reasons(rows) == ["input:too_large (> 1000 bytes) in f"]


def test_an_address_where_no_ray_answers_fails_at_once_naming_it(tmp_path):
    """`--address` naming a port where no Ray cluster listens: Ray would retry the GCS forever
    (its messages in the log file, the terminal silent); the run fails at once, naming the
    address as given and as Ray resolves it, and says how to get a cluster."""
    import socket

    with socket.socket() as s:  # a free local port: nothing listens there
        s.bind(("", 0))
        port = s.getsockname()[1]
    # a process of its own: in this one the tests' Ray is already up, and a second init is skipped
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(_small_recipe(tmp_path)),
                           "--address", f"127.0.0.1:{port}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0
    assert f"--address 127.0.0.1:{port}: no Ray cluster answers" in proc.stderr, proc.stderr[-2000:]
    assert "ray start --head" in proc.stderr and "Traceback" not in proc.stderr
