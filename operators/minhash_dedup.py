"""minhash_dedup: near-duplicate removal with MinHash LSH on Ray Data, verified and clustered.

Plan (every arrow is a Ray Data map, every ``repartition(keys=...)`` a hash shuffle; the driver only
holds dataset handles and a few counts):

1. signatures: per batch, word (or character) n-gram shingles -> one-permutation MinHash ->
   ``bands`` band keys per document, emitted as rows (band key, doc key).
2. candidates: shuffle by band key; inside a partition, documents sharing a band key become
   candidate pairs (sorted bucket, each member paired with its next ``max_bucket_neighbors``).
3. verification: each candidate pair gets the shingle sets of both documents (recomputed from the
   text of the candidate documents only) and is kept only if its exact Jaccard similarity reaches
   ``threshold`` (or the signature estimate, ``verify: signature``). A pair's two halves meet by a
   shuffle on the pair key.
4. connected components of the verified pairs, distributed: alternating large-star / small-star
   rounds (Kiveris et al., "Connected components in MapReduce and beyond", 2014), one shuffle
   each, until a round changes nothing.
5. keep rule: the members of each component meet by a shuffle on the component and one is kept
   (``first``: smallest id; ``longest``: most characters; ``highest:<col>``: largest value of a
   column, e.g. a quality score; ties -> smallest id).
6. decisions back to the rows: a map over the input that looks its documents up in the decision
   table (only the clustered documents; shared through the object store while it has at most
   ``broadcast_max_rows`` rows, else a hash join).

Candidate pairs reach the verification map the same way (a sorted table shared through the object
store, or a join when there are more than ``broadcast_max_rows`` of them).

On an input small enough for one process the engine calls ``run_table`` instead: the same stage
functions on one partition, with no shuffle.
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from operators import _minhash as mh
from operators.base import DROP_REASON, Operator, Params, Resources, register, set_column

REASON = "minhash_dedup:minhash_dup"
log = logging.getLogger("gristmill.minhash_dedup")
_TRACE = os.environ.get("GRISTMILL_MINHASH_TRACE") == "1"


class _Timer:
    def __init__(self):
        self.t0 = self.t = time.perf_counter()

    def __call__(self, what: str) -> None:
        now = time.perf_counter()
        msg = f"minhash_dedup: {what} ({now - self.t:.2f}s, total {now - self.t0:.2f}s)"
        if _TRACE:
            import resource

            msg += f" driver maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB"
        self.t = now
        if _TRACE:
            print(msg, flush=True)
        log.info(msg)
U64 = np.uint64


class MinHashDedupParams(Params):
    threshold: float = Field(0.8, ge=0.05, le=1.0,
                             description="Jaccard similarity of the shingle sets at or above which two documents are duplicates")
    ngram: int = Field(5, ge=1, le=32, description="words per shingle")
    char_ngram: int = Field(5, ge=1, le=64,
                            description="characters per shingle for languages written without spaces")
    no_space_languages: tuple[str, ...] = Field(
        mh.NO_SPACE_LANGUAGES,
        description="language codes (from the `language` column) shingled by characters instead of words")
    num_perm: int = Field(128, ge=8, le=2048, description="MinHash bins per signature")
    bands: int | None = Field(None, ge=1, le=2048,
                              description="LSH bands; derived from threshold and num_perm when unset")
    rows: int | None = Field(None, ge=1, le=256,
                             description="bins per LSH band; derived from threshold and num_perm when unset")
    lsh_recall: float = Field(0.995, gt=0.5, lt=1.0,
                              description="when deriving bands x rows: P[candidate | Jaccard = threshold] to reach")
    verify: Literal["jaccard", "signature", "none"] = Field(
        "jaccard", description="check candidates by exact Jaccard of the shingle sets, by the signature "
        "estimate, or not at all (plain LSH)")
    keep: str = Field("first", pattern=r"^(first|longest|highest:.+)$",
                      description="which document of a cluster survives: first (smallest id), longest, "
                      "or highest:<column>")
    lowercase: bool = Field(True, description="lowercase before shingling")
    strip_punctuation: bool = Field(True, description="turn punctuation and symbols into spaces before shingling")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="hash seed")
    max_bucket_neighbors: int = Field(32, ge=1, le=4096,
                                      description="pairs emitted per document within one LSH bucket (larger "
                                      "buckets are chained, so they stay connected at linear cost)")
    num_partitions: int | None = Field(None, ge=1, le=4096,
                                       description="shuffle partitions (default: from the cluster size and the corpus)")
    broadcast_max_rows: int = Field(5_000_000, ge=0,
                                    description="candidate pairs / decisions up to this many rows are shared "
                                    "through the object store instead of a hash join")
    batch_size: int = Field(8192, ge=64, le=1_000_000, description="documents per signature batch")

    @model_validator(mode="after")
    def _check_bands(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither (then they follow from threshold)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self

    def band_layout(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows
        return mh.lsh_params(self.threshold, self.num_perm, self.lsh_recall)


# -- schemas of the intermediate tables -------------------------------------------------------
BAND_SCHEMA = pa.schema([("bkey", pa.uint64()), ("k", pa.uint64())])
PAIR_SCHEMA = pa.schema([("a", pa.uint64()), ("b", pa.uint64())])
_ATTRS = [("id", pa.string()), ("len", pa.int64()), ("score", pa.float64())]


def _verify_schema(payload: pa.DataType | None) -> pa.Schema:
    fields = [("pk", pa.uint64()), ("a", pa.uint64()), ("b", pa.uint64()), ("side", pa.int8())]
    if payload is not None:
        fields.append(("payload", payload))
    return pa.schema(fields + _ATTRS)


EDGE_SCHEMA = pa.schema([("a", pa.uint64()), ("b", pa.uint64()), ("sim", pa.float64())]
                        + [(n + "_a", t) for n, t in _ATTRS] + [(n + "_b", t) for n, t in _ATTRS])
CC_SCHEMA = pa.schema([("u", pa.uint64()), ("v", pa.uint64()), ("chg", pa.int64())])
NODE_SCHEMA = pa.schema([("node", pa.uint64()), ("root", pa.uint64())] + _ATTRS)
DEC_SCHEMA = pa.schema([("k", pa.uint64()), ("dup_of", pa.string()), ("dup_cluster", pa.string()),
                        ("dup_cluster_size", pa.int64())])


def _cluster_cpus(ctx) -> int:
    if ctx.max_workers:
        return int(ctx.max_workers)
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _cfg(p: MinHashDedupParams) -> dict:
    bands, rows = p.band_layout()
    keep_col = p.keep.split(":", 1)[1] if p.keep.startswith("highest:") else None
    return dict(threshold=p.threshold, ngram=p.ngram, char_ngram=p.char_ngram,
                no_space=tuple(p.no_space_languages), num_perm=p.num_perm, bands=bands, rows=rows,
                verify=p.verify, keep=p.keep.split(":", 1)[0], keep_col=keep_col, lowercase=p.lowercase,
                strip=p.strip_punctuation, seed=p.seed, neighbors=p.max_bucket_neighbors)


def _live(batch: pa.Table) -> np.ndarray:
    """Rows still in play (an upstream step may have marked some dropped already)."""
    if DROP_REASON not in batch.column_names:
        return np.ones(batch.num_rows, bool)
    return np.asarray(pc.is_null(batch.column(DROP_REASON)).to_numpy(zero_copy_only=False), bool)


def _shingles(batch: pa.Table, cfg: dict):
    lang = batch.column("language") if "language" in batch.column_names else None
    return mh.shingles(batch.column("text"), lang, ngram=cfg["ngram"], char_ngram=cfg["char_ngram"],
                       lowercase=cfg["lowercase"], strip_punctuation=cfg["strip"],
                       no_space_languages=cfg["no_space"], seed=cfg["seed"])


# -- 1. signatures -> band rows ---------------------------------------------------------------
KEY_COL, BANDS_COL = "_mh_k", "_mh_bands"


def add_signature_columns(batch: pa.Table, cfg: dict) -> pa.Table:
    """The input rows plus their document key and LSH band keys (null for rows already dropped
    upstream and for documents without any shingle), computed in the same pass that brings the
    input into the object store."""
    n = batch.num_rows
    keys = mh.doc_keys(batch.column("id")) if n else np.empty(0, U64)
    live = np.flatnonzero(_live(batch))
    b = cfg["bands"]
    bands = pa.nulls(n, pa.list_(pa.uint64()))
    if len(live):
        sub = batch if len(live) == n else batch.take(pa.array(live))
        doc, h32 = _shingles(sub, cfg)
        sig, has = mh.signatures(doc, h32, len(live), cfg["num_perm"], cfg["seed"])
        rows = live[has]
        if len(rows):
            bk = mh.band_keys(sig[has], b, cfg["rows"]).ravel()
            counts = np.zeros(n, np.int32)
            counts[rows] = b
            offsets = np.zeros(n + 1, np.int32)
            np.cumsum(counts, out=offsets[1:])
            valid = np.zeros(n, bool)
            valid[rows] = True
            bands = pa.ListArray.from_arrays(pa.array(offsets), pa.array(bk), mask=pa.array(~valid))
    batch = set_column(batch, KEY_COL, pa.array(keys, pa.uint64()))
    return set_column(batch, BANDS_COL, bands)


def band_rows(batch: pa.Table) -> pa.Table:
    """(band key, doc key) rows of the documents that have band keys."""
    lens = pc.list_value_length(batch.column(BANDS_COL)).fill_null(0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(batch.column(BANDS_COL))
    keys = batch.column(KEY_COL).to_numpy()
    return pa.table({"bkey": flat, "k": np.repeat(keys, lens)}, schema=BAND_SCHEMA)


def drop_internal(batch: pa.Table) -> pa.Table:
    return batch.drop_columns([c for c in (KEY_COL, BANDS_COL) if c in batch.column_names])


# -- 2. buckets -> candidate pairs ------------------------------------------------------------
def bucket_pairs(part: pa.Table, cfg: dict) -> pa.Table:
    if part.num_rows < 2:
        return PAIR_SCHEMA.empty_table()
    a, b = mh.bucket_pairs(part.column("bkey").to_numpy(), part.column("k").to_numpy(), cfg["neighbors"])
    return pa.table({"a": a, "b": b}, schema=PAIR_SCHEMA)


# -- 3. verification --------------------------------------------------------------------------
def _attrs(batch: pa.Table, cfg: dict) -> dict:
    ids = batch.column("id")
    out = {"id": ids, "len": pc.cast(pc.utf8_length(pc.fill_null(batch.column("text"), "")), pa.int64())}
    if cfg["keep_col"]:
        out["score"] = pc.cast(batch.column(cfg["keep_col"]), pa.float64())
    else:
        out["score"] = pa.nulls(batch.num_rows, pa.float64())
    return out


def _payload_type(cfg: dict):
    if cfg["verify"] == "jaccard":
        return pa.list_(pa.uint32())
    if cfg["verify"] == "signature":
        return pa.list_(pa.uint64())
    return None


def _payload(batch: pa.Table, cfg: dict):
    """What the check needs of each document of `batch`: its shingle set or its signature."""
    if cfg["verify"] == "none":
        return None
    doc, h32 = _shingles(batch, cfg)
    if cfg["verify"] == "jaccard":
        return mh.shingle_sets(doc, h32, batch.num_rows)
    sig, _ = mh.signatures(doc, h32, batch.num_rows, cfg["num_perm"], cfg["seed"])
    k = cfg["num_perm"]
    return pa.ListArray.from_arrays(pa.array(np.arange(batch.num_rows + 1, dtype=np.int32) * k),
                                    pa.array(sig.ravel()))


def _doc_rows(batch: pa.Table, cfg: dict) -> dict:
    attrs = _attrs(batch, cfg)
    out = {"k": batch.column(KEY_COL), **attrs}
    pay = _payload(batch, cfg)
    if pay is not None:
        out["payload"] = pay
    return out


_PAIR_CACHE: dict = {}


def _sorted_pairs(refs) -> tuple:
    """The candidate pairs shared through the object store, as two sorted lookup tables (cached
    per worker process: every task of this step reads the same objects)."""
    import ray

    key = tuple(r.hex() for r in refs)
    hit = _PAIR_CACHE.get(key)
    if hit is None:
        hit = _pair_lookup(ray.get(list(refs)))
        _PAIR_CACHE.clear()
        _PAIR_CACHE[key] = hit
    return hit


def _pair_lookup(tables: list[pa.Table]) -> tuple:
    tabs = [t for t in tables if t.num_rows]
    if tabs:
        t = pa.concat_tables(tabs)
        a, b = mh.unique_pairs(t.column("a").to_numpy(), t.column("b").to_numpy())
    else:
        a = b = np.empty(0, U64)
    ob = np.argsort(b, kind="stable")
    return a, b, b[ob], a[ob]  # sorted by a (then b), and sorted by b


def _incident(keys: np.ndarray, sorted_keys: np.ndarray, partner: np.ndarray):
    """For each document key, the range of pairs where it appears -> (row index, partner)."""
    lo = np.searchsorted(sorted_keys, keys, "left")
    hi = np.searchsorted(sorted_keys, keys, "right")
    cnt = hi - lo
    rows = np.repeat(np.arange(len(keys)), cnt)
    first = np.cumsum(cnt) - cnt
    pos = np.arange(int(cnt.sum())) - np.repeat(first, cnt) + np.repeat(lo, cnt)
    return rows, partner[pos]


def verify_rows_broadcast(batch: pa.Table, cfg: dict, pair_refs) -> pa.Table:
    return verify_rows(batch, cfg, _sorted_pairs(pair_refs))


def verify_rows(batch: pa.Table, cfg: dict, lookup: tuple) -> pa.Table:
    """Verification rows of the documents of `batch` that are in a candidate pair (`lookup`:
    _pair_lookup of the pairs)."""
    schema = _verify_schema(_payload_type(cfg))
    a_sorted, b_of_a, b_sorted, a_of_b = lookup
    live = _live(batch)
    if not live.all():
        batch = batch.filter(pa.array(live))
    if batch.num_rows == 0 or len(a_sorted) == 0:
        return schema.empty_table()
    keys = batch.column(KEY_COL).to_numpy()
    r0, partner0 = _incident(keys, a_sorted, b_of_a)   # this doc is side a
    r1, partner1 = _incident(keys, b_sorted, a_of_b)   # this doc is side b
    cand = np.unique(np.concatenate([r0, r1]))
    if len(cand) == 0:
        return schema.empty_table()
    sub = batch.take(pa.array(cand))
    local = np.full(batch.num_rows, -1, np.int64)
    local[cand] = np.arange(len(cand))
    docs = _doc_rows(sub, cfg)
    rows = np.concatenate([local[r0], local[r1]])
    ka = np.concatenate([keys[r0], partner1])
    kb = np.concatenate([partner0, keys[r1]])
    side = np.concatenate([np.zeros(len(r0), np.int8), np.ones(len(r1), np.int8)])
    return _emit_verify_rows(docs, rows, ka, kb, side, schema)


def _emit_verify_rows(docs: dict, rows: np.ndarray, ka, kb, side, schema) -> pa.Table:
    take = pa.array(rows)
    cols = {"pk": mh.pair_key(ka, kb), "a": ka, "b": kb, "side": side}
    if "payload" in schema.names:
        cols["payload"] = docs["payload"].take(take)
    for name, _ in _ATTRS:
        cols[name] = docs[name].take(take)
    return pa.table(cols, schema=schema)


def doc_rows_all(batch: pa.Table, cfg: dict) -> pa.Table:
    """Join path: (k, payload, attrs) of every live document."""
    live = _live(batch)
    if not live.all():
        batch = batch.filter(pa.array(live))
    d = _doc_rows(batch, cfg)
    fields = [("k", pa.uint64())] + (
        [("payload", _payload_type(cfg))] if _payload_type(cfg) is not None else []) + _ATTRS
    return pa.table({n: d[n] for n, _ in fields}, schema=pa.schema(fields))


def incidence_rows(pairs: pa.Table) -> pa.Table:
    """Join path: each pair twice, keyed by the document that will supply its half."""
    a, b = pairs.column("a").to_numpy(), pairs.column("b").to_numpy()
    return pa.table({"k": np.concatenate([a, b]), "a": np.concatenate([a, a]), "b": np.concatenate([b, b]),
                     "side": np.concatenate([np.zeros(len(a), np.int8), np.ones(len(b), np.int8)])})


def joined_to_verify_rows(t: pa.Table, cfg: dict) -> pa.Table:
    schema = _verify_schema(_payload_type(cfg))
    if t.num_rows == 0:
        return schema.empty_table()
    a, b = t.column("a").to_numpy(), t.column("b").to_numpy()
    cols = {"pk": mh.pair_key(a, b), "a": a, "b": b, "side": pc.cast(t.column("side"), pa.int8())}
    for name in schema.names[4:]:
        cols[name] = t.column(name)
    return pa.table(cols, schema=schema)


def verify_pairs(part: pa.Table, cfg: dict) -> pa.Table:
    """One shuffle partition of verification rows (both halves of each pair are here) ->
    verified edges with the attributes of both ends."""
    if part.num_rows == 0:
        return EDGE_SCHEMA.empty_table()
    side = part.column("side").to_numpy()
    pk = part.column("pk").to_numpy()
    order = np.lexsort((side, pk))
    part = part.take(pa.array(order))
    pk, side = pk[order], side[order]
    # the same pair may come from several bands: one row per (pair, side)
    first = np.ones(len(pk), bool)
    first[1:] = (pk[1:] != pk[:-1]) | (side[1:] != side[:-1])
    part, pk, side = part.filter(pa.array(first)), pk[first], side[first]
    i0 = np.flatnonzero((side[:-1] == 0) & (side[1:] == 1) & (pk[:-1] == pk[1:]))
    if len(i0) == 0:
        return EDGE_SCHEMA.empty_table()
    A, B = part.take(pa.array(i0)), part.take(pa.array(i0 + 1))
    if cfg["verify"] == "jaccard":
        sim = mh.jaccard_lists(A.column("payload").combine_chunks(), B.column("payload").combine_chunks())
    elif cfg["verify"] == "signature":
        k = cfg["num_perm"]
        sa = pc.list_flatten(A.column("payload")).to_numpy().reshape(-1, k)
        sb = pc.list_flatten(B.column("payload")).to_numpy().reshape(-1, k)
        sim = mh.signature_similarity(sa, sb)
    else:
        sim = np.ones(len(i0))
    ok = sim >= cfg["threshold"] - 1e-12
    A, B = A.filter(pa.array(ok)), B.filter(pa.array(ok))
    cols = {"a": A.column("a"), "b": A.column("b"), "sim": sim[ok]}
    for name, _ in _ATTRS:
        cols[name + "_a"] = A.column(name)
        cols[name + "_b"] = B.column(name)
    return pa.table(cols, schema=EDGE_SCHEMA)


# -- 4. connected components (large-star / small-star) -----------------------------------------
def _groups(keys: np.ndarray):
    """Sorted order and group starts of `keys`."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], k[1:] != k[:-1]])) if len(k) else np.empty(0, np.int64)
    return order, k, starts


