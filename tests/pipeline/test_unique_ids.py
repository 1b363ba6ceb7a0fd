"""Ids unique within a run (issue 25, pipeline/unique_ids.py): the same given id in two files, in
two row groups of one Parquet file read as several units, or twice in one file: the first row in
canonical order (file order, then row / line) is kept, every later one quarantined with a reason
naming the id, where it is and where the first one is; the same rows whatever the workers, the
batch size or the units; reused on resume, recomputed when the inputs change."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.unique_ids import _DUPLICATES, bucket_duplicates, hash_buckets, with_reasons


def jsonl(records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def doc(i, rid=None):
    return {"id": rid or f"d{i}", "text": f"document number {i} has a few words in it"}


def run(recipe: Path, out: Path, **kw) -> dict:
    from pipeline.executor import RunOptions, run_recipe
    from pipeline.recipe import load_recipe

    return run_recipe(load_recipe(str(recipe)), RunOptions(output=str(out), quiet=True, **kw))


def recipe(tmp_path: Path, fmt: str, pattern: str, name: str = "r", extra_input: str = "") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"name: {name}\ninput: {{format: {fmt}, paths: ['{pattern}']{extra_input}}}\n"
                 f"output: {tmp_path}/out\nsteps:\n  - {{id: len, op: length_filter, params: {{min_chars: 5}}}}\n")
    return p


def outcome(out: Path) -> tuple[list, dict, dict]:
    """(kept ids sorted, {rejected id position: reason}, read step's counts)."""
    kept = sorted(pq.read_table(out / "len").column("id").to_pylist())
    rej = pq.read_table(out / "rejected" / "read").to_pylist() if (out / "rejected" / "read").is_dir() else []
    stats = json.loads((out / "stats.json").read_text())
    read = stats["steps"][0]
    assert stats["invariant_ok"] and read["docs_in"] == read["docs_out"] + read["docs_dropped"]
    counts = {k: read[k] for k in ("docs_in", "docs_out", "docs_dropped")}
    return kept, sorted(r["drop_reason"] for r in rej), counts


# -- the verification step on its own: hashes narrow, id strings decide ------------------------------
def test_a_hash_collision_never_quarantines_a_different_id():
    """Forged tables whose rows all share one hash: only the rows whose id string repeats an
    earlier row's are duplicates, and "earlier" is file order then position."""
    t = pa.table({"h": pa.array([7, 7, 7, 7, 7], pa.uint64()), "file": pa.array([1, 0, 0, 1, 2], pa.int32()),
                  "pos": pa.array([0, 5, 9, 3, 0], pa.int64()), "id": ["x", "y", "x", "z", "y"]})
    dups = bucket_duplicates(t.slice(0, 2), t.slice(2)).sort_by([("file", "ascending"), ("pos", "ascending")])
    # x first at file 0 row 9 (file order beats row order), y first at file 0 row 5; z is alone
    assert dups.to_pylist() == [{"file": 1, "pos": 0, "first_file": 0, "first_pos": 9, "id": "x"},
                                {"file": 2, "pos": 0, "first_file": 0, "first_pos": 5, "id": "y"}]
    different = pa.table({"h": pa.array([1, 1], pa.uint64()), "file": pa.array([0, 0], pa.int32()),
                          "pos": pa.array([0, 1], pa.int64()), "id": ["a", "b"]})
    assert bucket_duplicates(different).num_rows == 0
    reasons = with_reasons(dups, ["a.jsonl", "b.jsonl", "c.jsonl"], "line").column("reason").to_pylist()
    assert reasons == ["input:duplicate_id 'x' at line 0 of b.jsonl (first at line 9 of a.jsonl)",
                       "input:duplicate_id 'y' at line 0 of c.jsonl (first at line 5 of a.jsonl)"]
    assert bucket_duplicates().schema == _DUPLICATES


def test_buckets_split_by_hash_and_keep_every_row():
    ids = pa.table({"id": [f"i{k % 50}" for k in range(200)], "pos": pa.array(range(200), pa.int64())})
    buckets = hash_buckets(ids, 3, 4)
    assert sum(b.num_rows for b in buckets) == 200 and all(b.num_rows for b in buckets)
    for b in buckets:  # one id lives in one bucket only
        assert not set(b.column("id").to_pylist()) & set().union(
            *[set(o.column("id").to_pylist()) for o in buckets if o is not b])
    assert bucket_duplicates(*buckets).num_rows == 150


# -- whole runs -------------------------------------------------------------------------------
def test_same_id_in_two_jsonl_files_through_the_cli(ray_session, tmp_path):
    from pipeline import cli

    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_bytes(jsonl([doc(0, "x"), doc(1), doc(2, "x")]))
    (d / "b.jsonl").write_bytes(jsonl([doc(3), {"id": "x", "text": "the same id in another file"}, doc(1), doc(4)]))
    r = recipe(tmp_path, "jsonl", f"{d}/*.jsonl")
    err = io.StringIO()
    old, sys.stderr = sys.stderr, err
    try:
        rc = cli.main(["run", str(r), "--quiet"])
    finally:
        sys.stderr = old
    assert rc == 0, err.getvalue()
    kept, reasons, counts = outcome(tmp_path / "out")
    assert kept == ["d1", "d3", "d4", "x"]
    assert reasons == ["input:duplicate_id 'd1' at line 3 of b.jsonl (first at line 2 of a.jsonl)",
                       "input:duplicate_id 'x' at line 2 of b.jsonl (first at line 1 of a.jsonl)",
                       "input:duplicate_id 'x' at line 3 of a.jsonl (first at line 1)"]
    assert counts == {"docs_in": 7, "docs_out": 4, "docs_dropped": 3}
    x = pq.read_table(tmp_path / "out" / "len", filters=[("id", "=", "x")]).column("text").to_pylist()
    assert x == [doc(0)["text"]]  # the first occurrence is the one kept
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["unique_ids"]["ids"] == 7 and stats["unique_ids"]["duplicates"] == 3

    # input.unique_ids: trust skips the check: every row passes
    stats = run(recipe(tmp_path, "jsonl", f"{d}/*.jsonl", extra_input=", unique_ids: trust"), tmp_path / "out")
    assert stats["steps"][0]["docs_out"] == 7 and "unique_ids" not in stats


def _parquet_corpus(d: Path) -> tuple[list[str], dict[str, str]]:
    """Two files of several row groups with ids repeated across row groups, across files and
    within a row group, some ids null (generated, never checked); the expected kept ids and
    the reason of one repeat, from the rule written out plainly."""
    d.mkdir()
    f0 = [f"a{i}" for i in range(10)] + ["a3", "b", None, "a0", "b"]  # rows 10..14 repeat rows 3, 11, 0
    f1 = ["c0", "a5", "c1", None, "c0", "a3", "c2", "c3"]
    for name, ids in (("p0.parquet", f0), ("p1.parquet", f1)):
        texts = [f"text of row {k} in {name} with words" for k in range(len(ids))]
        pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "text": texts}), d / name, row_group_size=3)
    seen, expect = set(), []
    for key, ids in (("p0.parquet", f0), ("p1.parquet", f1)):
        for row, rid in enumerate(ids):
            if rid is None:
                expect.append(f"{key}:{row}")
            elif rid not in seen:
                seen.add(rid)
                expect.append(rid)
    return sorted(expect), {"a3": "input:duplicate_id 'a3' at row 5 of p1.parquet (first at row 3 of p0.parquet)",
                            "b": "input:duplicate_id 'b' at row 14 of p0.parquet (first at row 11)"}


