"""Readers: formats, generated ids, quarantined bad records, real files from ../shared/data."""
from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.io import file_keys, read_file_batches, read_input
from pipeline.recipe import InputSpec, expand_paths
from pipeline.storage import Store


def read_all(path, fmt, batch_rows=1000, **kw):
    return pa.concat_tables(list(read_file_batches(str(path), "k", fmt, batch_rows, **kw)))


def test_parquet_ids_generated_and_columns_renamed(tmp_path):
    pq.write_table(pa.table({"body": ["a b", "c d", None], "lang": ["en", "de", "fr"]}), tmp_path / "x.parquet")
    t = read_all(tmp_path / "x.parquet", "parquet", batch_rows=2, text_col="body")
    assert t.column("id").to_pylist() == ["k:0", "k:1", "k:2"]
    assert t.column("text").to_pylist() == ["a b", "c d", None]
    assert t.column("lang").to_pylist() == ["en", "de", "fr"]
    assert t.column("drop_reason").to_pylist() == [None, None, "input:missing_text"]


def test_parquet_without_text_column_fails_naming_the_file(tmp_path):
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "y.parquet")
    with pytest.raises(ValueError, match=r"y\.parquet: no 'text' column"):
        read_all(tmp_path / "y.parquet", "parquet")


@pytest.mark.parametrize("suffix", ["jsonl", "jsonl.gz", "jsonl.zst"])
def test_jsonl_compressions_and_quarantined_lines(tmp_path, suffix):
    lines = [json.dumps({"id": "a", "text": "hello", "url": "http://x", "score": 3}), "{not json",
             json.dumps({"text": "no id here"}), json.dumps({"id": "c", "body": "no text"}), "",
             json.dumps(["a", "list"])]
    data = ("\n".join(lines) + "\n").encode()
    p = tmp_path / f"f.{suffix}"
    if suffix.endswith("gz"):
        data = gzip.compress(data)
    elif suffix.endswith("zst"):
        data = zstandard.ZstdCompressor().compress(data)
    p.write_bytes(data)
    t = read_all(p, "jsonl").to_pylist()
    assert len(t) == 5  # blank line skipped, everything else accounted for
    assert t[0]["id"] == "a" and t[0]["url"] == "http://x" and json.loads(t[0]["meta"]) == {"score": 3}
    assert t[0]["drop_reason"] is None
    # generated JSONL ids carry the same 1-based line number as the messages
    assert t[1]["id"] == "k:2" and t[1]["drop_reason"].startswith("input:invalid_json at line 2 of k")
    assert t[2]["id"] == "k:3" and t[2]["drop_reason"] is None
    assert t[3]["drop_reason"] == "input:missing_text"
    assert t[4]["drop_reason"].startswith("input:invalid_json at line 6")


def test_file_keys_are_unique_and_relative():
    keys = file_keys(["/d/a/part-0.jsonl", "/d/b/part-0.jsonl"])
    assert keys == ["a/part-0.jsonl", "b/part-0.jsonl"]


def test_read_input_on_ray_reads_every_file(ray_session, tmp_path):
    for k in range(3):
        pq.write_table(pa.table({"text": [f"doc {k}-{i}" for i in range(50)]}), tmp_path / f"p{k}.parquet")
    spec = InputSpec(format="parquet", paths=[str(tmp_path / "*.parquet")], batch_rows=16)
    ds = read_input(spec, expand_paths(spec.paths))
    ids = ds.to_pandas()["id"].tolist()
    assert len(ids) == 150 and len(set(ids)) == 150


def test_store_refuses_paths_outside_the_output(tmp_path):
    store = Store(str(tmp_path / "out"))
    with pytest.raises(ValueError):
        store.path("../escape")
    store.write_json("a/b.json", {"x": 1})
    assert store.read_json("a/b.json") == {"x": 1}
    assert not list((tmp_path / "out" / "a").glob(".tmp-*"))


def test_real_jsonl_files(shared_data):
    oscar = read_all(shared_data / "oscar" / "oscar_sample.jsonl.gz", "jsonl")
    assert oscar.num_rows == 651 and oscar.column("drop_reason").null_count == 651
    assert set(oscar.column("language").to_pylist()) > {"en", "de", "fr"}
    dolma = read_all(shared_data / "peers" / "dolma" / "documents__000.json.gz", "jsonl")
    assert dolma.num_rows == 10 and dolma.column("id").null_count == 0
    dj = read_all(shared_data / "peers" / "data-juicer" / "demo-dataset-deduplication.jsonl.gz", "jsonl")
    assert dj.num_rows == 14 and dj.column("id").to_pylist()[0] == "k:1"  # 1-based line


def test_real_warc_and_wet(shared_data):
    wet = read_all(shared_data / "cc" / "whirlwind.warc.wet.gz", "wet")
    assert wet.num_rows == 1 and "Escopete" in wet.column("text")[0].as_py()
    warc = read_all(shared_data / "cc" / "warcfile.warc.gz", "warc")
    assert warc.filter(pa.compute.is_null(warc.column("drop_reason"))).num_rows + \
        warc.filter(pa.compute.is_valid(warc.column("drop_reason"))).num_rows == warc.num_rows
    assert warc.num_rows == 16


def test_uri_globs_and_reads_through_the_filesystem_layer(tmp_path):
    for k in range(2):
        pq.write_table(pa.table({"text": [f"t{k}"]}), tmp_path / f"u{k}.parquet")
    files = expand_paths([f"file://{tmp_path}/u*.parquet"])
    assert files == [f"file://{tmp_path}/u0.parquet", f"file://{tmp_path}/u1.parquet"]
    t = read_all(files[1], "parquet")
    assert t.column("text").to_pylist() == ["t1"]
