"""`gristmill report OUT`: one self-contained HTML file that shows a finished run.

Plotly draws the plots; its JavaScript (plotly.min.js, ~4.6 MB) is embedded once in the file, so
the report opens offline, and every plot stays interactive (hover for exact numbers, zoom into a
score distribution, toggle a drop reason). Data in the file is binned or sampled, never raw rows:
histograms of 50 bins, threshold curves of about 60 points, 3 example documents per drop reason
(an excerpt of their text), the top categories per column. So the file size does not grow with the
corpus (the 1M-document figure is in the README).

Every number comes from the run's own files: the funnel from `stats.json`, the rest from the kept
and rejected rows (see pipeline.whatif for how rows that reached a step are found). The same
tables are available in Python: `pipeline.inspect.funnel`, `languages`, `score_histogram`,
`curve`, `what_if`, ...
"""
from __future__ import annotations

import html
import json
import os
import time

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from pipeline.dag import SOURCE
from pipeline.whatif import Run, _files, curve, load_run, reached_rows, score_rows

EXAMPLES_PER_REASON = 3
EXCERPT_CHARS = 300
BINS = 50
TOP_CATEGORIES = 25
CATEGORY_COLUMNS = ("language", "source", "domain", "group")

SECTIONS = [("funnel", "Funnel"), ("drops", "Drop reasons"), ("groups", "Languages, sources, domains"),
            ("scores", "Score distributions"), ("whatif", "What-if curves"), ("dedup", "Dedup"),
            ("mixture", "Mixture and shards")]


