"""exact_dedup: remove documents whose normalized text equals another document's."""
from __future__ import annotations

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from operators.base import Operator, Params, Resources, mark_dropped, register, set_column

KEYS = ["_xh1", "_xh2"]


class ExactDedupParams(Params):
    lowercase: bool = Field(True, description="compare case-insensitively")
    collapse_whitespace: bool = Field(True, description="treat any run of whitespace as one space")


def text_hashes(batch: pa.Table, lowercase: bool, collapse: bool) -> pa.Table:
    """(id, _xh1, _xh2): 128 bits of hash of the normalized text, vectorized over the batch."""
    text = pc.fill_null(batch.column("text"), "")
    if lowercase:
        text = pc.utf8_lower(text)
    if collapse:
        text = pc.utf8_trim_whitespace(pc.replace_substring_regex(text, r"\s+", " "))
    s = pl.Series(text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text)
    return pa.table({"id": pc.cast(batch.column("id"), pa.string()), KEYS[0]: s.hash(seed=11).to_arrow(),
                     KEYS[1]: s.hash(seed=977).to_arrow()})


def duplicates_in_partition(keys: pa.Table) -> pa.Table:
    """Rows of one hash partition -> (id, dup_of) for every row that is not its group's keeper.
    The keeper is the smallest id of the group, so the choice does not depend on order."""
    df = pl.from_arrow(keys)
    keep = df.group_by(KEYS).agg(pl.col("id").min().alias("dup_of"), pl.len().alias("n")).filter(pl.col("n") > 1)
    out = df.join(keep, on=KEYS).filter(pl.col("id") != pl.col("dup_of")).select("id", "dup_of")
    return out.to_arrow().cast(pa.schema([("id", pa.string()), ("dup_of", pa.string())]))


def _duplicates_of_parts(*parts: pa.Table) -> pa.Table:
    empty = pa.table({"id": pa.array([], pa.string()), KEYS[0]: pa.array([], pa.uint64()),
                      KEYS[1]: pa.array([], pa.uint64())})
    return duplicates_in_partition(pa.concat_tables(parts) if parts else empty)


@register
class ExactDedup(Operator):
    """Keep one document per normalized text (the smallest id); the others get drop_reason
    `exact_dedup:duplicate` and `dup_of` = the kept id. Global: one shuffle of (hash, id) only,
    then a join back, so no full-text shuffle and no driver-side index."""

    name = "exact_dedup"
    kind = "global"
    Params = ExactDedupParams
    needs = frozenset({"id", "text"})
    adds = frozenset({"dup_of"})
    resources = Resources(num_cpus=1, batch_size=4096)

    def run(self, ds, ctx):
        import ray

        p = self.params
        keys = ds.map_batches(text_hashes, fn_args=(p.lowercase, p.collapse_whitespace),
                              batch_format="pyarrow", batch_size=self.resources.batch_size).materialize()
        if keys.size_bytes() <= BROADCAST_BYTES:
            # a few MB of keys: one task finds the duplicates; a hash shuffle would start its
            # aggregator processes (seconds) for them. Its result is smaller than the keys, so
            # it goes to every worker through the object store as below
            dups = ray.remote(_duplicates_of_parts).remote(*keys.to_arrow_refs())
            return ds.map_batches(_mark_broadcast, fn_args=([dups],), batch_format="pyarrow")
        n = ctx.num_partitions(nbytes=keys.size_bytes())
        dups = keys.repartition(n, keys=KEYS).map_batches(duplicates_in_partition, batch_format="pyarrow",
                                                         batch_size=None).materialize()
        if dups.size_bytes() <= BROADCAST_BYTES:
            # few duplicates: every worker gets the (id, dup_of) list from the object store
            # (never the driver), which saves the shuffle of a join
            refs = dups.to_arrow_refs()
            return ds.map_batches(_mark_broadcast, fn_args=(refs,), batch_format="pyarrow")
        n = ctx.num_partitions(nbytes=ds.size_bytes())
        ds = ds.map_batches(_string_ids, batch_format="pyarrow")  # join keys must have one type
        joined = ds.join(dups, join_type="left_outer", num_partitions=n, on=("id",))
        return joined.map_batches(_mark, batch_format="pyarrow")

    def run_table(self, table: pa.Table, ctx) -> pa.Table:
        """run() on one table in one process (the engine's choice for a small input)."""
        p = self.params
        return _mark_with(table, duplicates_in_partition(text_hashes(table, p.lowercase, p.collapse_whitespace)))


BROADCAST_BYTES = 32 * 2**20


def _string_ids(batch: pa.Table) -> pa.Table:
    return set_column(batch, "id", pc.cast(batch.column("id"), pa.string()))


def _mark_broadcast(batch: pa.Table, refs) -> pa.Table:
    import ray

    dups = pa.concat_tables(ray.get(list(refs))) if refs else pa.table({"id": [], "dup_of": []})
    return _mark_with(batch, dups)


def _mark_with(batch: pa.Table, dups: pa.Table) -> pa.Table:
    """Mark the rows of `batch` that `dups` (id, dup_of) lists as duplicates."""
    ids = batch.column("id").cast(pa.string())
    idx = pc.index_in(ids, value_set=dups.column("id").cast(pa.string()).combine_chunks())
    dup_of = pc.take(dups.column("dup_of").cast(pa.string()).combine_chunks(), idx)
    return _mark(set_column(batch, "dup_of", dup_of))


def _mark(batch: pa.Table) -> pa.Table:
    return mark_dropped(batch, pc.is_valid(batch.column("dup_of")), "exact_dedup:duplicate")
