"""zip_select: ZIP diverse selection by information redundancy (global).

Paper: Yin et al. 2024, "Entropy Law: The Story Behind Data Selection and Compression Ratio"
(arXiv:2407.06645). A set whose concatenation compresses poorly carries more information; ZIP
grows such a set greedily in rounds of three stages. This is a re-implementation with the
reference's quirks fixed (README, "ZIP diverse selection"); the scores here are *conditional*
compressed sizes: ``y(c | S)`` = bytes zstd needs for candidate ``c`` when the whole selection
``S`` is its dictionary, and a candidate's score is the compression ratio of selection + candidate,
``(raw(S) + raw(c)) / (comp(S) + y(c | S))``, where ``comp(S)`` is the sum of the conditional
sizes its documents had when picked (the chain rule of compression). Lower is more diverse.

Rules, per group (``group_by`` column; the whole input when unset), groups in parallel on Ray:
1. Rows whose text is null or empty are dropped with ``zip_select:empty_text`` (an empty text
   would compress to nothing and look maximally "diverse").
2. The group is ordered by ``id``, so the result does not depend on batching, worker count or
   row order. Ties in any ranking go to the smaller id.
3. Budget: ``budget_docs``, ``budget_tokens`` (column ``tokens_column``), ``budget_bytes`` (UTF-8
   bytes of the text), each per group, or ``keep_fraction`` of each group's docs / tokens / bytes
   (``fraction_of``); ``keep_fraction: 0.5`` when none is given. A document never overshoots the
   budget: one that no longer fits is skipped and the selection stops when nothing fits.
4. Each document starts with the ratio of its text alone (``raw / zstd(text)``), a stale score.
5. Stage 1: the ``k1`` available documents with the lowest stale scores are rescored against the
   current selection (the whole of it: a zstd raw-content dictionary of the selection, window and
   hash tables sized to cover it); their stale scores are updated (a lazy greedy, as in the paper).
6. Stage 2: the ``k2`` best of them go to stage 3.
7. Stage 3: up to ``k3`` of those are added one by one, each time the best by the ratio of
   (selection + documents picked this round + candidate), i.e. conditioned on everything selected
   so far (lazy greedy: a stale score is recomputed before a document is picked; the conditional
   size given this round's picks comes from streaming those picks through a compressor that has
   the selection as dictionary, so nothing re-compresses the whole selection per candidate).
8. Stage-2 documents not picked go back to the pool with their fresh scores.
9. Kept rows get ``zip_rank`` (0-based selection order within the group) and ``zip_ratio`` (the
   score when picked); every other row is dropped with ``zip_select:not_selected``.
Stage-1 scoring of a group is split over up to ``scoring_tasks`` Ray tasks (default: the cluster's
CPUs / the number of groups, so a lone large group uses the cluster and many groups do not pay
for extra dictionaries), each with at least ``scoring_chunk`` candidates: each score depends only
on (selection, candidate), so the result is the same for any number of tasks.
``backend: zlib`` scores with the reference's zlib-9 instead (32 KB window; its state after the
selection is copied per candidate), for comparison. python-zstandard cannot copy a compressor
state, hence the dictionary.
"""
from __future__ import annotations

import math
import zlib
from typing import Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from operators.base import Operator, Params, Resources, mark_dropped, register, set_column

GROUP = "_zip_group"
SOLO = "_zip_solo"  # compressed size of the text alone
UNITS = "_zip_units"
SEP = b"\n"
NOT_SELECTED = "zip_select:not_selected"
EMPTY = "zip_select:empty_text"
BROADCAST_BYTES = 32 * 2**20