def _dedup_edges(u: np.ndarray, v: np.ndarray):
    return mh.unique_pairs(u, v)


def large_star(part: pa.Table) -> pa.Table:
    """Rows (u, v) hold every edge in both directions, partitioned by u. For each node u with
    m = min(u, neighbours): link every larger neighbour v > u to m."""
    if part.num_rows == 0:
        return CC_SCHEMA.empty_table()
    u, v = _dedup_edges(part.column("u").to_numpy(), part.column("v").to_numpy())  # sorted by u
    starts = np.flatnonzero(np.concatenate([[True], u[1:] != u[:-1]]))
    gmin = np.minimum.reduceat(v, starts)
    sizes = np.diff(np.append(starts, len(u)))
    m = np.minimum(np.repeat(gmin, sizes), u)
    sel = v > u
    out_u, out_m = v[sel], m[sel]
    chg = int((out_m != u[sel]).sum())
    out_u, out_m = _dedup_edges(out_u, out_m)
    c = np.zeros(len(out_u), np.int64)
    if len(c):
        c[0] = chg
    return pa.table({"u": out_u, "v": out_m, "chg": c}, schema=CC_SCHEMA)


def small_star(part: pa.Table) -> pa.Table:
    """Rows (u, v) with v < u, partitioned by u. For each node u with m = min(neighbours): link u
    and every neighbour to m. Emits both directions (the next large-star wants them)."""
    if part.num_rows == 0:
        return CC_SCHEMA.empty_table()
    upstream = int(pc.sum(part.column("chg")).as_py() or 0)  # the large-star's changes
    u, v = _dedup_edges(part.column("u").to_numpy(), part.column("v").to_numpy())
    starts = np.flatnonzero(np.concatenate([[True], u[1:] != u[:-1]]))
    sizes = np.diff(np.append(starts, len(u)))
    gmin = np.minimum.reduceat(v, starts)
    m = np.repeat(gmin, sizes)
    chg = int((sizes - 1).sum()) + upstream
    sel = v != m
    x = np.concatenate([v[sel], u[starts]])
    y = np.concatenate([m[sel], gmin])
    x, y = _dedup_edges(x, y)
    c = np.zeros(2 * len(x), np.int64)
    c[0] = chg  # never empty: every group emits at least (u, m)
    return pa.table({"u": np.concatenate([x, y]), "v": np.concatenate([y, x]), "chg": c}, schema=CC_SCHEMA)