def test_repeats_across_row_groups_units_and_files_same_rows_for_any_workers_and_batch(ray_session, tmp_path):
    from pipeline.io import input_units
    from pipeline.recipe import InputSpec

    expect, some_reasons = _parquet_corpus(tmp_path / "in")
    files = sorted(str(p) for p in (tmp_path / "in").glob("*.parquet"))
    assert len(input_units(InputSpec(format="parquet", paths=files), files)) == 8  # row groups read apart
    results = []
    for workers, batch_rows in ((1, 2), (2, 1000)):
        r = recipe(tmp_path, "parquet", f"{tmp_path}/in/*.parquet", extra_input=f", batch_rows: {batch_rows}")
        run(r, tmp_path / "out", max_workers=workers, resume=False)
        results.append(outcome(tmp_path / "out"))
    assert results[0] == results[1]
    kept, reasons, counts = results[0]
    assert kept == expect
    assert counts == {"docs_in": 23, "docs_out": len(expect), "docs_dropped": 23 - len(expect)}
    assert len(reasons) == 23 - len(expect) and all(r.startswith("input:duplicate_id ") for r in reasons)
    assert set(some_reasons.values()) <= set(reasons)


def test_resume_reuses_the_check_and_changed_inputs_redo_it(ray_session, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_bytes(jsonl([doc(0), doc(1)]))
    (d / "b.jsonl").write_bytes(jsonl([doc(2), doc(1)]))
    r = recipe(tmp_path, "jsonl", f"{d}/*.jsonl")
    first = run(r, tmp_path / "out")
    assert first["unique_ids"]["reused"] is False and first["unique_ids"]["duplicates"] == 1
    before = outcome(tmp_path / "out")
    (tmp_path / "out" / "len" / "_COMPLETE.json").unlink()  # as if the run died after the pre-pass
    again = run(r, tmp_path / "out")
    assert again["unique_ids"]["reused"] is True and outcome(tmp_path / "out") == before
    (d / "b.jsonl").write_bytes(jsonl([doc(2), doc(1), doc(0), doc(3)]))  # inputs change: checked again
    changed = run(r, tmp_path / "out")
    assert changed["unique_ids"]["reused"] is False and changed["unique_ids"]["duplicates"] == 2
    assert outcome(tmp_path / "out")[0] == ["d0", "d1", "d2", "d3"]


def test_ray_data_reader_applies_the_pre_pass(ray_session, tmp_path):
    """The Ray Data read path (used for unions) quarantines the same rows as the fused one."""
    from pipeline.io import file_keys, read_input
    from pipeline.recipe import InputSpec
    from pipeline.storage import Store
    from pipeline.unique_ids import check_unique_ids

    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_bytes(jsonl([doc(0), doc(1)]))
    (d / "b.jsonl").write_bytes(jsonl([doc(1), doc(2)]))
    files = sorted(str(p) for p in d.glob("*.jsonl"))
    spec = InputSpec(format="jsonl", paths=files)
    dups, summary = check_unique_ids(spec, files, file_keys(files), Store(str(tmp_path / "out")), "h", cpus=2)
    assert summary == {"hash": "h", "ids": 4, "duplicates": 1, "reused": False, "wall_s": summary["wall_s"]}
    rows = read_input(spec, files, duplicates=dups).take_all()
    assert sorted((r["id"], r["drop_reason"] or "") for r in rows) == [
        ("d0", ""), ("d1", ""), ("d1", "input:duplicate_id 'd1' at line 1 of b.jsonl (first at line 2 of a.jsonl)"),
        ("d2", "")]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_files_without_ids_are_not_scanned(tmp_path, fmt):
    from pipeline.unique_ids import given_ids

    p = tmp_path / f"x.{fmt}"
    if fmt == "jsonl":
        p.write_bytes(jsonl([{"text": "no id here, but the word id is in it: \"id\""}, {"text": "none"}]))
    else:
        pq.write_table(pa.table({"text": ["no id column"]}), p)
    assert given_ids(str(p), fmt, "id", "text").num_rows == 0


def test_an_id_key_spelled_with_escapes_is_still_seen(tmp_path):
    """The JSONL scan skips lines that cannot hold the id key, never one that spells it with escapes."""
    from pipeline.unique_ids import duplicates_in_file

    p = tmp_path / "e.jsonl"
    p.write_bytes(b'{"\\u0069d": "e", "text": "escaped key"}\n{"id": "e", "text": "plain key"}\n'
                  b'{"i\\/d": "s", "text": "slash"}\n{"i/d": "s", "text": "slash again"}\n')
    assert duplicates_in_file(str(p), "e.jsonl", "jsonl", "id", "text") == {
        2: "input:duplicate_id 'e' at line 2 of e.jsonl (first at line 1)"}
    assert duplicates_in_file(str(p), "e.jsonl", "jsonl", "i/d", "text") == {
        4: "input:duplicate_id 's' at line 4 of e.jsonl (first at line 3)"}
