"""Inspection helpers for notebooks: what each step did, what it dropped and why."""
from __future__ import annotations

import json
import os

import polars as pl


def step_table(output: str) -> pl.DataFrame:
    """One row per step from `<output>/stats.json`: docs/bytes in and out, drops, busy seconds."""
    with open(os.path.join(output, "stats.json"), encoding="utf-8") as f:
        stats = json.load(f)
    rows = [{"step": s["id"], "op": s["op"], "status": s.get("status"), "docs_in": s["docs_in"],
             "docs_out": s["docs_out"], "dropped": s["docs_dropped"], "bytes_in": s["bytes_in"],
             "bytes_out": s["bytes_out"], "busy_s": s.get("busy_s")} for s in stats["steps"]]
    return pl.DataFrame(rows).with_columns((pl.col("docs_out") / pl.col("docs_in")).round(3).alias("kept"))


def drop_reasons(output: str) -> pl.DataFrame:
    """(step, reason, docs) for every drop reason, most frequent first."""
    with open(os.path.join(output, "stats.json"), encoding="utf-8") as f:
        stats = json.load(f)
    rows = [{"step": s["id"], "reason": r, "docs": n} for s in stats["steps"] for r, n in s["dropped"].items()]
    schema = {"step": pl.String, "reason": pl.String, "docs": pl.Int64}
    return pl.DataFrame(rows, schema=schema).sort("docs", descending=True)


def rejected(output: str, step: str, reason: str | None = None, n: int = 5,
             columns: tuple[str, ...] = ("id", "drop_reason", "text")) -> pl.DataFrame:
    """A few rows a step dropped (optionally only those whose reason starts with `reason`)."""
    path = os.path.join(output, "rejected", step)
    if not os.path.isdir(path):
        return pl.DataFrame({c: [] for c in columns})
    df = pl.scan_parquet(os.path.join(path, "*.parquet"))
    if reason:
        df = df.filter(pl.col("drop_reason").str.starts_with(reason))
    have = df.collect_schema().names()
    return df.select([c for c in columns if c in have]).sort("id").head(n).collect()


def kept(output: str, step: str, n: int = 5, columns: tuple[str, ...] | None = None) -> pl.DataFrame:
    """The first rows (by id) a written step kept."""
    df = pl.scan_parquet(os.path.join(output, step, "*.parquet"))
    if columns:
        df = df.select(list(columns))
    return df.sort("id").head(n).collect()