def _sum_chg(ds) -> int:
    tot = ds.map_batches(lambda t: pa.table({"c": [int(pc.sum(t.column("chg")).as_py() or 0)]}),
                         batch_format="pyarrow", batch_size=None).take_all()
    return int(sum(r["c"] for r in tot))


def both_directions(t: pa.Table) -> pa.Table:
    """Edges (a, b) -> rows (u, v) in both directions, the connected-components input."""
    a, b = t.column("a").to_numpy(), t.column("b").to_numpy()
    return pa.table({"u": np.concatenate([a, b]), "v": np.concatenate([b, a]),
                     "chg": np.zeros(2 * t.num_rows, np.int64)}, schema=CC_SCHEMA)


def non_roots(t: pa.Table) -> pa.Table:
    return t.filter(pc.greater(t.column("u"), t.column("v"))).select(["u", "v"])


def components_in_memory(edges: pa.Table, max_rounds: int = 64) -> pa.Table:
    """connected_components on one table: the same rounds, with one partition."""
    cur = both_directions(edges)
    for _ in range(max_rounds):
        cur = small_star(large_star(cur))
        if int(pc.sum(cur.column("chg")).as_py() or 0) == 0:
            return non_roots(cur)
    raise RuntimeError("minhash_dedup: connected components did not converge")  # pragma: no cover


