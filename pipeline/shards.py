"""Deterministic Parquet shards from Arrow tables held in Ray's object store.

Rows go to shard `hash(id) % n` and every shard is sorted by id, so the same rows give
byte-identical files whatever the batching or the number of workers. `n` comes from a size
measure that does not depend on how rows are chunked (string bytes + fixed widths), so it is
stable too. Shards are written in parallel by Ray tasks or by the segment's own actors (warm
processes: no worker start-up), never through a shuffle.
"""
from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.compute as pc

SHARD_COL = "_shard"
# what an empty output holds when no unit said what its rows look like
EMPTY_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string())])


def table_bytes(table: pa.Table) -> int:
    """Logical size of the rows: string/binary lengths plus fixed widths. Unlike Table.nbytes it
    does not depend on how the rows are chunked (offsets, validity bitmaps)."""
    n = table.num_rows
    total = 0
    for col in table.columns:
        t = col.type
        if pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t) \
                or pa.types.is_large_binary(t):
            total += int(pc.sum(pc.binary_length(col)).as_py() or 0)
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            width = t.value_type.bit_width // 8 if pa.types.is_primitive(t.value_type) else 8
            total += int(pc.sum(pc.list_value_length(col)).as_py() or 0) * max(width, 1)
        elif pa.types.is_primitive(t) and t.bit_width >= 8:
            total += n * (t.bit_width // 8)
        else:
            total += 8 * n
    return total


def shard_count(total_bytes: int, shard_bytes: int) -> int:
    return max(1, math.ceil(total_bytes / shard_bytes))


def shard_of(ids: pa.ChunkedArray | pa.Array, n: int) -> pa.Array:
    """Stable shard number from the id (not from the row's position)."""
    import polars as pl

    h = pl.Series(ids if isinstance(ids, pa.Array) else ids.combine_chunks()).hash(seed=1234)
    return (h % n).cast(pl.Int32).to_arrow()


def write_shard(tables: list[pa.Table], shard: int, n: int, store_uri: str, rel_dir: str) -> dict:
    """Rows of `tables` that fall in `shard` -> sorted by id -> <rel_dir>/part-NNNNN.parquet."""
    from pipeline.io import text_bytes
    from pipeline.storage import Store

    parts = []
    for t in tables:
        if t is None or t.num_rows == 0:
            continue
        if n > 1:
            t = t.filter(pc.equal(shard_of(t.column("id"), n), shard))
        if t.num_rows:
            parts.append(t)
    if not parts:
        return {"shard": shard, "rows": 0, "bytes": 0, "files": 0}
    table = pa.concat_tables(parts, promote_options="default") if len(parts) > 1 else parts[0]
    table = table.take(pc.sort_indices(table, [("id", "ascending")])).combine_chunks()
    Store(store_uri).write_table(f"{rel_dir}/part-{shard:05d}.parquet", table)
    return {"shard": shard, "rows": table.num_rows, "bytes": text_bytes(table), "files": 1}


def write_shard_refs(refs: list, shard: int, n: int, store_uri: str, rel_dir: str) -> dict:
    """write_shard over tables a pool holds (Ray's object store or local spill files, read
    zero-copy where they live)."""
    from pipeline.pools import fetch

    return write_shard(fetch(refs), shard, n, store_uri, rel_dir)


def sizes_of_refs(refs: list) -> list[int]:
    import ray

    return [table_bytes(t) for t in ray.get(list(refs))]


def kept_refs(tables: list, infos: list[dict]) -> tuple[list, pa.Schema]:
    """The object refs of the work units that kept rows, and the rows' schema (the first unit's
    that has one; EMPTY_SCHEMA when none has)."""
    refs = [t for t, i in zip(tables, infos) if i["rows"]]
    schema = next((i["schema"] for i in infos if i["schema"] is not None), None)
    return refs, EMPTY_SCHEMA if schema is None else schema


def write_empty(store, rel_dir: str, schema: pa.Schema | None) -> dict:
    if schema is None:
        schema = EMPTY_SCHEMA
    store.write_table(f"{rel_dir}/part-00000.parquet", schema.empty_table())
    return {"rows": 0, "bytes": 0, "files": 1}


def summarize(results: list[dict]) -> dict:
    return {"rows": sum(r["rows"] for r in results), "bytes": sum(r["bytes"] for r in results),
            "files": sum(r["files"] for r in results)}


def write_refs_with_tasks(refs: list, store, rel_dir: str, shard_bytes: int, total_bytes: int,
                          schema: pa.Schema | None = None) -> dict:
    """Write tables held in the object store as shards, one Ray task per shard."""
    import ray

    store.rmtree(rel_dir)
    store.makedirs(rel_dir)
    if not refs:
        return write_empty(store, rel_dir, schema)
    n = shard_count(total_bytes, shard_bytes)
    task = ray.remote(num_cpus=1)(write_shard_refs)
    results = ray.get([task.remote(list(refs), s, n, store.uri, rel_dir) for s in range(n)])
    out = summarize(results)
    if out["rows"] == 0:
        return write_empty(store, rel_dir, schema)
    return out
