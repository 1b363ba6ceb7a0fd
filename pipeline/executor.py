"""Runs a validated recipe on Ray Data. The only module that knows about Ray scheduling.

Streaming between barriers: map/filter steps become `map_batches` stages (actors for operators
that hold a model); a global step receives a `ray.data.Dataset`. Global steps, sinks and
fan-out points are written to `<output>/<step>/` (see pipeline.io.write_dataset) with a
`_COMPLETE.json` marker holding the hash of the step's recipe slice and its inputs: a rerun
skips complete steps and a crashed run resumes from the last one written.
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
from pipeline.io import read_input, read_step_output, text_bytes, write_dataset
from pipeline.recipe import LoadedRecipe, expand_paths
from pipeline.stats import (LEDGER, STATS, Progress, batch_key, check_invariants, collect,
                            format_step_line, ledger_record)
from pipeline.storage import Store

MARKER = "_COMPLETE.json"


# -- what runs on the workers ------------------------------------------------------------
def route(out: pa.Table, step_id: str, store_uri: str, write_rejected: bool, docs_in: int,
          bytes_in: int, busy_s: float, key: str, counters: dict | None = None) -> pa.Table:
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
                     ledger_record(docs_in, bytes_in, kept, rejected, busy_s, counters))
    return kept


class StepRunner:
    """One map/filter step on a batch (also used, with no operator, to route what a reader or a
    global step produced). As a callable class it runs in a Ray actor: setup() once per actor."""

    def __init__(self, step_id: str, op_cls, params, store_uri: str, write_rejected: bool = True):
        self.step_id, self.store_uri, self.write_rejected = step_id, store_uri, write_rejected
        self.op = op_cls(params) if op_cls is not None else None
        if self.op is not None:
            self.op.ensure_setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        docs_in, bytes_in = batch.num_rows, text_bytes(batch)
        out, counters = batch, None  # routing only (no operator): the rows were produced upstream
        if self.op is not None:
            out = self.op.process(batch)
            if out.num_rows != docs_in and not (self.op.generates and out.num_rows > docs_in):
                raise RuntimeError(f"step {self.step_id!r} ({self.op.name}) returned {out.num_rows} rows for "
                                   f"{docs_in}: filters mark rows with drop_reason instead of removing them")
            counters = self.op.counters(out) or None
        # the ledger key comes from the input ids: a generating step's output ids are new rows
        key = batch_key(batch.column("id"))
        return route(out, self.step_id, self.store_uri, self.write_rejected, docs_in, bytes_in,
                     time.perf_counter() - t0, key, counters)


_TASK_RUNNERS: dict[tuple, StepRunner] = {}


def run_step_task(batch: pa.Table, step_id: str, op_cls, params, store_uri: str, write_rejected: bool) -> pa.Table:
    """Task (non-actor) version: one runner per worker process, reused across batches."""
    k = (step_id, store_uri, id(op_cls), repr(params))
    runner = _TASK_RUNNERS.get(k)
    if runner is None:
        runner = _TASK_RUNNERS[k] = StepRunner(step_id, op_cls, params, store_uri, write_rejected)
    return runner(batch)


# -- the driver ------------------------------------------------------------------------------
@dataclass
class RunOptions:
    output: str
    address: str | None = None
    max_workers: int | None = None  # cap on parallel tasks/actors per step (None: all CPUs)
    resume: bool = True
    progress: bool = True
    quiet: bool = False
    progress_every: float = 10.0  # seconds between progress lines while a segment runs


class Executor:
    def __init__(self, loaded: LoadedRecipe, options: RunOptions):
        self.loaded, self.opt = loaded, options
        self.steps = loaded.recipe.steps
        self.kinds = {s.id: loaded.operators[s.id].kind for s in self.steps}
        self.mats = dag.materialized(self.steps, self.kinds)
        self.store = Store(options.output)

    def say(self, msg: str) -> None:
        if not self.opt.quiet:
            print(msg, file=sys.stderr, flush=True)

    def _concurrency(self, res) -> int | None:
        caps = [c for c in (res.concurrency, self.opt.max_workers) if c]
        return min(caps) if caps else None

    def _apply(self, ds, step_id: str):
        import ray.data

        cls = self.loaded.operators[step_id]
        params = self.loaded.params[step_id]
        spec = self.loaded.step(step_id)
        res = self.loaded.resources[step_id]
        common = dict(batch_format="pyarrow", batch_size=res.batch_size, num_cpus=res.num_cpus,
                      zero_copy_batch=False)
        if res.num_gpus:
            common["num_gpus"] = res.num_gpus
        if cls.kind == "global":
            ctx = RunContext(step_id=step_id, output_dir=self.opt.output, seed=self.loaded.recipe.seed,
                             max_workers=self.opt.max_workers)
            # a barrier: its input is computed once (run() may read it several times)
            return self._route(cls(params).run(ds.materialize(), ctx), step_id, spec.write_rejected)
        if res.actor:
            # an autoscaling pool: a fixed pool as large as the cluster would hold every CPU and
            # starve the steps that feed it
            size = self._concurrency(res) or max(1, int(self._cluster_cpus() // max(res.num_cpus, 0.01)))
            return ds.map_batches(StepRunner, fn_constructor_args=(step_id, cls, params, self.store.uri,
                                                                    spec.write_rejected),
                                  compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size), **common)
        return ds.map_batches(run_step_task, fn_args=(step_id, cls, params, self.store.uri, spec.write_rejected),
                              compute=ray.data.TaskPoolStrategy(size=self._concurrency(res)), **common)

    def _route(self, ds, step_id: str, write_rejected: bool):
        """Route rows produced upstream (by a reader or a global step): a light task per block."""
        import ray.data

        return ds.map_batches(run_step_task, fn_args=(step_id, None, None, self.store.uri, write_rejected),
                              batch_format="pyarrow", batch_size=None, num_cpus=0.25, zero_copy_batch=False,
                              compute=ray.data.TaskPoolStrategy(size=self.opt.max_workers))

    def _cluster_cpus(self) -> float:
        import ray

        return float(ray.cluster_resources().get("CPU", 1))

    def _source(self):
        spec = self.loaded.recipe.input
        return self._route(read_input(spec, self.files, self.opt.max_workers), SOURCE, True)

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
            parts = [p.select_columns(cols) for p in parts]
            ds = parts[0].union(*parts[1:])
        else:
            ds = parts[0]
        return self._apply(ds, step_id)

    def _columns(self, step_id: str) -> set[str]:
        return self.loaded.source_columns if step_id == SOURCE else self.loaded.columns[step_id]

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
        from pipeline.runtime import init_ray

        t_run = time.perf_counter()
        init_ray(self.opt.address, num_cpus=None, quiet=self.opt.quiet,
                 progress=self.opt.progress and sys.stderr.isatty())
        self._prepare_input()
        self.store.makedirs()
        order = dag.topo_order(self.steps)
        self.say(f"[gristmill] {self.loaded.recipe.name}: {len(self.files)} input file(s), {len(order)} steps "
                 f"-> {self.opt.output}")
        status: dict[str, str] = {}
        for target in order:
            if target not in self.mats:
                continue
            h = self.loaded.step_hash(target)
            seg = self._segment(target)
            if self.opt.resume and self._complete(target) == h:
                for s in seg:
                    status[s] = "skipped"
                self.say(f"[gristmill] {target}: complete from an earlier run (hash {h}), skipped")
                continue
            for s in seg:  # a rerun of this segment replaces what an earlier attempt left
                self.store.rmtree(f"{LEDGER}/{s}")
                self.store.rmtree(f"rejected/{s}")
            self.say(f"[gristmill] running {' -> '.join(seg)} ...")
            t0 = time.perf_counter()
            with Progress(self.store, seg, self.say, interval=0 if self.opt.quiet else self.opt.progress_every):
                written = write_dataset(self._plan(target, target), self.store, target,
                                        self.loaded.recipe.shard_bytes)
            wall = time.perf_counter() - t0
            for s in seg:
                st = collect(self.store, s)
                st.update(id=s, op=self.loaded.step(s).op if s != SOURCE else f"read:{self.loaded.recipe.input.format}",
                          kind=self.kinds.get(s, "read"), segment=target, segment_wall_s=round(wall, 3),
                          hash=h if s == target else None)
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
                 "outputs": sorted(self.mats)}
        self.store.write_json("stats.json", stats)
        if problems:
            raise RuntimeError("accounting invariant broken:\n" + "\n".join(problems))
        return stats


def run_recipe(loaded: LoadedRecipe, options: RunOptions) -> dict:
    return Executor(loaded, options).run()