class ZipSelectParams(Params):
    budget_docs: int | None = Field(None, ge=0, description="documents to keep per group")
    budget_tokens: int | None = Field(None, ge=0, description="tokens to keep per group (needs tokens_column)")
    budget_bytes: int | None = Field(None, ge=0, description="UTF-8 text bytes to keep per group")
    keep_fraction: float | None = Field(None, gt=0.0, le=1.0,
                                        description="share of each group to keep (0.5 when no budget is given)")
    fraction_of: Literal["docs", "tokens", "bytes"] = Field("docs", description="what keep_fraction measures")
    group_by: str | None = Field(None, description="column whose values are selected independently")
    tokens_column: str = Field("n_tokens", description="token counts, for token budgets")
    k1: int = Field(10_000, ge=1, description="stage 1: candidates rescored per round")
    k2: int = Field(200, ge=1, description="stage 2: best candidates passed to stage 3")
    k3: int = Field(100, ge=1, description="stage 3: documents added per round")
    backend: Literal["zstd", "zlib"] = Field(
        "zstd", description="zstd: dictionary = the whole selection; zlib: the reference's zlib-9 "
                            "(32 KB window), state copied per candidate (for comparison)")
    scoring_chunk: int = Field(2_500, ge=1, description="least stage-1 candidates per Ray scoring task")
    scoring_tasks: int | None = Field(None, ge=1, description="Ray tasks per group for stage-1 scoring "
                                      "(default: cluster CPUs / groups)")

    @model_validator(mode="before")
    @classmethod
    def _default_budget(cls, data):
        if isinstance(data, dict):
            budgets = [k for k in ("budget_docs", "budget_tokens", "budget_bytes", "keep_fraction")
                       if data.get(k) is not None]
            if len(budgets) > 1:
                raise ValueError(f"give one budget, not {' and '.join(budgets)}")
            if not budgets:
                data = {**data, "keep_fraction": 0.5}
        return data

    @model_validator(mode="after")
    def _stages(self):
        if not self.k3 <= self.k2 <= self.k1:
            raise ValueError(f"stages must narrow: k3 ({self.k3}) <= k2 ({self.k2}) <= k1 ({self.k1})")
        return self

    @property
    def unit(self) -> str:
        if self.budget_tokens is not None:
            return "tokens"
        if self.budget_bytes is not None:
            return "bytes"
        if self.budget_docs is not None:
            return "docs"
        return self.fraction_of

    def budget_for(self, units: np.ndarray) -> int:
        for b in (self.budget_docs, self.budget_tokens, self.budget_bytes):
            if b is not None:
                return int(b)
        # floor, with a guard against 0.1 * 30 = 2.9999999999999996
        return int(math.floor(self.keep_fraction * float(units.sum()) + 1e-9))


# -- compression ----------------------------------------------------------------------------
def zstd_params(dict_size: int):
    """dfast with hash tables and window sized to the dictionary (the selection), so a match
    anywhere in the selection is found; level presets keep ~128K-entry tables and a few MB of
    window, which forget all but the latest part of a large selection. Depends on the size only,
    so every worker builds the same compressor."""
    import zstandard as zstd

    log = math.ceil(math.log2(dict_size + 1)) if dict_size else 0
    hash_log = min(24, max(17, log))
    return zstd.ZstdCompressionParameters(
        window_log=min(30, max(20, log + 1)), hash_log=hash_log, chain_log=hash_log, search_log=1,
        min_match=6, target_length=0, strategy=zstd.STRATEGY_DFAST, write_content_size=False,
        write_checksum=False, write_dict_id=False)


def compressor(selection: bytes):
    """A compressor whose dictionary is the whole selection (raw content, digested once)."""
    import zstandard as zstd

    params = zstd_params(len(selection))
    if not selection:
        return zstd.ZstdCompressor(compression_params=params)
    d = zstd.ZstdCompressionDict(selection, dict_type=zstd.DICT_TYPE_RAWCONTENT)
    d.precompute_compress(compression_params=params)
    return zstd.ZstdCompressor(compression_params=params, dict_data=d)


class ZstdContext:
    """The selection as a zstd dictionary (seen whole); this round's picks streamed after it."""

    def __init__(self, selection: bytes):
        self.comp, self.prefix = compressor(selection), b""

    def size(self, text: bytes) -> int:
        if not self.prefix:
            return len(self.comp.compress(text))
        import zstandard as zstd

        # no compressor state can be copied in python-zstandard: this round's picks (at most k3
        # documents) are streamed again before the candidate; the selection is never recompressed
        o = self.comp.compressobj()
        o.compress(self.prefix)
        o.flush(zstd.COMPRESSOBJ_FLUSH_BLOCK)
        return len(o.compress(text)) + len(o.flush())

    def add(self, text: bytes) -> None:
        self.prefix += text + SEP


class ZlibContext:
    """zlib-9, the reference's compressor (32 KB window: only the selection's tail is seen): the
    state after the selection, copied per candidate."""

    def __init__(self, selection: bytes):
        self.obj = zlib.compressobj(9)
        if selection:
            self.obj.compress(selection)
            self.obj.flush(zlib.Z_SYNC_FLUSH)

    def size(self, text: bytes) -> int:
        c = self.obj.copy()
        return len(c.compress(text)) + len(c.flush())

    def add(self, text: bytes) -> None:
        self.obj.compress(text + SEP)
        self.obj.flush(zlib.Z_SYNC_FLUSH)