def connected_components(edges, num_partitions: int, tick=None, max_rounds: int = 64):
    """edges: dataset of (a, b). Returns a dataset of (u=node, v=root) for every non-root node,
    root = the smallest node of its component."""
    cur = edges.map_batches(both_directions, batch_format="pyarrow", batch_size=None)
    for _ in range(max_rounds):
        # one execution per round: large-star, shuffle, small-star (which carries the large-star's
        # change count forward), then one tiny map to read the counts
        cur = (cur.repartition(num_partitions, keys=["u"]).map_batches(large_star, batch_format="pyarrow", batch_size=None)
               .repartition(num_partitions, keys=["u"]).map_batches(small_star, batch_format="pyarrow", batch_size=None)
               .materialize())
        changed = _sum_chg(cur)
        if tick:
            tick(f"connected components round: {changed} changes")
        if changed == 0:
            break
    else:  # pragma: no cover - log2-ish rounds in theory; 64 means something is wrong
        raise RuntimeError("minhash_dedup: connected components did not converge")
    return cur.map_batches(non_roots, batch_format="pyarrow", batch_size=None)


# -- 5. keep rule ----------------------------------------------------------------------------
def node_rows_from_edges(t: pa.Table) -> pa.Table:
    cols = {"node": pa.concat_arrays([t.column("a").combine_chunks(), t.column("b").combine_chunks()]),
            "root": pa.nulls(2 * t.num_rows, pa.uint64())}
    for name, typ in _ATTRS:
        cols[name] = pa.concat_arrays([t.column(name + "_a").combine_chunks().cast(typ),
                                       t.column(name + "_b").combine_chunks().cast(typ)])
    return pa.table(cols, schema=NODE_SCHEMA)


