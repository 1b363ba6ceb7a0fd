"""Per-step accounting, read from what the workers wrote.

Every batch a step handles leaves one ledger record under `_ledger/<step>/<key>.json` (written by
the worker that held the batch, next to the rejected rows it wrote). The driver only sums
these files once a segment is done, so no counter lives in the driver and the invariant
docs_in = docs_out + docs_dropped is checked against data that was actually written.
"""
from __future__ import annotations

import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from operators.base import DROP_REASON

LEDGER = "_ledger"
STATS = "_stats"


def reason_category(reason: str) -> str:
    """'input:invalid_json at line 5 of a.jsonl' -> 'input:invalid_json' (details stay in the rows)."""
    return reason.split(" ", 1)[0]


def batch_key(ids) -> str:
    """Deterministic name for a batch's files: a hash of its ids, so a rerun overwrites."""
    arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if len(arr) == 0:
        return "empty"
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(arr)], pa.int32()), arr.cast(pa.string())), "\n")
    return f"{xxhash.xxh3_64_hexdigest(joined[0].as_py().encode())}-{len(arr)}"


def ledger_record(docs_in: int, bytes_in: int, kept: pa.Table, rejected: pa.Table | None,
                  busy_s: float, counters: dict | None = None, started: float | None = None,
                  ended: float | None = None) -> dict:
    """One batch's accounting. `generated` is rows returned beyond rows received (only a
    generating operator has any); `tokens_out` is summed when the rows carry `n_tokens`;
    `started`/`ended` (epoch seconds) give the step's wall time (first start to last end)."""
    from pipeline.io import text_bytes

    dropped: Counter = Counter()
    n_rejected = 0 if rejected is None else rejected.num_rows
    if n_rejected:
        for r in rejected.column(DROP_REASON).to_pylist():
            dropped[reason_category(r)] += 1
    rec = {"docs_in": docs_in, "docs_out": kept.num_rows, "bytes_in": bytes_in,
           "bytes_out": text_bytes(kept), "dropped": dict(dropped), "busy_s": round(busy_s, 6),
           "generated": max(0, kept.num_rows + n_rejected - docs_in)}
    if "n_tokens" in kept.column_names:
        rec["tokens_out"] = int(pc.sum(kept.column("n_tokens")).as_py() or 0)
    if counters:
        rec["counters"] = {k: float(v) for k, v in counters.items()}
    if started is not None:
        rec["started"] = round(started, 6)
        rec["ended"] = round(ended if ended is not None else time.time(), 6)
    return rec


def collect(store, step_id: str) -> dict:
    """Sum the ledger records of one step."""
    total = {"docs_in": 0, "docs_out": 0, "bytes_in": 0, "bytes_out": 0, "busy_s": 0.0, "batches": 0,
             "generated": 0}
    dropped: Counter = Counter()
    counters: Counter = Counter()
    tokens = None
    first = last = None
    for path in store.list(f"{LEDGER}/{step_id}", ".json"):
        rel = path[len(store.root) + 1:]
        rec = store.read_json(rel)
        for k in ("docs_in", "docs_out", "bytes_in", "bytes_out", "busy_s"):
            total[k] += rec[k]
        total["generated"] += rec.get("generated", 0)
        if "tokens_out" in rec:
            tokens = (tokens or 0) + rec["tokens_out"]
        counters.update(rec.get("counters", {}))
        total["batches"] += 1
        dropped.update(rec["dropped"])
        if "started" in rec:
            first = rec["started"] if first is None else min(first, rec["started"])
            last = rec["ended"] if last is None else max(last, rec["ended"])
    total["busy_s"] = round(total["busy_s"], 3)
    # wall time: from the first batch's start to the last batch's end (steps of one segment
    # overlap, so their wall times do not add up to the segment's)
    total["wall_s"] = round(last - first, 3) if first is not None else 0.0
    if tokens is not None:
        total["tokens_out"] = tokens
    if counters:
        total["counters"] = {k: round(v, 6) for k, v in sorted(counters.items())}
    total["docs_dropped"] = sum(dropped.values())
    total["dropped"] = dict(sorted(dropped.items()))
    return total


def check_invariants(steps: list[dict], inputs: dict[str, list[str]]) -> list[str]:
    """Problems found: a step whose counts do not add up, or rows lost between steps."""
    problems = []
    by_id = {s["id"]: s for s in steps}
    for s in steps:
        generated = s.get("generated", 0)
        if s["docs_in"] + generated != s["docs_out"] + s["docs_dropped"]:
            problems.append(f"step {s['id']!r}: docs_in {s['docs_in']} + generated {generated} != docs_out "
                            f"{s['docs_out']} + dropped {s['docs_dropped']}")
        ups = inputs.get(s["id"], [])
        if ups and all(u in by_id for u in ups):
            upstream_out = sum(by_id[u]["docs_out"] for u in ups)
            if upstream_out != s["docs_in"]:
                problems.append(f"step {s['id']!r}: received {s['docs_in']} docs but its inputs "
                                f"{', '.join(ups)} produced {upstream_out}: rows were lost without a drop_reason")
    return problems