CONTEXTS = {"zstd": ZstdContext, "zlib": ZlibContext}


def conditional_sizes(selection: bytes, texts: list[bytes], backend: str = "zstd") -> np.ndarray:
    """y(c | selection) for each text."""
    ctx = CONTEXTS[backend](selection)
    return np.fromiter((ctx.size(t) for t in texts), dtype=np.int64, count=len(texts))


def solo_sizes(texts, backend: str = "zstd") -> np.ndarray:
    """Compressed size of each text alone (0 for null/empty)."""
    ctx = CONTEXTS[backend](b"")
    return np.fromiter((ctx.size(t) if t else 0 for t in texts), dtype=np.int64, count=len(texts))


# -- the selection of one group (plain code: no Ray needed) -----------------------------------
Scorer = Callable[[bytes, np.ndarray], np.ndarray]


def select_group(texts: list[bytes], solo: np.ndarray, units: np.ndarray, budget: int,
                 k1: int, k2: int, k3: int, scorer: Scorer | None = None,
                 backend: str = "zstd") -> tuple[np.ndarray, np.ndarray]:
    """ZIP over one group. Returns (indices in selection order, ratio of each when picked).

    `texts` are non-empty UTF-8 bytes in canonical (id) order, `solo` their compressed sizes
    alone, `units` what each costs against `budget` (1 per doc, tokens or bytes). `scorer(selection,
    candidates)` returns y(c | selection) for candidate indices (default: in this process)."""
    n = len(texts)
    raw = np.fromiter((len(t) for t in texts), dtype=np.int64, count=n)
    units = np.asarray(units, dtype=np.int64)
    if scorer is None:
        def scorer(selection: bytes, cand: np.ndarray) -> np.ndarray:
            return conditional_sizes(selection, [texts[i] for i in cand], backend)
    stale = raw / np.maximum(solo, 1)  # ratio of the document alone
    avail = units <= budget
    remaining = int(budget)
    picked: list[int] = []
    ratios: list[float] = []
    selection_parts: list[bytes] = []
    raw_sel = comp_sel = 0.0  # raw(S), comp(S) (sum of conditional sizes at pick time)
    index = np.arange(n)
    while remaining > 0:
        avail &= units <= remaining
        pool = index[avail]
        if not len(pool):
            break
        # stage 1: the k1 lowest stale scores (ties: smaller index), rescored against S
        cand = pool[np.lexsort((pool, stale[pool]))[:k1]]
        selection = b"".join(selection_parts)
        y = solo[cand] if not selection else scorer(selection, cand).astype(np.int64)
        fresh = (raw_sel + raw[cand]) / (comp_sel + y)
        stale[cand] = fresh
        # stage 2: the k2 best
        top = np.lexsort((cand, fresh))[:k2]
        # stage 3: lazy greedy over them, conditioned on S and this round's picks. A pick makes
        # the others' contexts longer, so their conditional sizes can only shrink: the ratio with
        # the size last computed is a lower bound of the fresh one (evaluated with the current
        # raw(S), comp(S)). The best bound is recomputed until the best is fresh, then picked.
        context = None
        cand3, x3, y3 = cand[top], raw[cand[top]], y[top].astype(np.float64)
        seen = np.zeros(len(top), dtype=np.int64)  # version of the context y3 was computed in
        alive = np.ones(len(top), dtype=bool)
        version, round_picks = 0, 0
        while round_picks < k3 and remaining > 0 and alive.any():
            bound = np.where(alive, (raw_sel + x3) / (comp_sel + y3), np.inf)
            j = int(np.lexsort((cand3, bound))[0])  # ties: smaller index
            i = int(cand3[j])
            if units[i] > remaining:
                alive[j] = avail[i] = False  # never fits again: the remaining budget only shrinks
                continue
            if seen[j] != version:  # stale: rescore given S + this round's picks, compare again
                if context is None:
                    context = CONTEXTS[backend](selection)
                    for k in picked[len(picked) - round_picks:]:
                        context.add(texts[k])
                y3[j] = context.size(texts[i])
                seen[j] = version
                stale[i] = (raw_sel + x3[j]) / (comp_sel + y3[j])
                continue
            picked.append(i)
            ratios.append(float(bound[j]))
            alive[j] = avail[i] = False
            remaining -= int(units[i])
            raw_sel += raw[i] + len(SEP)
            comp_sel += y3[j]
            if context is not None:
                context.add(texts[i])
            selection_parts.append(texts[i] + SEP)
            version += 1
            round_picks += 1
    return np.asarray(picked, dtype=np.int64), np.asarray(ratios, dtype=np.float64)