def node_rows_from_cc(t: pa.Table) -> pa.Table:
    n = t.num_rows
    cols = {"node": t.column("u"), "root": t.column("v")}
    for name, typ in _ATTRS:
        cols[name] = pa.nulls(n, typ)
    return pa.table(cols, schema=NODE_SCHEMA)


def attach_roots(part: pa.Table) -> pa.Table:
    """Partition by node: one row per node with its root (itself when it is a root) and attributes."""
    if part.num_rows == 0:
        return NODE_SCHEMA.empty_table()
    import polars as pl

    df = pl.from_arrow(part)
    out = df.group_by("node").agg(pl.col("root").min(), pl.col("id").drop_nulls().first(),
                                  pl.col("len").drop_nulls().first(), pl.col("score").drop_nulls().first())
    out = out.with_columns(pl.coalesce(pl.col("root"), pl.col("node")).alias("root"))
    return out.select([f.name for f in NODE_SCHEMA]).to_arrow().cast(NODE_SCHEMA)


def choose_keepers(part: pa.Table, cfg: dict) -> pa.Table:
    """Partition by root: pick the survivor of each cluster by the keep rule."""
    if part.num_rows == 0:
        return DEC_SCHEMA.empty_table()
    import polars as pl

    df = pl.from_arrow(part)
    if cfg["keep"] == "longest":
        df = df.sort(["root", "len", "id"], descending=[False, True, False], nulls_last=True)
    elif cfg["keep"] == "highest":
        df = df.sort(["root", "score", "id"], descending=[False, True, False], nulls_last=True)
    else:
        df = df.sort(["root", "id"])
    kept = df.group_by("root", maintain_order=True).agg(pl.col("id").first().alias("keeper"),
                                                        pl.len().alias("dup_cluster_size"))
    df = df.join(kept, on="root")
    out = df.select(pl.col("node").alias("k"),
                    pl.when(pl.col("id") != pl.col("keeper")).then(pl.col("keeper")).otherwise(None).alias("dup_of"),
                    pl.col("keeper").alias("dup_cluster"),
                    pl.col("dup_cluster_size").cast(pl.Int64))
    return out.to_arrow().cast(DEC_SCHEMA)


