"""Runs a validated recipe, on Ray or, for a small local run, on plain worker processes
(pipeline.pools; `Executor.choose_backend` says which). With pipeline.pools, the only module
that knows about Ray scheduling.

A segment is what runs to write one materialized step (a global step, a sink or a fan-out
point): its non-materialized ancestors. When a segment's map/filter steps form a chain from one
input (the reader or a written step) they run fused, as datatrove runs a pipeline per task: a
pool of `SegmentWorker` actors (one per allowed CPU, all started at once, each holding every
operator of the chain set up once) takes work units (a Parquet row group or an input file),
reads them and passes each batch through every step in turn, routing each step's rejected rows
and ledger record right there; the kept rows stay in the object store until the same actors
write them as deterministic shards (pipeline.shards). The pool lives for the whole run (each
segment reconfigures it). A global step then runs on those rows: up to `in_memory_bytes()` of
them in one table on a pool worker (`Operator.run_table`), else as a `ray.data.Dataset` through
its distributed plan (the pool is released for it; a local run switches to Ray there). The pool
is Ray actors, or, when nothing of the run needs Ray, worker processes of pipeline.pools.LocalPool
running the same SegmentWorker code (their kept rows in spill files instead of the object
store), the same bytes out. Other shapes (a union of several inputs)
run as one Ray Data `map_batches` stage per step. Written steps get a `_COMPLETE.json` marker holding the hash of
the step's recipe slice and its inputs: a rerun skips complete steps and a crashed run resumes
from the last one written.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from operators.base import DROP_REASON, RunContext
from pipeline import dag
from pipeline.dag import SOURCE
from pipeline.io import (_parquet_file, file_keys, input_units, read_input, read_step_output, read_unit, text_bytes,
                         write_dataset)
from pipeline.pools import LocalPool, RayPool, fetch, local_cpus, requested_executor
from pipeline.recipe import LoadedRecipe, expand_paths
from pipeline.runtime import init_ray, ray_data
from pipeline.shards import kept_refs, shard_count, summarize, table_bytes, write_empty, write_shard_refs
from pipeline.stats import (LEDGER, STATS, Display, Progress, batch_key, check_invariants, collect,
                            format_step_line, ledger_record)
from pipeline.storage import Store

MARKER = "_COMPLETE.json"


def in_memory_bytes() -> int:
    """Inputs up to this size go through a global step's in-memory path (Operator.run_table) on
    one warm worker instead of a distributed Ray Data plan, whose shuffles cost seconds each
    whatever the size. GRISTMILL_IN_MEMORY_MB sets it (0: always distributed)."""
    return int(float(os.environ.get("GRISTMILL_IN_MEMORY_MB", "256")) * 2**20)


# -- what runs on the workers ------------------------------------------------------------
def route(out: pa.Table, step_id: str, store_uri: str, write_rejected: bool, docs_in: int,
          bytes_in: int, busy_s: float, key: str, counters: dict | None = None,
          started: float | None = None) -> pa.Table:
    """Split a processed batch: rejected rows to rejected/<step>/, a ledger record to
    _ledger/<step>/, kept rows (without drop_reason) returned to the next step."""
    store = Store(store_uri)
    if DROP_REASON in out.column_names:
        dropped = pc.is_valid(out.column(DROP_REASON))
        rejected = out.filter(dropped)
        kept = out.filter(pc.invert(dropped)).drop_columns([DROP_REASON])
    else:
        rejected, kept = None, out
    if rejected is not None and rejected.num_rows and write_rejected:
        store.write_table(f"rejected/{step_id}/{key}.parquet", rejected)
    store.write_json(f"{LEDGER}/{step_id}/{key}.json",
                     ledger_record(docs_in, bytes_in, kept, rejected, busy_s, counters,
                                   started=started, ended=time.time()))
    return kept


class StepRunner:
    """One map/filter step on a batch (also used, with no operator, to route what a reader or a
    global step produced). As a callable class it runs in a Ray actor: setup() once per actor."""

    def __init__(self, step_id: str, op_cls, params, store_uri: str, write_rejected: bool = True):
        self.step_id, self.store_uri, self.write_rejected = step_id, store_uri, write_rejected
        self.op = op_cls(params) if op_cls is not None else None
        if self.op is not None:
            self.op.ensure_setup()

    def __call__(self, batch: pa.Table, read_s: float = 0.0) -> pa.Table:
        """``read_s``: the time it took to read the batch, for the reader's own step (busy time
        is work done for the step, and a reader decompresses and parses)."""
        t0, started = time.perf_counter() - read_s, time.time() - read_s
        docs_in, bytes_in = batch.num_rows, text_bytes(batch)
        out, counters = batch, None  # routing only (no operator): the rows were produced upstream
        if self.op is not None:
            out = self.op.process(batch)
            if out.num_rows != docs_in and not (self.op.generates and out.num_rows > docs_in):
                raise RuntimeError(f"step {self.step_id!r} ({self.op.name}) returned {out.num_rows} rows for "
                                   f"{docs_in}: filters mark rows with drop_reason instead of removing them")
            counters = self.op.counters(out) or None
        # the ledger key comes from the input ids: a generating step's output ids are new rows
        ids = batch.column("id")
        if self.op is None and DROP_REASON in batch.column_names:
            # a reader's batch may repeat another's ids: the repeats are quarantined, and their
            # drop_reason names their position, which keeps the two batches' keys apart
            ids = pc.binary_join_element_wise(pc.cast(ids, pa.string()),
                                              pc.fill_null(batch.column(DROP_REASON), ""), "\x1f")
        key = batch_key(ids)
        return route(out, self.step_id, self.store_uri, self.write_rejected, docs_in, bytes_in,
                     time.perf_counter() - t0, key, counters, started)


def select_present(batch: pa.Table, cols: list[str]) -> pa.Table:
    """A union's columns: those every input is known to have, where the rows have them (a reader
    does not invent all-null columns for fields a file lacks)."""
    return batch.select([c for c in cols if c in batch.column_names])


_TASK_RUNNERS: dict[tuple, StepRunner] = {}


def run_step_task(batch: pa.Table, step_id: str, op_cls, params, store_uri: str, write_rejected: bool) -> pa.Table:
    """Task (non-actor) version: one runner per worker process, reused across batches."""
    k = (step_id, store_uri, id(op_cls), repr(params))
    runner = _TASK_RUNNERS.get(k)
    if runner is None:
        runner = _TASK_RUNNERS[k] = StepRunner(step_id, op_cls, params, store_uri, write_rejected)
    return runner(batch)


def _table_info(table: pa.Table | None) -> dict:
    return {"rows": 0 if table is None else table.num_rows, "bytes": 0 if table is None else table_bytes(table),
            "schema": None if table is None else table.schema}


class SegmentWorker:
    """Ray actor running a fused chain of steps over work units (see the module docstring).

    `configure` sets each segment's chain: `steps` are (step_id, operator class or None, params, write_rejected, batch_size); a step
    without an operator routes what the reader produced (its quarantined rows). `source` says
    how to read a unit: {"kind": "input", "spec": InputSpec, "duplicates": DuplicateIds} or
    {"kind": "parquet", "batch_rows": n}.
    """

    hold = None  # what kept rows become before they are returned (a local pool spills them to a file)

    def __init__(self) -> None:
        from pipeline.runtime import keep_freed_memory

        keep_freed_memory()  # a worker process's first batches as fast as its later ones

    def configure(self, steps: list[tuple], store_uri: str, source: dict) -> None:
        """Set up this segment's chain (operators load their models here). A run keeps its pool
        from segment to segment, so only the first segment pays for the worker processes."""
        self.runners = []  # the previous segment's operators go first
        self.runners = [(StepRunner(sid, cls, params, store_uri, wr), bs) for sid, cls, params, wr, bs in steps]
        self.source, self.store_uri = source, store_uri

    def ready(self) -> bool:
        return True

    def _batches(self, unit):
        """The unit's batches. A unit is (part, k, K): the k-th of every K batches of a file or
        row group (K > 1 only when there are fewer parts than workers: each reads the part and
        processes its share, so one file still keeps every worker busy)."""
        part, k, every = unit
        for i, batch in enumerate(self._read(part)):
            if i % every == k:
                yield batch

    def _read(self, part):
        if self.source["kind"] == "input":
            yield from read_unit(self.source["spec"], part, self.source["duplicates"])
            return
        path, row_groups = part
        pf = _parquet_file(path)
        for rb in pf.iter_batches(batch_size=self.source["batch_rows"], row_groups=row_groups):
            yield pa.Table.from_batches([rb])

    def run_unit(self, unit) -> tuple[pa.Table | None, dict]:
        """Every batch of the unit through every step; returns (kept rows, per-step counts)."""
        counts = {r.step_id: [0, 0, 0.0] for r, _ in self.runners}  # docs in, docs out, busy s
        parts = []
        batches = self._batches(unit)
        while True:
            t_read = time.perf_counter()
            cur = next(batches, None)
            if cur is None:
                break
            t_read = time.perf_counter() - t_read
            for runner, size in self.runners:
                if cur.num_rows == 0:
                    break
                t0 = time.perf_counter()
                c = counts[runner.step_id]
                c[0] += cur.num_rows
                if runner.step_id == SOURCE:  # the recipe's reader: reading is its work
                    c[2] += t_read
                    cur = runner(cur, read_s=t_read)
                elif cur.num_rows > size:  # the operator asked for smaller batches
                    cur = pa.concat_tables([runner(cur.slice(o, size)) for o in range(0, cur.num_rows, size)],
                                           promote_options="default")
                else:
                    cur = runner(cur)
                c[1] += cur.num_rows
                c[2] += time.perf_counter() - t0
            if cur.num_rows:
                parts.append(cur)
        table = None
        if parts:
            table = pa.concat_tables(parts, promote_options="default") if len(parts) > 1 else parts[0]
        info = {"counts": counts, **_table_info(table)}
        return (self.hold(table) if self.hold else table), info

    def run_global(self, refs: list, step_id: str, op_cls, params, ctx: RunContext, write_rejected: bool,
                   schema: pa.Schema) -> tuple[pa.Table, dict]:
        """A global step's in-memory path (Operator.run_table) on this warm worker: every input
        row in one table; its output routed as the Ray Data path routes it (ledger, rejected)."""
        tables = fetch(refs)
        table = pa.concat_tables(tables, promote_options="default") if tables else schema.empty_table()
        op = op_cls(params)
        op.ensure_setup()
        kept = StepRunner(step_id, None, None, self.store_uri, write_rejected)(op.run_table(table, ctx))
        info = _table_info(kept)
        return (self.hold(kept) if self.hold else kept), info

    def write_shard(self, refs: list, shard: int, n: int, store_uri: str, rel_dir: str) -> dict:
        return write_shard_refs(refs, shard, n, store_uri, rel_dir)

    # the input's id pre-pass runs on the pool before any unit (pipeline.unique_ids)
    def scan_file(self, *args):
        from pipeline.unique_ids import scan_file

        return scan_file(*args)

    def bucket_duplicates(self, *tables):
        from pipeline.unique_ids import bucket_duplicates

        return bucket_duplicates(*tables)

    def write_duplicates(self, *args):
        from pipeline.unique_ids import write_duplicates

        return write_duplicates(*args)

    def use_duplicates(self, duplicates) -> None:
        self.source["duplicates"] = duplicates


# -- the driver ------------------------------------------------------------------------------
@dataclass
class RunOptions:
    output: str
    address: str | None = None
    max_workers: int | None = None  # cap on parallel tasks/actors per step (None: all CPUs)
    resume: bool = True
    progress: bool = True
    quiet: bool = False
    progress_every: float = 10.0  # seconds between plain progress lines when not on a terminal
    term: object = None  # where our own lines and the live display go (None: sys.stderr)
    executor: str | None = None  # auto | ray | local (None: GRISTMILL_EXECUTOR, else auto)
    log_path: str | None = None  # the CLI's log file: local workers write their own output there


class Executor:
    def __init__(self, loaded: LoadedRecipe, options: RunOptions):
        self.loaded, self.opt = loaded, options
        self.steps = loaded.recipe.steps
        self.kinds = {s.id: loaded.operators[s.id].kind for s in self.steps}
        self.mats = dag.materialized(self.steps, self.kinds)
        self.store = Store(options.output)
        self._dups = None  # the id pre-pass, run when a segment first reads the input
        self._pool = None  # SegmentWorkers (pipeline.pools), kept from segment to segment
        self._pool_resources: tuple = ()
        self.local = False  # True: this run starts no Ray (see choose_backend)
        self.executors: set[str] = set()  # what ran its segments: {"local"}, {"ray"} or both
        self.unique_ids: dict | None = None  # its summary, for stats.json

    @property
    def term(self):
        return self.opt.term or sys.stderr

    def say(self, msg: str) -> None:
        if not self.opt.quiet:
            print(msg, file=self.term, flush=True)

    def _display(self, seg: list[str], total_units: int | None = None) -> Display:
        return Display(seg, file=self.term, enabled=self.opt.progress and not self.opt.quiet,
                       total_units=total_units, plain_every=self.opt.progress_every)

    def _concurrency(self, res) -> int | None:
        caps = [c for c in (res.concurrency, self.opt.max_workers) if c]
        return min(caps) if caps else None

    # -- Ray Data path (unions; a global step's own work) ---------------------------------
    def _apply(self, ds, step_id: str):
        cls = self.loaded.operators[step_id]
        params = self.loaded.params[step_id]
        spec = self.loaded.step(step_id)
        res = self.loaded.resources[step_id]
        common = dict(batch_format="pyarrow", batch_size=res.batch_size, num_cpus=res.num_cpus,
                      zero_copy_batch=False)
        if res.num_gpus:
            common["num_gpus"] = res.num_gpus
        if cls.kind == "global":
            # a barrier: its input is computed once (run() may read it several times)
            return self._route(cls(params).run(ds.materialize(), self._ctx(step_id)), step_id, spec.write_rejected)
        if res.actor:
            # a pool of the allowed size from the start (an autoscaling pool starts at one actor
            # and grows only after its queue backs up, which a short run never sees)
            size = self._concurrency(res) or max(1, int(self._cluster_cpus() // max(res.num_cpus, 0.01)))
            return ds.map_batches(StepRunner, fn_constructor_args=(step_id, cls, params, self.store.uri,
                                                                    spec.write_rejected),
                                  compute=ray_data().ActorPoolStrategy(min_size=size, max_size=size), **common)
        return ds.map_batches(run_step_task, fn_args=(step_id, cls, params, self.store.uri, spec.write_rejected),
                              compute=ray_data().TaskPoolStrategy(size=self._concurrency(res)), **common)

    def _ctx(self, step_id: str) -> RunContext:
        return RunContext(step_id=step_id, output_dir=self.opt.output, seed=self.loaded.recipe.seed,
                          max_workers=self.opt.max_workers)

    def _in_memory(self, step_id: str, nbytes: int) -> bool:
        return self.loaded.operators[step_id].has_table_path() and nbytes <= in_memory_bytes()

    def _route(self, ds, step_id: str, write_rejected: bool):
        """Route rows produced upstream (by a reader or a global step): a light task per block."""
        return ds.map_batches(run_step_task, fn_args=(step_id, None, None, self.store.uri, write_rejected),
                              batch_format="pyarrow", batch_size=None, num_cpus=0.25, zero_copy_batch=False,
                              compute=ray_data().TaskPoolStrategy(size=self.opt.max_workers))

    def _cluster_cpus(self) -> float:
        if self.local:
            return float(local_cpus())
        import ray

        return float(ray.cluster_resources().get("CPU", 1))

    def _source(self):
        spec = self.loaded.recipe.input
        return self._route(read_input(spec, self.files, self.opt.max_workers, self._duplicate_ids()), SOURCE, True)

    def _duplicate_ids(self, pool: list | None = None):
        """The input's id pre-pass (pipeline.unique_ids), run once, when a segment first reads
        the input (on that segment's ``pool`` of SegmentWorkers when it has one); reused from
        an earlier run on the same inputs."""
        from pipeline.unique_ids import CHECKED_FORMATS, NONE, check_unique_ids

        if self._dups is None:
            spec = self.loaded.recipe.input
            if getattr(spec, "unique_ids", "check") == "trust" or spec.format not in CHECKED_FORMATS:
                self._dups = NONE
                return self._dups
            self._dups, summary = check_unique_ids(spec, self.files, file_keys(self.files), self.store,
                                                   self.loaded.step_hash(SOURCE), self.opt.resume,
                                                   self._cluster_cpus(), pool)
            self.unique_ids = summary
            if summary["reused"]:
                self.say(f"[gristmill] ids: checked by an earlier run ({summary['duplicates']} repeated)")
            else:
                self.say(f"[gristmill] ids: {summary['ids']} given ids checked in {summary['wall_s']:.2f} s, "
                         f"{summary['duplicates']} repeated (quarantined as input:duplicate_id)")
        return self._dups

    def _plan(self, step_id: str, target: str):
        """Lazy dataset of `step_id`'s output: materialized steps other than the target are read
        back from disk; everything else is composed into one streaming plan."""
        if step_id == SOURCE:
            return self._source()
        if step_id != target and step_id in self.mats:
            return read_step_output(self.store, step_id)
        ups = self.loaded.inputs_of(step_id)
        parts = [self._plan(u, target) for u in ups]
        if len(parts) > 1:  # a union keeps the columns every input is known to have
            cols = sorted(set.intersection(*[self._columns(u) for u in ups]))
            parts = [p.map_batches(select_present, fn_args=(cols,), batch_format="pyarrow", batch_size=None,
                                   zero_copy_batch=True) for p in parts]
            ds = parts[0].union(*parts[1:])
        else:
            ds = parts[0]
        return self._apply(ds, step_id)

    def _columns(self, step_id: str) -> set[str]:
        return self.loaded.source_columns if step_id == SOURCE else self.loaded.columns[step_id]

    # -- fused path ------------------------------------------------------------------------
    def _chain_of(self, target: str) -> tuple[str, list[str]] | None:
        """(input, map/filter steps in order) when `target`'s segment is one chain from one input
        (the reader or a written step), the target itself possibly global; else None."""
        chain: list[str] = []
        cur = target
        if self.kinds[target] == "global":
            ups = self.loaded.inputs_of(target)
            if len(ups) != 1:
                return None
            cur = ups[0]
        while True:
            if cur == SOURCE or (cur in self.mats and cur != target):
                return cur, list(reversed(chain))
            if self.kinds[cur] == "global":
                return None
            chain.append(cur)
            ups = self.loaded.inputs_of(cur)
            if len(ups) != 1:
                return None
            cur = ups[0]

    def _start_pool(self, input_id: str, chain: list[str]):
        """Work units and a pool of SegmentWorkers for the chain, all started at once."""
        steps = []
        if input_id == SOURCE:
            source = {"kind": "input", "spec": self.loaded.recipe.input, "duplicates": None}
            units = input_units(self.loaded.recipe.input, self.files)
            steps.append((SOURCE, None, None, True, 1 << 62))
        else:
            res0 = self.loaded.resources[chain[0]] if chain else None
            source = {"kind": "parquet", "batch_rows": res0.batch_size if res0 else 1024}
            units = []
            for p in self.store.list(input_id, ".parquet"):
                path = self.store.full(p)
                n_rg = _parquet_file(path).metadata.num_row_groups
                units += [(path, [rg]) for rg in range(n_rg)] or [(path, [])]
        for sid in chain:
            res = self.loaded.resources[sid]
            steps.append((sid, self.loaded.operators[sid], self.loaded.params[sid],
                          self.loaded.step(sid).write_rejected, res.batch_size))
        ress = [self.loaded.resources[s] for s in chain]
        num_cpus = max([r.num_cpus for r in ress] + [1.0])
        num_gpus = max([r.num_gpus for r in ress] + [0.0])
        size = max(1, int(self._cluster_cpus() // num_cpus))
        if num_gpus:
            import ray

            size = min(size, max(1, int(ray.cluster_resources().get("GPU", 0) // num_gpus)))
        caps = [c for c in [r.concurrency for r in ress] + [self.opt.max_workers] if c]
        size = max(1, min([size] + caps))
        every = -(-size // max(len(units), 1))  # split parts when there are fewer than workers
        units = [(u, k, every) for u in units for k in range(every)]
        size = min(size, len(units))
        if self._pool is None or self._pool_resources != (num_cpus, num_gpus) or len(self._pool) < size:
            self._release_pool()
            self._pool = self._new_pool(size, num_cpus, num_gpus)
            self._pool_resources = (num_cpus, num_gpus)
        pool = self._pool.first(size)
        for w in range(size):  # a worker runs its calls in order: this one comes before its units
            pool.call(w, "configure", steps, self.store.uri, source)
        if input_id == SOURCE:
            dups = self._duplicate_ids(pool)
            for w in range(size):
                pool.call(w, "use_duplicates", dups)
        return units, pool

    def _new_pool(self, size: int, num_cpus: float, num_gpus: float):
        if self.local:
            self.executors.add("local")
            base = os.path.dirname(os.path.abspath(self.loaded.path))
            return LocalPool(size, self._spill_dir(), [(p, base) for p in self.loaded.recipe.plugins],
                             log_path=self.opt.log_path)
        import ray

        # max_restarts=0: a failed operator fails the run with its own error (no silent retry)
        actor = ray.remote(SegmentWorker).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)
        return RayPool([actor.remote() for _ in range(size)])

    def _spill_dir(self) -> str:
        """Where a local pool's workers keep their rows until the segment is written: inside a
        local output dir (the disk the user chose for the run), else the system's temp dir."""
        if "://" not in self.store.uri:
            return os.path.join(self.opt.output, "_spill")
        import tempfile

        return tempfile.mkdtemp(prefix="gristmill-spill-")

    def _release_pool(self) -> None:
        """Kill the pool: before work that needs its CPUs (Ray Data), after a failure, at the end."""
        if self._pool is not None:
            self._pool.release()
        self._pool, self._pool_resources = None, ()

    def _run_pool(self, units: list, pool, display: Display) -> tuple[list, list[dict]]:
        """Feed units to the pool (two in flight per worker, the next one to whoever finishes)."""
        tables: list = [None] * len(units)
        infos: list = [None] * len(units)
        pending: dict = {}
        nxt = 0

        def submit(w: int) -> None:
            nonlocal nxt
            if nxt < len(units):
                table, info = pool.call(w, "run_unit", units[nxt], returns=2)
                tables[nxt] = table
                pending[info] = (w, nxt)
                nxt += 1

        for _ in range(2):  # breadth first: every worker gets a unit before any gets a second
            for w in range(len(pool)):
                submit(w)
        while pending:
            for ref in pool.wait(list(pending), timeout=0.25):
                w, u = pending.pop(ref)
                infos[u] = pool.get(ref)
                tables[u] = pool.held(tables[u])
                display.units_done += 1  # counts come from the ledger (Progress): finer than units
                submit(w)
            display.refresh()
        return tables, infos

    def _write_with_pool(self, pool, tables: list, infos: list[dict], target: str) -> dict:
        self.store.rmtree(target)
        self.store.makedirs(target)
        refs, schema = kept_refs(tables, infos)
        if not refs:
            return write_empty(self.store, target, schema)
        n = shard_count(sum(i["bytes"] for i in infos), self.loaded.recipe.shard_bytes)
        results = pool.get([pool.call(s % len(pool), "write_shard", refs, s, n, self.store.uri, target)
                            for s in range(n)])
        return summarize(results)

    def _run_fused(self, target: str, input_id: str, chain: list[str], seg: list[str]) -> tuple[dict, dict]:
        """Run a chain segment; returns (what was written, per-step wall seconds measured here)."""
        units, pool = self._start_pool(input_id, chain)
        try:
            return self._run_units(target, units, pool, seg)
        finally:
            pool.clear_spill()  # what the workers kept is written (or the run failed)

    def _run_units(self, target: str, units: list, pool, seg: list[str]) -> tuple[dict, dict]:
        walls: dict[str, float] = {}
        display = self._display(seg, total_units=len(units))
        with display, Progress(self.store, seg, display=display, interval=1.0):
            tables, infos = self._run_pool(units, pool, display)
            if self.kinds[target] != "global":
                return self._write_with_pool(pool, tables, infos, target), walls
            t0 = time.perf_counter()
            if self._in_memory(target, sum(i["bytes"] for i in infos)):
                refs, schema = kept_refs(tables, infos)
                table, info = pool.call(0, "run_global", refs, target, self.loaded.operators[target],
                                        self.loaded.params[target], self._ctx(target),
                                        self.loaded.step(target).write_rejected, schema, returns=2)
                written = self._write_with_pool(pool, [pool.held(table)], [pool.get(info)], target)
                walls[target] = time.perf_counter() - t0
                return written, walls
            ds = self._rows_as_dataset(tables, infos)  # the pool is released: the global step needs the CPUs
            written = write_dataset(self._apply(ds, target), self.store, target, self.loaded.recipe.shard_bytes)
            walls[target] = time.perf_counter() - t0
            return written, walls

    def _rows_as_dataset(self, tables: list, infos: list[dict]):
        refs, schema = kept_refs(tables, infos)
        if self.local:
            # a local run whose global step turned out too big for one process: Ray from here on
            # (_start_ray releases the pool), and the rows the local workers kept, read before
            # their spill folder goes, into its object store
            tables = fetch(refs)
            self._start_ray()
            import ray

            refs = [ray.put(t) for t in tables]
            del tables
        else:
            self._release_pool()  # before Ray Data's tasks: the actors hold the CPUs
        return ray_data().from_arrow_refs(refs) if refs else ray_data().from_arrow(schema.empty_table())

    def _run_ray_data(self, target: str, seg: list[str]) -> dict:
        self._release_pool()  # Ray Data needs the CPUs
        if self.local:
            self._start_ray()
        display = self._display(seg)
        with display, Progress(self.store, seg, display=display, interval=0.5):
            return write_dataset(self._plan(target, target), self.store, target, self.loaded.recipe.shard_bytes)

    # -- the run ---------------------------------------------------------------------------
    def _segment(self, target: str) -> list[str]:
        """Steps computed while writing `target` (non-materialized ancestors, the reader too)."""
        seg, todo = [], [target]
        while todo:
            s = todo.pop()
            if s in seg:
                continue
            seg.append(s)
            if s == SOURCE:
                continue
            todo += [u for u in self.loaded.inputs_of(s) if u == SOURCE or u not in self.mats]
        order = [SOURCE] + dag.topo_order(self.steps)
        return [s for s in order if s in seg]

    def _prepare_input(self) -> None:
        spec = self.loaded.recipe.input
        self.files = expand_paths(spec.paths)
        if not self.files and spec.generate:
            from pipeline.samples import build_sample

            target = os.path.dirname(spec.paths[0].split("*")[0].rstrip("/") + "/x")
            self.say(f"[gristmill] building the {spec.generate} corpus in {target} (first run only)")
            build_sample(spec.generate, target, spec.format)
            self.files = expand_paths(spec.paths)
        if not self.files:
            raise FileNotFoundError(f"input: no files match {', '.join(spec.paths)}")
        fingerprint = []
        for f in self.files:
            st = os.stat(f) if "://" not in f else None
            fingerprint.append((f, st.st_size if st else None, int(st.st_mtime) if st else None))
        self.loaded.source_fingerprint = fingerprint

    def run(self) -> dict:
        from pipeline.lock import output_lock

        with output_lock(self.opt.output):  # one run per output dir; an unwritable one fails here
            try:
                return self._run()
            finally:
                self._release_pool()

    def _run(self) -> dict:
        t_run = time.perf_counter()
        self._prepare_input()
        self.store.makedirs()
        order = dag.topo_order(self.steps)
        targets = [t for t in order if t in self.mats]
        hashes = {t: self.loaded.step_hash(t) for t in targets}
        todo = [t for t in targets if not (self.opt.resume and self._complete(t) == hashes[t])]
        self.local = bool(todo) and self.choose_backend(todo) == "local"
        on = ("" if not todo else " (local worker processes, no Ray)" if self.local else
              f" (Ray: {self.opt.address or os.environ.get('RAY_ADDRESS') or 'local'})")
        self.say(f"[gristmill] {self.loaded.recipe.name}: {len(self.files)} input file(s), {len(order)} steps "
                 f"-> {self.opt.output}{on}")
        if todo and not self.local:  # a rerun with every output complete does not even start Ray
            self._start_ray()
        status: dict[str, str] = {}
        for target in targets:
            h = hashes[target]
            seg = self._segment(target)
            if target not in todo:
                for s in seg:
                    status[s] = "skipped"
                self.say(f"[gristmill] {target}: complete from an earlier run (hash {h}), skipped")
                continue
            for s in seg:  # a rerun of this segment replaces what an earlier attempt left
                self.store.rmtree(f"{LEDGER}/{s}")
                self.store.rmtree(f"rejected/{s}")
            self.say(f"[gristmill] running {' -> '.join(seg)} ...")
            t0 = time.perf_counter()
            shape = self._chain_of(target)
            walls: dict[str, float] = {}
            if shape is not None and self.kinds[target] == "global" and not shape[1] and shape[0] != SOURCE \
                    and not self._in_memory(target, self._written_bytes(shape[0])):
                shape = None  # a global step right after a written one: Ray Data reads it, no pool needed
            if shape is not None:
                written, walls = self._run_fused(target, shape[0], shape[1], seg)
            else:
                written = self._run_ray_data(target, seg)
            wall = time.perf_counter() - t0
            for s in seg:
                st = collect(self.store, s)
                st.update(id=s, op=self.loaded.step(s).op if s != SOURCE else f"read:{self.loaded.recipe.input.format}",
                          kind=self.kinds.get(s, "read"), segment=target, segment_wall_s=round(wall, 3),
                          hash=h if s == target else None)
                if s in walls:
                    st["wall_s"] = round(walls[s], 3)
                if s == target and st["docs_out"] != written["rows"]:
                    raise RuntimeError(f"step {target!r}: ledger says {st['docs_out']} rows out but "
                                       f"{written['rows']} were written")
                if s == target:
                    st["files"] = written["files"]
                self.store.write_json(f"{STATS}/{s}.json", st)
                status[s] = "ran"
                self.say(format_step_line(st))
            self.store.write_json(f"{target}/{MARKER}", {"hash": h, "rows": written["rows"],
                                                          "files": written["files"], "wall_s": round(wall, 3)})
        return self._write_stats(status, time.perf_counter() - t_run)

    def _start_ray(self) -> None:
        if self.local:
            self.say("[gristmill] switching to Ray for the rest of the run (a global step's input is larger "
                     f"than GRISTMILL_IN_MEMORY_MB={in_memory_bytes() / 2**20:g}, or a segment needs Ray Data)")
        self._release_pool()
        self.local = False
        self.executors.add("ray")
        init_ray(self.opt.address, num_cpus=None, quiet=self.opt.quiet, progress=False)

    def choose_backend(self, todo: list[str]) -> str:
        """"local" (worker processes, no Ray: pipeline.pools) or "ray" for the segments in `todo`.

        GRISTMILL_EXECUTOR (or RunOptions.executor) = ray | local | auto (default). auto is
        local when nothing needs Ray: no cluster named (--address, RAY_ADDRESS), the input at most
        GRISTMILL_LOCAL_MB (1024) on disk, no step asking for GPUs, and every segment a fused chain
        whose global step (if any) can run in memory. A global step whose input turns out larger
        than in_memory_bytes() switches the run to Ray there (its distributed plan)."""
        want = requested_executor(self.opt.executor, self.opt.address)
        if want != "auto":
            return want
        if any(self.loaded.resources[s.id].num_gpus for s in self.steps):
            return "ray"
        limit = float(os.environ.get("GRISTMILL_LOCAL_MB", "1024")) * 2**20
        if sum(f[1] or 0 for f in self.loaded.source_fingerprint) > limit:
            return "ray"
        for target in todo:
            if self._chain_of(target) is None:
                return "ray"
            if self.kinds[target] == "global" and not (self.loaded.operators[target].has_table_path()
                                                      and in_memory_bytes() > 0):
                return "ray"
        return "local"

    def _written_bytes(self, step_id: str) -> int:
        """Uncompressed size of a written step's Parquet files, from their footers."""
        total = 0
        for p in self.store.list(step_id, ".parquet"):
            md = _parquet_file(self.store.full(p)).metadata
            total += sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
        return total

    def _complete(self, step_id: str) -> str | None:
        try:
            return self.store.read_json(f"{step_id}/{MARKER}").get("hash")
        except (FileNotFoundError, OSError, ValueError):
            return None

    def _write_stats(self, status: dict[str, str], wall: float) -> dict:
        steps = []
        for s in [SOURCE] + dag.topo_order(self.steps):
            try:
                st = self.store.read_json(f"{STATS}/{s}.json")
            except (FileNotFoundError, OSError):
                continue
            st["status"] = status.get(s, "skipped")
            steps.append(st)
        inputs = {s: self.loaded.inputs_of(s) for s in dag.topo_order(self.steps)}
        problems = check_invariants(steps, inputs)
        stats = {"recipe": self.loaded.recipe.name, "recipe_path": self.loaded.path, "output": self.opt.output,
                 "wall_s": round(wall, 3), "steps": steps, "invariant_ok": not problems, "problems": problems,
                 "outputs": sorted(self.mats), "ran": [s for s, v in status.items() if v == "ran"],
                 "executor": "+".join(sorted(self.executors)) or None}
        if self.unique_ids is not None:
            stats["unique_ids"] = self.unique_ids
        self.store.write_json("stats.json", stats)
        if problems:
            raise RuntimeError("accounting invariant broken:\n" + "\n".join(problems))
        return stats


def run_recipe(loaded: LoadedRecipe, options: RunOptions) -> dict:
    return Executor(loaded, options).run()