# -- Ray: stage-1 scoring spread over tasks ----------------------------------------------------
def _score_chunk(selection: bytes, texts: pa.Array, cand: np.ndarray, backend: str) -> np.ndarray:
    return conditional_sizes(selection, texts.take(pa.array(cand)).to_pylist(), backend)


def ray_scorer(texts: list[bytes], chunk: int, tasks: int, backend: str) -> Scorer | None:
    """A scorer that splits the candidates over up to `tasks` Ray tasks of at least `chunk` each
    (None outside Ray, or when a group never has more than one chunk of candidates)."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        return None
    if not ray.is_initialized() or len(texts) <= chunk or tasks <= 1:
        return None
    texts_ref = ray.put(pa.array(texts, pa.large_binary()))
    remote = ray.remote(num_cpus=1)(_score_chunk)

    def score(selection: bytes, cand: np.ndarray) -> np.ndarray:
        if len(cand) <= chunk:
            return conditional_sizes(selection, [texts[i] for i in cand], backend)
        sel_ref = ray.put(selection)
        parts = np.array_split(cand, min(tasks, len(cand) // chunk))
        return np.concatenate(ray.get([remote.remote(sel_ref, texts_ref, p, backend) for p in parts]))

    return score


# -- batch-level helpers (run on the workers) --------------------------------------------------
def _prepare(batch: pa.Table, p: ZipSelectParams) -> pa.Table:
    """(id, text, group, units, solo size) for the non-empty rows of a batch."""
    text = batch.column("text")
    nonempty = pc.fill_null(pc.greater(pc.binary_length(text), 0), False)
    batch = batch.filter(nonempty)
    text = batch.column("text")
    if p.group_by:
        group = pc.fill_null(pc.cast(batch.column(p.group_by), pa.string()), "")
    else:
        group = pa.array([""] * batch.num_rows, pa.string())
    if p.unit == "tokens":
        tok = batch.column(p.tokens_column)
        if tok.null_count:
            raise ValueError(f"zip_select: column {p.tokens_column!r} has {tok.null_count} null token counts; "
                             "a token budget needs a count for every document")
        units = pc.cast(tok, pa.int64())
    elif p.unit == "bytes":
        units = pc.cast(pc.binary_length(text), pa.int64())
    else:
        units = pa.array(np.ones(batch.num_rows, dtype=np.int64))
    binary = text.cast(pa.large_binary()).to_pylist()
    return pa.table({"id": pc.cast(batch.column("id"), pa.string()), "text": text.cast(pa.large_string()),
                     GROUP: group, UNITS: units, SOLO: pa.array(solo_sizes(binary, p.backend))})


def _select_table(group: pa.Table, p: ZipSelectParams, tasks: int = 1) -> pa.Table:
    """One group's rows (from _prepare) -> (id, zip_rank, zip_ratio) of the selected ones."""
    group = group.sort_by("id")
    texts = group.column("text").cast(pa.large_binary()).to_pylist()
    units = group.column(UNITS).to_numpy()
    scorer = ray_scorer(texts, p.scoring_chunk, tasks, p.backend) if tasks > 1 else None
    order, ratios = select_group(texts, group.column(SOLO).to_numpy(), units, p.budget_for(units),
                                 p.k1, p.k2, p.k3, scorer, p.backend)
    return pa.table({"id": group.column("id").take(pa.array(order, pa.int64())),
                     "zip_rank": pa.array(np.arange(len(order), dtype=np.int64)),
                     "zip_ratio": pa.array(ratios, pa.float64())})


def _select_on_worker(group: pa.Table, p: ZipSelectParams, tasks: int) -> pa.Table:
    return _select_table(group, p, tasks)


def _mark(batch: pa.Table, chosen: pa.Table) -> pa.Table:
    ids = pc.cast(batch.column("id"), pa.string())
    idx = pc.index_in(ids, value_set=chosen.column("id").combine_chunks())
    batch = set_column(batch, "zip_rank", pc.take(chosen.column("zip_rank").combine_chunks(), idx))
    batch = set_column(batch, "zip_ratio", pc.take(chosen.column("zip_ratio").combine_chunks(), idx))
    empty = pc.fill_null(pc.equal(pc.binary_length(batch.column("text")), 0), True)
    batch = mark_dropped(batch, empty, EMPTY)
    return mark_dropped(batch, pc.is_null(idx), NOT_SELECTED)


