"""Inspection helpers for notebooks: what each step did, what it dropped and why."""
from __future__ import annotations

import difflib
import glob
import json
import os

import polars as pl


def _stats(output: str) -> dict:
    path = os.path.join(output, "stats.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {output!r} is not the output of a finished gristmill run "
                                f"(run `gristmill run RECIPE --output {output}` first)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _step(output: str, step: str) -> dict:
    """The step's stats.json entry; an unknown step is an error listing the valid ones."""
    steps = _stats(output)["steps"]
    for s in steps:
        if s["id"] == step:
            return s
    ids = [s["id"] for s in steps]
    close = difflib.get_close_matches(step, ids, n=1, cutoff=0.5)
    raise ValueError(f"no step {step!r} in {output}" + (f"; did you mean {close[0]!r}?" if close else "")
                     + f" Steps: {', '.join(ids)}")


def _select(df: pl.LazyFrame, columns, what: str) -> pl.LazyFrame:
    """All columns unless asked; an unknown column is an error listing the ones there are."""
    if columns is None:
        return df
    columns = [columns] if isinstance(columns, str) else list(columns)
    have = df.collect_schema().names()
    unknown = [c for c in columns if c not in have]
    if unknown:
        raise ValueError(f"{what} has no column(s) {', '.join(map(repr, unknown))}; its columns: {', '.join(have)}")
    return df.select(columns)


def _finish(df: pl.LazyFrame, n: int | None) -> pl.DataFrame:
    df = df.sort("id")
    return (df if n is None else df.head(n)).collect()


def step_table(output: str) -> pl.DataFrame:
    """One row per step from `<output>/stats.json`: docs/bytes in and out, drops, busy seconds."""
    stats = _stats(output)
    rows = [{"step": s["id"], "op": s["op"], "status": s.get("status"), "docs_in": s["docs_in"],
             "docs_out": s["docs_out"], "dropped": s["docs_dropped"], "bytes_in": s["bytes_in"],
             "bytes_out": s["bytes_out"], "busy_s": s.get("busy_s")} for s in stats["steps"]]
    return pl.DataFrame(rows).with_columns((pl.col("docs_out") / pl.col("docs_in")).round(3).alias("kept"))


def drop_reasons(output: str) -> pl.DataFrame:
    """(step, reason, docs) for every drop reason, most frequent first."""
    stats = _stats(output)
    rows = [{"step": s["id"], "reason": r, "docs": n} for s in stats["steps"] for r, n in s["dropped"].items()]
    schema = {"step": pl.String, "reason": pl.String, "docs": pl.Int64}
    return pl.DataFrame(rows, schema=schema).sort("docs", descending=True)


def rejected(output: str, step: str, reason: str | None = None, n: int | None = None,
             columns: tuple[str, ...] | list[str] | None = None) -> pl.DataFrame:
    """Every row `step` dropped, with all its columns (`drop_reason` included), sorted by id.

    `reason`: only rows whose drop_reason starts with it (e.g. "length_filter:too_few_chars");
    `n`: at most that many rows; `columns`: only these. An unknown step, column or reason is an
    error listing the valid ones. `step="read"` gives the quarantined input rows."""
    st = _step(output, step)
    reasons = sorted(st.get("dropped", {}))
    if reason is not None and not any(r.startswith(reason) or reason.startswith(r) for r in reasons):
        raise ValueError(f"step {step!r} dropped no row with a reason starting with {reason!r}; its reasons: "
                         f"{', '.join(reasons) or 'none (it dropped nothing)'}")
    files = glob.glob(os.path.join(output, "rejected", step, "*.parquet"))
    if not files:
        if st.get("docs_dropped"):
            raise ValueError(f"step {step!r} dropped {st['docs_dropped']} rows but did not write them "
                             f"(`write_rejected: false` in the recipe); set write_rejected: true and rerun")
        cols = list(columns) if columns is not None else ["id", "drop_reason"]
        return pl.DataFrame({c: [] for c in cols}, schema={c: pl.String for c in cols})
    df = pl.scan_parquet(files)
    if reason is not None:
        df = df.filter(pl.col("drop_reason").str.starts_with(reason))
    return _finish(_select(df, columns, f"rejected/{step}"), n)


def kept(output: str, step: str, n: int | None = None,
         columns: tuple[str, ...] | list[str] | None = None) -> pl.DataFrame:
    """Every row a written step kept (its output under `<output>/<step>/`), all columns, sorted by
    id; `n` and `columns` narrow it. A step whose output was not written is an error saying how
    to get it written."""
    st = _step(output, step)
    path = os.path.join(output, step)
    files = glob.glob(os.path.join(path, "*.parquet"))
    if not files:
        if st.get("docs_out") == 0 and os.path.isdir(path):
            return pl.DataFrame({"id": []}, schema={"id": pl.String})
        raise ValueError(
            f"step {step!r} kept {st.get('docs_out', '?')} rows but they were not written to {path}: only global "
            f"steps, sinks (steps nothing reads), steps read by several others and steps marked `write: true` "
            f"are written; the others stream into the next step. To keep them, add `write: true` to step "
            f"{step!r} in the recipe (or `--set steps.{step}.write=true`) and rerun: complete steps are "
            f"skipped. Its dropped rows are in rejected(out, {step!r}).")
    return _finish(_select(pl.scan_parquet(files), columns, f"{step}/"), n)


# -- run report and what-if tables (pipeline.report / pipeline.whatif), for notebooks ------------------
from pipeline.report import (dedup_table, drop_examples, funnel, groups, mixture_manifests,  # noqa: E402,F401
                             score_histogram)
from pipeline.whatif import curve, load_run, score_rows, thresholds, what_if  # noqa: E402,F401