# -- 6. decisions -> rows ---------------------------------------------------------------------
_DEC_CACHE: dict = {}


def _sorted_decisions(refs):
    import ray

    key = tuple(r.hex() for r in refs)
    hit = _DEC_CACHE.get(key)
    if hit is None:
        hit = _decision_lookup(ray.get(list(refs)))
        _DEC_CACHE.clear()
        _DEC_CACHE[key] = hit
    return hit


def _decision_lookup(tables: list[pa.Table]) -> tuple:
    tabs = [t for t in tables if t.num_rows]
    t = pa.concat_tables(tabs) if tabs else DEC_SCHEMA.empty_table()
    k = t.column("k").to_numpy()
    order = np.argsort(k, kind="stable")
    return k[order], t.take(pa.array(order))


def _set_outputs(batch: pa.Table, dup_of, cluster, size) -> pa.Table:
    batch = set_column(batch, "dup_of", dup_of)
    batch = set_column(batch, "dup_cluster", cluster)
    batch = set_column(batch, "dup_cluster_size", size)
    reason = pc.if_else(pc.is_valid(dup_of), pa.scalar(REASON), pa.scalar(None, pa.string()))
    if DROP_REASON in batch.column_names:
        reason = pc.coalesce(batch.column(DROP_REASON), reason)
    return set_column(batch, DROP_REASON, reason)