# -- tables (also re-exported by pipeline.inspect for notebooks) ---------------------------------
def funnel(out: str | Run) -> pl.DataFrame:
    """One row per step as it ran, from stats.json: docs, bytes and tokens in and out, dropped,
    generated, busy and wall seconds, and the step's inputs."""
    run = out if isinstance(out, Run) else load_run(out)
    rows = []
    for s in run.stats["steps"]:
        sid = s["id"]
        rows.append({"step": sid, "op": s.get("op"), "inputs": ",".join(run.inputs.get(sid, [])) if sid != SOURCE else "",
                     "docs_in": s["docs_in"], "docs_out": s["docs_out"], "dropped": s["docs_dropped"],
                     "generated": s.get("generated", 0), "bytes_in": s["bytes_in"], "bytes_out": s["bytes_out"],
                     "tokens_out": s.get("tokens_out"), "busy_s": s.get("busy_s"),
                     "wall_s": s.get("wall_s", s.get("segment_wall_s"))})
    schema = {"step": pl.String, "op": pl.String, "inputs": pl.String, "docs_in": pl.Int64, "docs_out": pl.Int64,
              "dropped": pl.Int64, "generated": pl.Int64, "bytes_in": pl.Int64, "bytes_out": pl.Int64,
              "tokens_out": pl.Int64, "busy_s": pl.Float64, "wall_s": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def drop_examples(out: str | Run, step: str, per_reason: int = EXAMPLES_PER_REASON) -> pl.DataFrame:
    """A few rejected rows per drop reason of a step: (reason, id, url, excerpt). Reads files one
    by one and stops once every reason has its examples (the text of a 1M-row step is not read)."""
    run = out if isinstance(out, Run) else load_run(out)
    wanted = set((run.steps.get(step) or {}).get("dropped", {}))
    got: dict[str, list[dict]] = {}
    for f in _files(run.out, "rejected", step):
        pf = pq.ParquetFile(f)
        names = set(pf.schema_arrow.names)
        reasons = pl.from_arrow(pf.read(columns=["id", "drop_reason"]))
        reasons = reasons.with_columns(pl.col("drop_reason").str.split(" ").list.first().alias("reason"))
        need = [r for r in reasons["reason"].unique().to_list() if len(got.get(r, [])) < per_reason]
        if not need:
            continue
        pick = (reasons.filter(pl.col("reason").is_in(need)).with_row_index("_i")
                .group_by("reason", maintain_order=True).head(per_reason))
        cols = [c for c in ("id", "url", "text", "drop_reason") if c in names]
        rows = pl.from_arrow(pf.read(columns=cols).take(pick["_i"].to_list()))
        for r in rows.to_dicts():
            reason = r["drop_reason"].split(" ", 1)[0]
            lst = got.setdefault(reason, [])
            if len(lst) < per_reason:
                text = r.get("text") or ""
                lst.append({"reason": reason, "detail": r["drop_reason"], "id": r["id"], "url": r.get("url"),
                            "excerpt": text[:EXCERPT_CHARS] + ("…" if len(text) > EXCERPT_CHARS else "")})
        if wanted and all(len(got.get(r, [])) >= per_reason for r in wanted):
            break
    rows = [x for r in sorted(got) for x in got[r]]
    return pl.DataFrame(rows, schema={"reason": pl.String, "detail": pl.String, "id": pl.String, "url": pl.String,
                                      "excerpt": pl.String})


def _category_expr(column: str, have: set[str]) -> pl.Expr | None:
    if column in have:
        return pl.col(column).cast(pl.String).fill_null("(none)")
    if column == "domain" and "url" in have:  # the host of the URL
        return pl.col("url").cast(pl.String).str.extract(r"^[a-zA-Z][a-zA-Z0-9+.-]*://([^/:?#]+)", 1) \
            .str.to_lowercase().fill_null("(none)")
    return None


def _columns_of(run: Run, step: str) -> set[str]:
    files = _files(run.out, step) if run.written(step) else []
    files += _files(run.out, "rejected", step)
    return set(pq.ParquetFile(files[0]).schema_arrow.names) if files else set()


def groups(out: str | Run, column: str = "language", top: int = TOP_CATEGORIES) -> pl.DataFrame:
    """Documents per value of `column` (language, source, group, or `domain` = the URL's host) where
    the column first appears ("in") and at the end of the run ("out"), with the share kept.
    Values beyond the `top` largest are summed as "(other)"."""
    run = out if isinstance(out, Run) else load_run(out)
    first = None
    for step in run.order:
        if step == SOURCE:
            continue
        have = _all_columns(run, step)
        if _category_expr(column, have) is not None:
            first = step
            break
    schema = {column: pl.String, "docs_in": pl.Int64, "docs_out": pl.Int64, "kept": pl.Float64}
    if first is None:
        return pl.DataFrame([], schema=schema)
    need = ["url"] if column == "domain" else [column]
    lf = reached_rows(run, first, need)
    if lf is None:
        return pl.DataFrame([], schema=schema)
    expr = _category_expr(column, set(need))
    din = lf.select(expr.alias(column)).group_by(column).len("docs_in").collect()
    outs = [s for s in run.stats.get("outputs", []) if run.written(s)]
    last = [s for s in run.order if s in outs][-1:] if outs else []
    if last:
        o = pl.scan_parquet(_files(run.out, last[0]))
        have = set(o.collect_schema().names())
        e = _category_expr(column, have)
        dout = o.select(e.alias(column)).group_by(column).len("docs_out").collect() if e is not None else None
    else:
        dout = None
    df = din if dout is None else din.join(dout, on=column, how="full", coalesce=True)
    if "docs_out" not in df.columns:
        df = df.with_columns(pl.lit(None, pl.Int64).alias("docs_out"))
    df = df.with_columns(pl.col("docs_in").fill_null(0), pl.col("docs_out").fill_null(0)).sort("docs_in", descending=True)
    if len(df) > top:
        rest = df[top:]
        df = pl.concat([df[:top], pl.DataFrame({column: ["(other)"], "docs_in": [int(rest["docs_in"].sum())],
                                                "docs_out": [int(rest["docs_out"].sum())]})], how="vertical_relaxed")
    return df.with_columns((pl.col("docs_out") / pl.col("docs_in")).round(4).alias("kept")).cast(
        {"docs_in": pl.Int64, "docs_out": pl.Int64})


def _all_columns(run: Run, step: str) -> set[str]:
    """Columns the rows that reached `step` carry (read from a file schema, not the data)."""
    cols = _columns_of(run, step)
    if cols:
        return cols
    for c in run.consumers(step):
        cols = _all_columns(run, c)
        if cols:
            return cols
    return set()


def score_histogram(df: pl.DataFrame, column: str, reason_prefix: str | None = None, threshold=None,
                    bins: int = BINS) -> pl.DataFrame:
    """Binned distribution of a score among the rows that reached its step: (left, right, kept,
    dropped_here) where dropped_here counts rows this step dropped. Bins span the 0.5-99.5 %
    quantiles (and the threshold); rows outside fall into the edge bins."""
    s = df[column].cast(pl.Float64).to_numpy()
    ok = np.isfinite(s)
    schema = {"left": pl.Float64, "right": pl.Float64, "kept": pl.Int64, "dropped": pl.Int64}
    if not ok.any():
        return pl.DataFrame([], schema=schema)
    v = s[ok]
    lo, hi = np.quantile(v, [0.005, 0.995])
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        hi = lo + 1.0
    integer = df[column].dtype.is_integer()
    if integer and hi - lo + 1 <= bins:
        edges = np.arange(np.floor(lo) - 0.5, np.ceil(hi) + 1.0, 1.0)
    else:
        edges = np.linspace(lo, hi, bins + 1)
    kept = df["_kept"].to_numpy()[ok]
    idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
    k = np.bincount(idx[kept], minlength=len(edges) - 1)
    d = np.bincount(idx[~kept], minlength=len(edges) - 1)
    return pl.DataFrame({"left": edges[:-1], "right": edges[1:], "kept": k.astype(np.int64), "dropped": d.astype(np.int64)})


def dedup_table(out: str | Run) -> list[dict]:
    """Per dedup step (a step whose rows carry `dup_of`): duplicates removed per group (language
    when known) and the distribution of cluster sizes (kept row + its duplicates)."""
    run = out if isinstance(out, Run) else load_run(out)
    res = []
    for step in run.order:
        if step == SOURCE:
            continue
        rej = _files(run.out, "rejected", step)
        if not rej or "dup_of" not in set(pq.ParquetFile(rej[0]).schema_arrow.names):
            continue
        names = set(pq.ParquetFile(rej[0]).schema_arrow.names)
        group = "language" if "language" in names else ("source" if "source" in names else None)
        cols = ["dup_of", "drop_reason"] + ([group] if group else [])
        # rows this step dropped as duplicates (later steps carry the column along, with their own reasons)
        d = (pl.scan_parquet(rej).select(cols)
             .filter(pl.col("dup_of").is_not_null() & pl.col("drop_reason").str.starts_with(f"{run.ops.get(step)}:"))
             .collect())
        if not len(d):
            continue
        by_group = (d.group_by(pl.col(group).cast(pl.String).fill_null("(none)").alias("group")).len("duplicates")
                    .sort("duplicates", descending=True) if group else
                    pl.DataFrame({"group": ["all"], "duplicates": [len(d)]}))
        sizes = d.group_by("dup_of").len("members").with_columns((pl.col("members") + 1).alias("size"))
        hist = sizes.group_by("size").len("clusters").sort("size")
        res.append({"step": step, "op": run.ops.get(step), "group_by": group or "all", "by_group": by_group,
                    "cluster_sizes": hist, "duplicates": len(d)})
    return res


def mixture_manifests(out: str | Run) -> list[dict]:
    """The shard manifests a mixture step wrote (`<out>/<step>.shards/manifest.json`, one per phase
    when the step has phases), as [{"step", "phase", "manifest"}]."""
    run = out if isinstance(out, Run) else load_run(out)
    found = []
    for step in run.order:
        for d in (os.path.join(run.out, f"{step}.shards"), os.path.join(run.out, step)):
            p = os.path.join(d, "manifest.json")
            if not os.path.isfile(p):
                continue
            with open(p, encoding="utf-8") as f:
                man = json.load(f)
            if man.get("phases"):
                for ph in man["phases"]:
                    sub = os.path.join(d, ph.get("dir", ""), "manifest.json")
                    if os.path.isfile(sub):
                        with open(sub, encoding="utf-8") as f:
                            found.append({"step": step, "phase": ph.get("name"), "manifest": json.load(f)})
            else:
                found.append({"step": step, "phase": None, "manifest": man})
            break
    return found


# -- the HTML ---------------------------------------------------------------------------------------
class Fig:
    """A plotly figure as plain JSON (data + layout), drawn in the page by Plotly.newPlot.
    Building plotly.graph_objects figures validates every property (about 0.5 s per figure on
    this machine); the JSON is what they would produce anyway."""

    def __init__(self, data: list[dict] | None = None):
        self.data = list(data or [])
        self.layout: dict = {"margin": {"l": 60, "r": 20, "t": 50, "b": 50}, "font": {"size": 12},
                             "paper_bgcolor": "#fff", "plot_bgcolor": "#fff",
                             "xaxis": {"gridcolor": "#eee", "automargin": True},
                             "yaxis": {"gridcolor": "#eee", "automargin": True}, "shapes": [], "annotations": []}

    def add(self, trace: dict) -> "Fig":
        self.data.append(trace)
        return self

    def update(self, **kw) -> "Fig":
        for k, v in _nest(kw).items():
            if k == "title" and isinstance(v, str):  # plotly.js 3 takes {"text": ...} only
                v = {"text": v}
            if isinstance(v, dict) and isinstance(self.layout.get(k), dict):
                self.layout[k].update(v)
            else:
                self.layout[k] = v
        return self

    def vline(self, x, text: str) -> "Fig":
        self.layout["shapes"].append({"type": "line", "xref": "x", "yref": "paper", "x0": x, "x1": x, "y0": 0,
                                      "y1": 1, "line": {"dash": "dash", "color": "black", "width": 1.5}})
        self.layout["annotations"].append({"x": x, "xref": "x", "y": 1.02, "yref": "paper", "text": text,
                                           "showarrow": False, "font": {"size": 11}})
        return self


_NESTED = ("marker", "line", "xaxis", "yaxis")


def _nest(kw: dict) -> dict:
    """plotly's magic underscores: marker_color=... -> {"marker": {"color": ...}}."""
    out: dict = {}
    for k, v in kw.items():
        head, _, rest = k.partition("_")
        if rest and head in _NESTED:
            out.setdefault(head, {})[rest] = {"text": v} if rest == "title" else v
        else:
            out[k] = list(v) if isinstance(v, (tuple, np.ndarray)) else v
    return out


def _barkw(**kw) -> dict:
    return {"type": "bar", **_nest(kw)}


def _scatter(**kw) -> dict:
    return {"type": "scatter", **_nest(kw)}


def _sankey(**kw) -> dict:
    return {"type": "sankey", **kw}


def _fig_html(fig: Fig, div_id: str) -> str:
    spec = json.dumps({"data": fig.data, "layout": fig.layout}, default=_json_default).replace("</", "<\\/")
    return (f'<div class="plot" id="{div_id}"></div><script>(function(){{var f={spec};'
            f'Plotly.newPlot("{div_id}",f.data,f.layout,{{displaylogo:false,responsive:true}});}})();</script>')


def _json_default(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return None if not np.isfinite(v) else float(v)
    raise TypeError(f"not JSON: {type(v).__name__}")


def _table(df: pl.DataFrame, cls: str = "", data_attrs: tuple[str, str] | None = None) -> str:
    """An HTML table; with data_attrs=(key column, "field"), cells carry data-key / data-field."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = []
    for row in df.iter_rows(named=True):
        cells = []
        for c, v in row.items():
            attr = ""
            if data_attrs:
                attr = f' data-key="{html.escape(str(row[data_attrs[0]]))}" data-field="{html.escape(c)}"'
            cells.append(f"<td{attr}>{html.escape(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _funnel_section(run: Run, fun: pl.DataFrame) -> str:
    parts = []
    # the DAG as it ran: a Sankey of documents from step to step, each step's drops as a sink
    steps = fun["step"].to_list()
    nodes = [*steps]
    src, dst, val, lab = [], [], [], []
    by = {r["step"]: r for r in fun.iter_rows(named=True)}
    for r in fun.iter_rows(named=True):
        s = r["step"]
        for u in (run.inputs.get(s, []) if s != SOURCE else []):
            if u in by:
                src.append(nodes.index(u)), dst.append(nodes.index(s)), val.append(by[u]["docs_out"] if len(
                    run.inputs.get(s, [])) > 1 else r["docs_in"]), lab.append(f"{u} → {s}")
        if r["dropped"]:
            nodes.append(f"dropped at {s}")
            src.append(nodes.index(s)), dst.append(len(nodes) - 1), val.append(r["dropped"]), lab.append(f"{s} dropped")
    outs = [s for s in steps if s in run.stats.get("outputs", [])]
    for s in outs:
        nodes.append(f"written: {s}")
        src.append(nodes.index(s)), dst.append(len(nodes) - 1), val.append(by[s]["docs_out"]), lab.append(f"{s} written")
    colors = ["#4C78A8" if not n.startswith(("dropped", "written")) else ("#E45756" if n.startswith("dropped")
                                                                              else "#54A24B") for n in nodes]
    fig = Fig([_sankey(node=dict(label=nodes, color=colors, pad=12, thickness=14),
                              link=dict(source=src, target=dst, value=val, label=lab))])
    fig.update(title="Documents through the DAG as it ran (red: dropped, green: written)", height=420)
    parts.append(_fig_html(fig, "plot-funnel-sankey"))
    fig = Fig([_barkw(name="docs in", x=steps, y=fun["docs_in"].to_list()),
                     _barkw(name="docs out", x=steps, y=fun["docs_out"].to_list())])
    fig.update(title="Documents in and out per step", barmode="group", height=340)
    parts.append(_fig_html(fig, "plot-funnel-docs"))
    fig = Fig([_barkw(name="MB in", x=steps, y=(fun["bytes_in"] / 1e6).to_list()),
                     _barkw(name="MB out", x=steps, y=(fun["bytes_out"] / 1e6).to_list())])
    if fun["tokens_out"].null_count() < len(fun):
        fig.add(_scatter(name="tokens out (M)", x=steps, y=(fun["tokens_out"] / 1e6).to_list(),
                                 mode="markers+lines", yaxis="y2"))
        fig.update(yaxis2=dict(overlaying="y", side="right", title={"text": "M tokens"}))
    fig.update(title="Text bytes (and tokens, where counted) in and out per step", barmode="group", height=340,
                      yaxis_title="MB of text")
    parts.append(_fig_html(fig, "plot-funnel-bytes"))
    fig = Fig([_barkw(name="busy s (summed over workers)", x=steps, y=fun["busy_s"].fill_null(0).to_list()),
                     _barkw(name="wall s", x=steps, y=fun["wall_s"].fill_null(0).to_list())])
    fig.update(title="Time per step (wall: the segment that computed it, or the step's own when recorded)",
                      barmode="group", height=320, yaxis_title="seconds")
    parts.append(_fig_html(fig, "plot-funnel-time"))
    parts.append(_table(fun, "numbers funnel", ("step", "field")))
    return "".join(parts)


def _drops_section(run: Run, fun: pl.DataFrame) -> str:
    reasons = sorted({r for s in run.stats["steps"] for r in s["dropped"]})
    steps = [s["id"] for s in run.stats["steps"]]
    if not reasons:
        return '<p class="empty">Nothing was dropped.</p>'
    traces = [_barkw(name=r, x=steps, y=[s["dropped"].get(r, 0) for s in run.stats["steps"]]) for r in reasons]
    fig = Fig(traces)
    fig.update(title="Documents dropped per step, by reason", barmode="stack", height=420,
                      legend=dict(font=dict(size=10)))
    parts = [_fig_html(fig, "plot-drops")]
    for s in run.stats["steps"]:
        if not s["dropped"]:
            continue
        ex = drop_examples(run, s["id"])
        parts.append(f'<h3>{html.escape(s["id"])} <span class="op">{html.escape(str(s.get("op")))}</span></h3>')
        counts = pl.DataFrame({"reason": list(s["dropped"]), "docs": list(s["dropped"].values())})
        parts.append(_table(counts, "numbers reasons", None))
        if len(ex):
            parts.append('<details><summary>examples</summary>' +
                         _table(ex.select("reason", "id", "url", "excerpt"), "examples") + "</details>")
    return "".join(parts)


def _groups_section(run: Run) -> str:
    parts = []
    for col in CATEGORY_COLUMNS:
        g = groups(run, col)
        if not len(g):
            continue
        fig = Fig([_barkw(name="in", x=g[col].to_list(), y=g["docs_in"].to_list()),
                         _barkw(name="out (end of the run)", x=g[col].to_list(), y=g["docs_out"].to_list())])
        fig.update(title=f"Documents per {col}: where it is first known vs at the end", barmode="group",
                          height=340)
        parts.append(_fig_html(fig, f"plot-groups-{col}"))
        parts.append(f"<details><summary>{col} table</summary>{_table(g, 'numbers')}</details>")
    return "".join(parts) or '<p class="empty">No language, source, domain or group column in this run.</p>'


def _score_sections(run: Run) -> tuple[str, str]:
    dist, curves = [], []
    for step in run.order:
        rules = run.rules(step)
        if not rules or not any(r.is_cut for r in rules):
            continue
        df = score_rows(run, step)
        if df is None or not len(df):
            continue
        seen = set()
        for r in rules:
            if not r.is_cut or r.column in seen or df[r.column].null_count() == len(df):
                continue
            seen.add(r.column)
            thr = r.value if isinstance(r.value, (int, float)) and not isinstance(r.value, bool) else None
            h = score_histogram(df, r.column, threshold=thr)
            if not len(h):
                continue
            mid = ((h["left"] + h["right"]) / 2).to_list()
            width = (h["right"] - h["left"]).to_list()
            fig = Fig([_barkw(name="kept", x=mid, y=h["kept"].to_list(), width=width, marker_color="#54A24B"),
                             _barkw(name=f"dropped at {step}", x=mid, y=h["dropped"].to_list(), width=width,
                                    marker_color="#E45756")])
            if thr is not None:
                fig.vline(thr, f"{r.param} = {thr}")
            fig.update(title=f"{step}: {r.column} among the {len(df):,} documents that reached it "
                                    f"(drops where {r.op} threshold)", barmode="stack", height=300,
                              xaxis_title=r.column, yaxis_title="documents", bargap=0)
            dist.append(_fig_html(fig, f"plot-score-{step}-{r.column}"))
        for param in dict.fromkeys(r.param for r in rules if r.is_cut):
            mine = [r for r in rules if r.param == param]
            if any(isinstance(r.value, (list, tuple)) for r in mine) or any(isinstance(r.value, bool) for r in mine):
                continue
            try:
                c = curve(run, step, param, df)
            except ValueError:
                continue
            if not len(c):
                continue
            fig = Fig([_scatter(name="documents kept", x=c["value"].to_list(), y=c["docs"].to_list(),
                                        mode="lines+markers", line_shape="hv")])
            if c["docs_unknown"].sum():
                fig.add(_scatter(name="+ unknown (a later rule was never evaluated)", x=c["value"].to_list(),
                                         y=(c["docs"] + c["docs_unknown"]).to_list(), mode="lines", line_dash="dot"))
            if c["tokens"].null_count() < len(c):
                fig.add(_scatter(name="tokens kept", x=c["value"].to_list(), y=c["tokens"].to_list(),
                                         mode="lines", yaxis="y2"))
                fig.update(yaxis2=dict(overlaying="y", side="right", title={"text": "tokens"}, rangemode="tozero"),
                           yaxis_rangemode="tozero")
            if mine[0].value is not None:
                fig.vline(mine[0].value, f"run: {mine[0].value}")
            fig.update(title=f"{step}: documents it would keep for each {param} (other rules as run, no rerun)",
                              height=300, xaxis_title=param, yaxis_title="documents kept at this step")
            curves.append(_fig_html(fig, f"plot-whatif-{step}-{param}"))
    empty = '<p class="empty">No step of this run declares a threshold on a recorded score.</p>'
    return "".join(dist) or empty, "".join(curves) or empty


def _dedup_section(run: Run) -> str:
    parts = []
    for d in dedup_table(run):
        g, sizes = d["by_group"], d["cluster_sizes"]
        fig = Fig([_barkw(x=g["group"].to_list(), y=g["duplicates"].to_list(), name="duplicates removed")])
        fig.update(title=f"{d['step']} ({d['op']}): {d['duplicates']:,} duplicates removed, per {d['group_by']}",
                          height=300)
        parts.append(_fig_html(fig, f"plot-dedup-groups-{d['step']}"))
        fig = Fig([_barkw(x=sizes["size"].to_list(), y=sizes["clusters"].to_list(), name="clusters")])
        fig.update(title=f"{d['step']}: duplicate clusters by size (kept document + its duplicates)", height=300,
                          xaxis_title="cluster size", yaxis_title="clusters", xaxis_dtick=1)
        parts.append(_fig_html(fig, f"plot-dedup-sizes-{d['step']}"))
    return "".join(parts) or '<p class="empty">No dedup step in this run.</p>'


def _mixture_section(run: Run) -> str:
    parts = []
    for m in mixture_manifests(run):
        man = m["manifest"]
        groups_ = man.get("groups") or {}
        if isinstance(groups_, dict):
            rows = [{"group": k, **(v if isinstance(v, dict) else {})} for k, v in groups_.items()]
        else:
            rows = [dict(v) for v in groups_]
        if not rows:
            continue
        names = [str(r.get("group", r.get("name", "?"))) for r in rows]
        tw = [r.get("target_weight", r.get("target")) for r in rows]
        rw = [r.get("realized_weight", r.get("realized", r.get("weight"))) for r in rows]
        ep = [r.get("epochs") for r in rows]
        fig = Fig([_barkw(name="target weight", x=names, y=tw), _barkw(name="realized weight", x=names, y=rw)])
        if any(e is not None for e in ep):
            fig.add(_scatter(name="epochs", x=names, y=ep, mode="markers", yaxis="y2", marker_size=10))
            fig.update(yaxis2=dict(overlaying="y", side="right", title={"text": "epochs"}, rangemode="tozero"))
        phase = f" (phase {m['phase']})" if m.get("phase") else ""
        fig.update(title=f"{m['step']}{phase}: target vs realized token weights per group, and epochs",
                   barmode="group", height=320)
        parts.append(_fig_html(fig, f"plot-mixture-{m['step']}-{len(parts)}"))
        parts.append(f"<details><summary>manifest.json</summary><pre>{html.escape(json.dumps(man, indent=1)[:20000])}"
                     f"</pre></details>")
    return "".join(parts) or '<p class="empty">No mixture step (manifest.json) in this run.</p>'


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#263238;color:#fff;padding:14px 24px} header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#cfd8dc;font-size:13px}
nav{position:sticky;top:0;background:#eceff1;padding:6px 24px;z-index:10;font-size:14px}
nav a{margin-right:16px;color:#1e5aa0;text-decoration:none}
main{max-width:1280px;margin:0 auto;padding:8px 24px 40px}
section{background:#fff;border:1px solid #e0e0e0;border-radius:6px;margin:16px 0;padding:8px 16px}
h2{font-size:18px;border-bottom:1px solid #eee;padding-bottom:4px} h3{font-size:15px;margin:14px 0 4px}
.op{color:#777;font-weight:normal;font-size:13px}
table{border-collapse:collapse;font-size:12px;margin:6px 0;max-width:100%}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:right;vertical-align:top}
th{background:#f3f3f3} table.examples td{text-align:left;max-width:640px;white-space:pre-wrap;word-break:break-word}
.empty,.note{color:#777;font-style:italic} details{margin:4px 0}
"""


def build_report(out: str | Run) -> str:
    """The report as one HTML string (plotly.js embedded)."""
    from plotly.offline import get_plotlyjs

    t0 = time.perf_counter()
    run = out if isinstance(out, Run) else load_run(out)
    fun = funnel(run)
    dist, curves = _score_sections(run)
    body = {"funnel": _funnel_section(run, fun), "drops": _drops_section(run, fun), "groups": _groups_section(run),
            "scores": dist, "whatif": curves, "dedup": _dedup_section(run), "mixture": _mixture_section(run)}
    intro = {"whatif": "<p class='note'>From the run's kept and rejected rows, no rerun. A row dropped by a cut "
                       "whose later rules are not score cuts was never checked by those rules: it is shown as "
                       "'unknown'. `gristmill what-if OUT --set steps.ID.params.NAME=VALUE` carries a change to the "
                       "end of the run.</p>",
             "scores": "<p class='note'>Each score a filter thresholds, among the documents that reached the "
                       "step (green: kept by it, red: dropped by it, for any of its rules); dashed: the "
                       "recipe's threshold.</p>"}
    st = run.stats
    sections = "".join(
        f'<section id="{sid}" data-section="{sid}"><h2>{title}</h2>{intro.get(sid, "")}{body[sid]}</section>'
        for sid, title in SECTIONS)
    nav = "".join(f'<a href="#{sid}">{title}</a>' for sid, title in SECTIONS)
    notes = f"<p>{html.escape(run.recipe_note)}</p>" if run.recipe_note else ""
    first = st["steps"][0] if st["steps"] else {"docs_in": 0}
    last_out = next((s for s in reversed(st["steps"]) if s["id"] in st.get("outputs", [])), None)
    summary = (f"{first['docs_in']:,} documents read" +
               (f" → {last_out['docs_out']:,} written by {last_out['id']}" if last_out else "") +
               f" · run wall time {st.get('wall_s', 0):,.1f} s · accounting invariant "
               f"{'holds' if st.get('invariant_ok') else 'BROKEN: ' + '; '.join(st.get('problems', []))}")
    data = {"recipe": st.get("recipe"), "output": run.out, "steps": fun.to_dicts(), "built_s": None}
    data["built_s"] = round(time.perf_counter() - t0, 3)
    blob = json.dumps(data, default=str).replace("</", "<\\/")  # cannot close the script tag
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>gristmill report: {html.escape(str(st.get('recipe')))}</title><style>{CSS}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            f"<header><h1>gristmill run report: {html.escape(str(st.get('recipe')))}</h1>"
            f"<p>{html.escape(os.path.abspath(run.out))} · {html.escape(summary)}</p>{notes}</header>"
            f"<nav>{nav}</nav><main>{sections}</main>"
            "<script type='application/json' id='gristmill-data'>" + blob +
            "</script></body></html>")


def write_report(out: str, output: str | None = None) -> str:
    """Write the report (default `<out>/report.html`) atomically; returns its path."""
    path = output or os.path.join(out, "report.html")
    text = build_report(out)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path