def _mark_broadcast(batch: pa.Table, refs) -> pa.Table:
    import ray

    return _mark(batch, pa.concat_tables(ray.get(list(refs))) if refs else _CHOSEN_SCHEMA.empty_table())


def _mark_joined(batch: pa.Table) -> pa.Table:
    chosen = batch.select(["id", "zip_rank", "zip_ratio"]).filter(pc.is_valid(batch.column("zip_rank")))
    return _mark(batch.drop_columns(["zip_rank", "zip_ratio"]), chosen)


# a schema, not an empty table: building any table at import makes pyarrow import pandas
# (~0.25 s), and every process that loads the operator registry imports this module (the
# driver, to check a recipe: tests/pipeline/test_executor.py)
_CHOSEN_SCHEMA = pa.schema([("id", pa.string()), ("zip_rank", pa.int64()), ("zip_ratio", pa.float64())])


@register
class ZipSelect(Operator):
    """ZIP diverse selection (Entropy Law): keep, per group, a budget of documents chosen
    greedily so that their concatenation compresses poorly (K1/K2/K3 stages, zstd conditional
    ratios over the whole selection). Adds `zip_rank`, `zip_ratio`; the rest is dropped."""

    name = "zip_select"
    kind = "global"
    Params = ZipSelectParams
    needs = frozenset({"id", "text"})
    adds = frozenset({"zip_rank", "zip_ratio"})
    requires = ("zstandard",)
    resources = Resources(num_cpus=1, batch_size=4096)

    def _check_columns(self, names) -> None:
        p = self.params
        for col, why in ((p.group_by, "group_by"), (p.tokens_column if p.unit == "tokens" else None, "tokens_column")):
            if col is not None and col not in names:
                raise ValueError(f"zip_select: {why} column {col!r} is not in the input (columns: {', '.join(names)})")

    def select(self, table: pa.Table) -> pa.Table:
        """In-process (notebook) version of run(): the table with zip_rank, zip_ratio, drop_reason."""
        self._check_columns(table.column_names)
        prepared = _prepare(table, self.params)
        chosen = [_select_table(prepared.filter(pc.equal(prepared.column(GROUP), g)), self.params)
                  for g in sorted(set(prepared.column(GROUP).to_pylist()))]
        return _mark(table, pa.concat_tables([_CHOSEN_SCHEMA.empty_table(), *chosen]))

    def _layout(self, ds, ctx) -> tuple[int, int]:
        """(shuffle partitions, stage-1 scoring tasks per group). Partitions: one per ~64 MB of
        input, but at least one per group up to twice the workers, so groups run side by side;
        tasks: the workers left per group. Only the number of groups reaches the driver."""
        import ray

        p = self.params
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if ctx.max_workers:
            cpus = min(cpus, ctx.max_workers)
        groups = len(ds.unique(p.group_by)) if p.group_by else 1
        parts = max(ctx.num_partitions(nbytes=ds.size_bytes()), min(groups, 2 * cpus)) if p.group_by else 1
        return parts, p.scoring_tasks or max(1, cpus // max(groups, 1))

    def run(self, ds, ctx):
        p = self.params
        self._check_columns(ds.schema().names)
        bs = self.resources.batch_size
        prepared = ds.map_batches(_prepare, fn_args=(p,), batch_format="pyarrow", batch_size=bs)
        parts, tasks = self._layout(ds, ctx)
        chosen = (prepared.groupby(GROUP, num_partitions=parts)
                  .map_groups(_select_on_worker, fn_args=(p, tasks), batch_format="pyarrow")
                  .materialize())
        if chosen.size_bytes() <= BROADCAST_BYTES:
            # the chosen ids go to every worker through the object store (never the driver)
            return ds.map_batches(_mark_broadcast, fn_args=(chosen.to_arrow_refs(),), batch_format="pyarrow",
                                  batch_size=bs)
        ds = ds.map_batches(_string_ids, batch_format="pyarrow", batch_size=bs)
        joined = ds.join(chosen, join_type="left_outer", num_partitions=ctx.num_partitions(nbytes=ds.size_bytes()),
                         on=("id",))
        return joined.map_batches(_mark_joined, batch_format="pyarrow", batch_size=bs)


def _string_ids(batch: pa.Table) -> pa.Table:
    return set_column(batch, "id", pc.cast(batch.column("id"), pa.string()))