def apply_broadcast(batch: pa.Table, dec_refs) -> pa.Table:
    return apply_decisions(batch, _sorted_decisions(dec_refs))


def apply_decisions(batch: pa.Table, lookup: tuple) -> pa.Table:
    """The rows of `batch` with their cluster columns and drop_reason (`lookup`: _decision_lookup
    of the keep rule's decisions)."""
    keys_sorted, dec = lookup
    batch = drop_internal(batch) if len(keys_sorted) == 0 else batch
    n = batch.num_rows
    if n == 0 or len(keys_sorted) == 0:
        return _set_outputs(batch, pa.nulls(n, pa.string()), pa.nulls(n, pa.string()),
                            pa.array(np.ones(n, np.int64)))
    keys = batch.column(KEY_COL).to_numpy()
    pos = np.minimum(np.searchsorted(keys_sorted, keys), len(keys_sorted) - 1)
    hit = keys_sorted[pos] == keys
    hit &= _live(batch)
    idx = pa.array(np.where(hit, pos, 0))
    mask = pa.array(~hit)
    dup_of = pc.if_else(mask, pa.scalar(None, pa.string()), dec.column("dup_of").take(idx))
    cluster = pc.if_else(mask, pa.scalar(None, pa.string()), dec.column("dup_cluster").take(idx))
    size = pc.if_else(mask, pa.scalar(1, pa.int64()), dec.column("dup_cluster_size").take(idx))
    return _set_outputs(drop_internal(batch), dup_of, cluster, size)


def apply_joined(batch: pa.Table) -> pa.Table:
    n = batch.num_rows
    size = pc.fill_null(batch.column("dup_cluster_size"), 1) if n else pa.array([], pa.int64())
    dup_of, cluster = batch.column("dup_of"), batch.column("dup_cluster")
    batch = batch.drop_columns([c for c in (KEY_COL, BANDS_COL, "k", "dup_of", "dup_cluster", "dup_cluster_size")
                                if c in batch.column_names])
    return _set_outputs(batch, dup_of, cluster, size)