def format_step_line(s: dict) -> str:
    drops = ", ".join(f"{k} {v:,}" for k, v in s["dropped"].items())
    rate = ""
    if s.get("status") == "skipped":
        state = "skipped (complete)"
    elif s.get("kind") == "global":
        # a global step runs as Ray Data stages or tasks of its own: its ledger has no per-batch
        # busy time, so its rate is over the step's wall time
        state = f"{s.get('wall_s', 0):.1f}s wall"
        if s.get("wall_s"):
            rate = f", {s['docs_in'] / s['wall_s']:,.0f} docs/s"
    else:
        state = f"{s.get('wall_s', 0):.1f}s wall, {s.get('busy_s', 0):.1f}s busy"
        if s.get("busy_s"):
            rate = f", {s['docs_in'] / max(s['busy_s'], 1e-9):,.0f} docs/s per worker"
    c = s.get("counters") or {}
    if s.get("generated") or "tokens_generated" in c:  # a generating step: what the model produced
        rate += f", generated {s.get('generated', 0):,}"
        if c.get("generate_s"):
            rate += (f", {c.get('tokens_generated', 0):,.0f} tokens at "
                     f"{c.get('tokens_generated', 0) / c['generate_s']:,.1f} tokens/s per worker")
    return (f"[gristmill] {s['id']:<14} {s['op']:<16} in {s['docs_in']:>9,}  out {s['docs_out']:>9,}  "
            f"dropped {s['docs_dropped']:>8,}{' (' + drops + ')' if drops else ''}  {state}{rate}")


class Progress:
    """While a segment runs on Ray Data, read the ledger files the workers write every
    `interval` seconds and show the docs each step has handled so far (on `display`, else as a
    line through `say`)."""

    def __init__(self, store, steps: list[str], say=None, interval: float = 10.0, display=None):
        import threading

        self.store, self.steps, self.say, self.interval, self.display = store, steps, say, interval, display
        self.seen: dict[str, set] = {s: set() for s in steps}
        self.docs: dict[str, int] = {s: 0 for s in steps}
        self.docs_out: dict[str, int] = {s: 0 for s in steps}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.t0 = time.perf_counter()

    def __enter__(self):
        if self.interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def poll(self) -> bool:
        changed = False
        for s in self.steps:
            for path in self.store.list(f"{LEDGER}/{s}", ".json"):
                if path in self.seen[s]:
                    continue
                try:
                    rec = self.store.read_json(path[len(self.store.root) + 1:])
                except (OSError, ValueError):
                    continue  # being replaced right now; next tick
                self.seen[s].add(path)
                self.docs[s] += rec["docs_in"]
                self.docs_out[s] += rec["docs_out"]
                changed = True
        return changed

    def _loop(self):
        while not self._stop.wait(self.interval):
            changed = self.poll()
            if self.display is not None:
                for s in self.steps:
                    self.display.set(s, self.docs[s], self.docs_out[s])
                self.display.refresh()
            elif changed and self.say is not None:
                done = "  ".join(f"{s} {self.docs[s]:,}" for s in self.steps)
                self.say(f"[gristmill]   {time.perf_counter() - self.t0:5.0f}s  docs handled: {done}")


class Display:
    """One live progress display for a running segment (rich): per step docs in, out and
    dropped, docs/s, elapsed and, when the number of work units is known, ETA. Transient: it
    disappears when the segment ends and the step lines are printed instead. Not on a terminal
    (CI logs, files) it prints a plain line every `plain_every` seconds."""

    def __init__(self, steps: list[str], file=None, enabled: bool = True, total_units: int | None = None,
                 plain_every: float = 10.0):
        import sys

        from rich.console import Console

        self.steps, self.enabled, self.total_units, self.plain_every = steps, enabled, total_units, plain_every
        self.counts = {s: [0, 0] for s in steps}
        self.units_done = 0
        self.t0 = self._last_plain = time.perf_counter()
        self.console = Console(file=file or sys.stderr, highlight=False)
        self.live = None
        if enabled and self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True,
                             redirect_stdout=False, redirect_stderr=False)

    def __enter__(self):
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.stop()

    def add(self, counts: dict, units: int = 1) -> None:
        """Counts of one finished work unit: {step: [docs_in, docs_out, ...]}."""
        for s, c in counts.items():
            if s in self.counts:
                self.counts[s][0] += c[0]
                self.counts[s][1] += c[1]
        self.units_done += units

    def set(self, step: str, docs_in: int, docs_out: int) -> None:
        if step in self.counts:
            self.counts[step] = [docs_in, docs_out]

    def eta(self) -> float | None:
        if not self.total_units or not self.units_done:
            return None
        elapsed = time.perf_counter() - self.t0
        return elapsed * (self.total_units - self.units_done) / self.units_done

    def _render(self):
        from rich.table import Table

        elapsed = time.perf_counter() - self.t0
        eta = self.eta()
        title = f"{elapsed:.0f}s elapsed" + (f", ETA {eta:.0f}s" if eta is not None else "")
        if self.total_units:
            title += f" ({self.units_done}/{self.total_units} input units)"
        from rich.console import Group
        from rich.text import Text

        t = Table(box=None, pad_edge=False)
        for col in ("step", "in", "out", "dropped", "docs/s"):
            t.add_column(col, justify="left" if col == "step" else "right")
        for s in self.steps:
            i, o = self.counts[s]
            t.add_row(s, f"{i:,}", f"{o:,}", f"{max(i - o, 0):,}", f"{i / max(elapsed, 1e-9):,.0f}")
        return Group(Text(f"[gristmill] {title}"), t)

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())
        elif self.enabled and time.perf_counter() - self._last_plain >= self.plain_every:
            self._last_plain = time.perf_counter()
            elapsed = time.perf_counter() - self.t0
            eta = self.eta()
            done = "  ".join(f"{s} {self.counts[s][0]:,}" for s in self.steps)
            print(f"[gristmill]   {elapsed:5.0f}s  docs handled: {done}"
                  + (f"  (ETA {eta:.0f}s)" if eta is not None else ""), file=self.console.file, flush=True)
