"""Readers (Parquet, JSONL[.gz|.zst], WARC/WET) and the deterministic Parquet writer.

Readers run as Ray tasks, one input file each, and yield Arrow batches of `batch_rows`; every
batch has `id` and `text`. An input without ids gets `<file>:<row>` ids (deterministic).
Bad records become rows with `drop_reason` "input:..." (quarantined, counted, written to
rejected/read/), never a crash mid-run and never silently lost.
"""
from __future__ import annotations

import json
import math
import os
import posixpath
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from operators.base import DROP_REASON, mark_dropped, set_column

JSONL_LIFTED = ("url", "source", "language")  # JSONL fields promoted to columns; the rest go to `meta`


def open_input(path: str):
    """A readable binary stream for a local path or URI; .gz / .zst are decompressed."""
    if "://" in path:
        fs, p = pafs.FileSystem.from_uri(path)
    else:
        fs, p = pafs.LocalFileSystem(), os.path.abspath(path)
    return fs.open_input_stream(p, compression="detect")


def file_keys(files: list[str]) -> list[str]:
    """Short, unique, deterministic names for id generation: paths relative to their common dir."""
    if len(files) == 1:
        return [posixpath.basename(files[0])]
    common = posixpath.commonpath([f.split("://")[-1] for f in files])
    return [posixpath.relpath(f.split("://")[-1], common) for f in files]


def peek_columns(path: str, fmt: str) -> set[str]:
    """Columns the reader will produce for this file (before renaming), for recipe validation."""
    if fmt == "parquet":
        return set(pq.read_schema(path).names)
    with open_input(path) as f:
        for line in _lines(f):
            if line.strip():
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("first line is not a JSON object")
                return set(rec)
    raise ValueError("file is empty")


def _lines(stream) -> Iterator[bytes]:
    buf = b""
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        yield from lines
    if buf:
        yield buf


# -- per-format batch readers -------------------------------------------------------------
def _finish(table: pa.Table, key: str, first_row: int, id_col: str, text_col: str) -> pa.Table:
    """Rename to id/text, generate missing ids, make sure drop_reason exists."""
    names = table.column_names
    if text_col != "text" and text_col in names:
        if "text" in names:
            table = table.drop_columns(["text"])
        table = table.rename_columns(["text" if c == text_col else c for c in table.column_names])
    if id_col != "id" and id_col in table.column_names:
        if "id" in table.column_names:
            table = table.drop_columns(["id"])
        table = table.rename_columns(["id" if c == id_col else c for c in table.column_names])
    n = table.num_rows
    gen = pa.array([f"{key}:{first_row + i}" for i in range(n)], pa.string())
    ids = pc.cast(table.column("id"), pa.string()) if "id" in table.column_names else pa.nulls(n, pa.string())
    table = set_column(table, "id", pc.coalesce(ids, gen))  # missing or null ids get generated ones
    if "text" not in table.column_names:
        table = set_column(table, "text", pa.nulls(n, pa.string()))
    table = set_column(table, "text", pc.cast(table.column("text"), pa.string()))
    table = mark_dropped(table, pc.is_null(table.column("text")), "input:missing_text")
    cols = ["id", "text"] + [c for c in table.column_names if c not in ("id", "text")]
    return table.select(cols)


def read_parquet_batches(path: str, key: str, batch_rows: int, id_col: str, text_col: str) -> Iterator[pa.Table]:
    if "://" in path:
        fs, p = pafs.FileSystem.from_uri(path)
        pf = pq.ParquetFile(fs.open_input_file(p))
    else:
        pf = pq.ParquetFile(path)
    if text_col not in pf.schema_arrow.names:
        raise ValueError(f"{path}: no {text_col!r} column (it has {', '.join(pf.schema_arrow.names)}); "
                         "set input.text_column")
    row = 0
    for rb in pf.iter_batches(batch_size=batch_rows):
        t = pa.Table.from_batches([rb])
        yield _finish(t, key, row, id_col, text_col)
        row += t.num_rows


def read_jsonl_batches(path: str, key: str, batch_rows: int, id_col: str, text_col: str) -> Iterator[pa.Table]:
    """JSON Lines: `text` and `id` plus url/source/language as columns, every other field kept
    as JSON in `meta`. A line that is not a JSON object is quarantined with its line number."""
    rows: list[dict] = []
    first = 0
    with open_input(path) as f:
        for lineno, line in enumerate(_lines(f)):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
                bad = None
            except ValueError as e:
                rec, bad = {}, f"input:invalid_json at line {lineno + 1} of {key}: {str(e)[:80]}"
            text = rec.pop(text_col, None)
            rid = rec.pop(id_col, None)
            row = {"id": None if rid is None else str(rid),
                   "text": text if isinstance(text, str) or text is None else json.dumps(text),
                   DROP_REASON: bad}
            for k in JSONL_LIFTED:
                v = rec.pop(k, None)
                row[k] = None if v is None else str(v)
            row["meta"] = json.dumps(rec, ensure_ascii=False, sort_keys=True) if rec else None
            rows.append(row)
            if len(rows) >= batch_rows:
                yield _jsonl_table(rows, key, first)
                first += len(rows)
                rows = []
    if rows:
        yield _jsonl_table(rows, key, first)