@register
class MinHashDedup(Operator):
    """Near-duplicate removal: MinHash LSH candidates, verified by exact Jaccard, clustered by
    distributed connected components; one document per cluster is kept."""

    name = "minhash_dedup"
    kind = "global"
    Params = MinHashDedupParams
    needs = frozenset({"id", "text"})
    adds = frozenset({"dup_cluster", "dup_cluster_size", "dup_of"})
    resources = Resources(num_cpus=1, batch_size=8192)
    requires = ("polars", "numpy")

    def run(self, ds, ctx):
        p = self.params
        cfg = _cfg(p)
        tick = _Timer()
        mb = dict(batch_format="pyarrow")
        # one pass over the input: rows + doc key + band keys, kept in the object store (the text
        # is read again by the verification and output maps, and never shuffled)
        # (big input blocks are first split into blocks of batch_size rows, without a shuffle, so
        # that one big block is not one task)
        ds = ds.repartition(target_num_rows_per_block=p.batch_size).map_batches(
            add_signature_columns, fn_kwargs={"cfg": cfg}, batch_size=p.batch_size, **mb).materialize()
        n_docs = ds.count()
        tick(f"signatures of {n_docs} docs")
        _check_keep_col(cfg, ds.schema().names)  # known once materialized (asking a lazy dataset runs it)
        parts = p.num_partitions or max(ctx.num_partitions(), min(512, math.ceil(n_docs / 100_000)))

        bands = ds.select_columns([KEY_COL, BANDS_COL]).map_batches(band_rows, batch_size=None, **mb)
        pairs = bands.repartition(parts, keys=["bkey"]).map_batches(
            bucket_pairs, fn_kwargs={"cfg": cfg}, batch_size=None, **mb).materialize()
        n_pairs = pairs.count()
        tick(f"{n_docs} docs -> {n_pairs} candidate pairs ({cfg['bands']}x{cfg['rows']} bands, {parts} partitions)")

        if n_pairs == 0:
            edges = None
        else:
            if n_pairs <= p.broadcast_max_rows:
                vrows = ds.map_batches(verify_rows_broadcast, fn_kwargs={"cfg": cfg, "pair_refs": pairs.to_arrow_refs()},
                                       batch_size=p.batch_size, **mb)
            else:
                docs = ds.map_batches(doc_rows_all, fn_kwargs={"cfg": cfg}, batch_size=p.batch_size, **mb)
                inc = pairs.map_batches(incidence_rows, batch_size=None, **mb)
                vrows = inc.join(docs, "inner", parts, on=("k",)).map_batches(
                    joined_to_verify_rows, fn_kwargs={"cfg": cfg}, batch_size=None, **mb)
            edges = vrows.repartition(parts, keys=["pk"]).map_batches(
                verify_pairs, fn_kwargs={"cfg": cfg}, batch_size=None, **mb).materialize()
            n_edges = edges.count()
            tick(f"{n_edges} pairs verified ({cfg['verify']})")
            if n_edges == 0:
                edges = None

        if edges is None:
            return ds.map_batches(apply_broadcast, fn_kwargs={"dec_refs": []}, batch_size=p.batch_size, **mb)

        cc = connected_components(edges, parts, tick)
        nodes = edges.map_batches(node_rows_from_edges, batch_size=None, **mb).union(
            cc.map_batches(node_rows_from_cc, batch_size=None, **mb))
        rooted = nodes.repartition(parts, keys=["node"]).map_batches(attach_roots, batch_size=None, **mb)
        decisions = rooted.repartition(parts, keys=["root"]).map_batches(
            choose_keepers, fn_kwargs={"cfg": cfg}, batch_size=None, **mb).materialize()
        tick(f"{decisions.count()} documents in clusters")

        if decisions.count() <= p.broadcast_max_rows:
            return ds.map_batches(apply_broadcast, fn_kwargs={"dec_refs": decisions.to_arrow_refs()},
                                  batch_size=p.batch_size, **mb)
        joined = ds.join(decisions, "left_outer", parts, on=(KEY_COL,), right_on=("k",))
        return joined.map_batches(apply_joined, batch_size=p.batch_size, **mb)

    def run_table(self, table: pa.Table, ctx) -> pa.Table:
        """The same plan on one table in one process, for an input small enough (the engine's
        choice): every stage is the function the distributed plan maps, given one partition,
        so the decisions, and the rows out, are the same; no shuffle starts."""
        p = self.params
        cfg = _cfg(p)
        _check_keep_col(cfg, table.column_names)
        n, size = table.num_rows, p.batch_size
        sig = pa.concat_tables([add_signature_columns(table.slice(o, size), cfg) for o in range(0, max(n, 1), size)])
        pairs = bucket_pairs(band_rows(sig.select([KEY_COL, BANDS_COL])), cfg)
        edges = verify_pairs(verify_rows(sig, cfg, _pair_lookup([pairs])), cfg) if pairs.num_rows else None
        if edges is None or edges.num_rows == 0:
            return apply_decisions(sig, _decision_lookup([]))
        nodes = pa.concat_tables([node_rows_from_edges(edges), node_rows_from_cc(components_in_memory(edges))])
        decisions = choose_keepers(attach_roots(nodes), cfg)
        return apply_decisions(sig, _decision_lookup([decisions]))


def _check_keep_col(cfg: dict, names: list[str]) -> None:
    if cfg["keep_col"] and cfg["keep_col"] not in names:
        raise ValueError(f"minhash_dedup: keep: highest:{cfg['keep_col']} but the data has no column "
                         f"{cfg['keep_col']!r} (columns: {', '.join(names)})")
