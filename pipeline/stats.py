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
                  busy_s: float, counters: dict | None = None) -> dict:
    """One batch's accounting. `generated` is rows returned beyond rows received (only a
    generating operator has any); `tokens_out` is summed when the rows carry `n_tokens`."""
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
    return rec


def collect(store, step_id: str) -> dict:
    """Sum the ledger records of one step."""
    total = {"docs_in": 0, "docs_out": 0, "bytes_in": 0, "bytes_out": 0, "busy_s": 0.0, "batches": 0,
             "generated": 0}
    dropped: Counter = Counter()
    counters: Counter = Counter()
    tokens = None
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
    total["busy_s"] = round(total["busy_s"], 3)
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
    state = "skipped (complete)" if s.get("status") == "skipped" else f"{s.get('busy_s', 0):.1f}s busy"
    rate = ""
    if s.get("busy_s"):
        rate = f", {s['docs_in'] / max(s['busy_s'], 1e-9):,.0f} docs/s per worker"
    return (f"[gristmill] {s['id']:<14} {s['op']:<16} in {s['docs_in']:>9,}  out {s['docs_out']:>9,}  "
            f"dropped {s['docs_dropped']:>8,}{' (' + drops + ')' if drops else ''}  {state}{rate}")


class Progress:
    """While a segment runs, print a line every `interval` seconds with the docs each step has
    handled so far, read incrementally from the ledger files the workers write."""

    def __init__(self, store, steps: list[str], say, interval: float = 10.0):
        import threading

        self.store, self.steps, self.say, self.interval = store, steps, say, interval
        self.seen: dict[str, set] = {s: set() for s in steps}
        self.docs: dict[str, int] = {s: 0 for s in steps}
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
                changed = True
        return changed

    def _loop(self):
        while not self._stop.wait(self.interval):
            if self.poll():
                done = "  ".join(f"{s} {self.docs[s]:,}" for s in self.steps)
                self.say(f"[gristmill]   {time.perf_counter() - self.t0:5.0f}s  docs handled: {done}")