_JSONL_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), (DROP_REASON, pa.string())]
                          + [(k, pa.string()) for k in JSONL_LIFTED] + [("meta", pa.string())])


def _jsonl_table(rows: list[dict], key: str, first: int) -> pa.Table:
    t = pa.Table.from_pylist(rows, schema=_JSONL_SCHEMA)
    return _finish(t, key, first, "id", "text")


def read_file_batches(path: str, key: str, fmt: str, batch_rows: int, id_col: str = "id",
                      text_col: str = "text") -> Iterator[pa.Table]:
    if fmt == "parquet":
        yield from read_parquet_batches(path, key, batch_rows, id_col, text_col)
    elif fmt == "jsonl":
        yield from read_jsonl_batches(path, key, batch_rows, id_col, text_col)
    elif fmt in ("warc", "wet"):
        from pipeline.warc import read_warc_batches

        for t in read_warc_batches(path, fmt=fmt, batch_rows=batch_rows, id_prefix=key):
            if DROP_REASON not in t.column_names:
                t = set_column(t, DROP_REASON, pa.nulls(t.num_rows, pa.string()))
            yield t
    else:
        raise ValueError(f"unknown input format {fmt!r}")


def read_files(files: pa.Table, fmt: str, batch_rows: int, id_col: str, text_col: str) -> Iterator[pa.Table]:
    """Ray map_batches UDF: one input row per file -> the file's record batches."""
    for path, key in zip(files.column("path").to_pylist(), files.column("key").to_pylist()):
        yield from read_file_batches(path, key, fmt, batch_rows, id_col, text_col)


def read_input(spec, files: list[str], max_workers: int | None = None):
    """A lazy ray.data.Dataset over the input files (one read task per file)."""
    import ray.data

    if not files:
        raise FileNotFoundError(f"no input files match {spec.paths}")
    listing = pa.table({"path": files, "key": file_keys(files)})
    ds = ray.data.from_arrow(listing).repartition(len(files))
    return ds.map_batches(read_files, fn_args=(spec.format, spec.batch_rows, spec.id_column, spec.text_column),
                          batch_size=1, batch_format="pyarrow", zero_copy_batch=True,
                          compute=ray.data.TaskPoolStrategy(size=max_workers))


def input_units(spec, files: list[str]) -> list[tuple]:
    """Work units for the engine's segment workers: one per Parquet row group (so a single
    big file still feeds every worker), one per file for the streaming formats. A unit is
    (path, key, row_groups, first_row); ids generated from it equal whole-file reading."""
    units = []
    for path, key in zip(files, file_keys(files)):
        if spec.format == "parquet":
            meta = _parquet_file(path).metadata
            first = 0
            for rg in range(meta.num_row_groups):
                units.append((path, key, [rg], first))
                first += meta.row_group(rg).num_rows
            if meta.num_row_groups == 0:
                units.append((path, key, [], 0))
        else:
            units.append((path, key, None, 0))
    return units


def _parquet_file(path: str) -> pq.ParquetFile:
    if "://" in path:
        fs, p = pafs.FileSystem.from_uri(path)
        return pq.ParquetFile(fs.open_input_file(p))
    return pq.ParquetFile(path)


def read_unit(spec, unit: tuple) -> Iterator[pa.Table]:
    """The batches of one unit from input_units, exactly as read_file_batches yields them."""
    path, key, row_groups, first = unit
    if row_groups is None:
        yield from read_file_batches(path, key, spec.format, spec.batch_rows, spec.id_column, spec.text_column)
        return
    pf = _parquet_file(path)
    if spec.text_column not in pf.schema_arrow.names:
        raise ValueError(f"{path}: no {spec.text_column!r} column (it has {', '.join(pf.schema_arrow.names)}); "
                         "set input.text_column")
    row = first
    for rb in pf.iter_batches(batch_size=spec.batch_rows, row_groups=row_groups):
        t = pa.Table.from_batches([rb])
        yield _finish(t, key, row, spec.id_column, spec.text_column)
        row += t.num_rows


# -- deterministic output ------------------------------------------------------------------
def text_bytes(table: pa.Table) -> int:
    if "text" not in table.column_names or table.num_rows == 0:
        return 0
    return int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0)


def write_dataset(ds, store, rel_dir: str, shard_bytes: int) -> dict:
    """Write a dataset as Parquet shards: rows spread over shards by a hash of `id`, each shard
    sorted by id. Same rows => byte-identical files, whatever the number of workers.
    One Ray Data execution (materialize); the shards are then written by one Ray task each
    straight from the object store (pipeline.shards), without a shuffle."""
    import ray

    from pipeline.shards import sizes_of_refs, write_refs_with_tasks

    mat = ds.materialize()
    refs = mat.to_arrow_refs()
    schema = mat.schema()
    schema = getattr(schema, "base_schema", schema) if schema is not None else None
    sizes = ray.get(ray.remote(num_cpus=0.25)(sizes_of_refs).remote(refs))
    return write_refs_with_tasks(refs, store, rel_dir, shard_bytes, sum(sizes),
                                 schema if isinstance(schema, pa.Schema) else None)


def read_step_output(store, rel_dir: str):
    import ray.data

    files = [store.full(p) for p in store.list(rel_dir, ".parquet")]
    return ray.data.read_parquet(files, filesystem=None if "://" in store.uri else None)
