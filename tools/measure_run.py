"""Run `gristmill run RECIPE ...` as a user would and watch its memory: wall time (start-up
included), the driver's peak RSS (over the whole run and over its first fifth, to show whether it
grows with the corpus), the peak RSS of one Ray worker and of all of them together, and per step the
documents and tokens from the run's stats.json.

    .venv/bin/python tools/measure_run.py RECIPE.yaml [--output DIR] [-- extra gristmill run args]

Prints one JSON object (also written to OUTPUT/measure.json).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20


class Watch(threading.Thread):
    """Samples, once a second, the RSS of process `pid` and of its Ray worker processes (`ray::...`)."""

    def __init__(self, pid: int, interval: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.interval, self.samples, self.stop = pid, interval, [], threading.Event()

    def run(self) -> None:
        t0 = time.time()
        while not self.stop.is_set():
            try:
                driver = psutil.Process(self.pid)
                rss = driver.memory_info().rss
                workers = []
                for c in driver.children(recursive=True):
                    try:
                        if c.cmdline()[:1] and c.cmdline()[0].startswith("ray::"):
                            workers.append(c.memory_info().rss)
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
                self.samples.append((time.time() - t0, rss, max(workers, default=0), sum(workers)))
            except psutil.NoSuchProcess:
                return
            self.stop.wait(self.interval)

    def summary(self, wall: float) -> dict:
        s = self.samples or [(0, 0, 0, 0)]
        first = [x for x in s if x[0] <= wall / 5] or s[:1]
        return {"driver_peak_rss_mib": round(max(x[1] for x in s) / MIB, 1),
                "driver_peak_rss_first_fifth_mib": round(max(x[1] for x in first) / MIB, 1),
                "driver_rss_end_mib": round(s[-1][1] / MIB, 1),
                "worker_peak_rss_mib": round(max(x[2] for x in s) / MIB, 1),
                "workers_total_peak_rss_mib": round(max(x[3] for x in s) / MIB, 1), "samples": len(s)}


def run_watched(cmd: list[str], cwd: Path = ROOT) -> tuple[int, float, dict, str]:
    """Run `cmd`, sampling its memory; returns (exit code, wall seconds, memory summary, stderr tail)."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watch = Watch(proc.pid)
    watch.start()
    _, err = proc.communicate()
    watch.stop.set()
    watch.join()
    wall = time.time() - t0
    return proc.returncode, wall, watch.summary(wall), err[-3000:]


def step_figures(stats: dict) -> list[dict]:
    keep = ("id", "op", "status", "docs_in", "docs_out", "docs_dropped", "tokens_out", "wall_s")
    return [{k: s[k] for k in keep if k in s} for s in stats.get("steps", [])]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--output", help="output dir (default: the recipe's)")
    ap.add_argument("extra", nargs="*", help="more `gristmill run` arguments (after --)")
    args = ap.parse_args()
    out = Path(args.output or yaml.safe_load(Path(args.recipe).read_text())["output"])
    cmd = [sys.executable, "-m", "pipeline.cli", "run", args.recipe, "--quiet", *args.extra]
    if args.output:
        cmd += ["--output", args.output]
    rc, wall, mem, err = run_watched(cmd)
    note = {"command": " ".join(cmd), "rc": rc, "wall_s": round(wall, 1), **mem,
            "load_avg_1m_end": round(os.getloadavg()[0], 1)}
    if rc:  # a stats.json left by an earlier run must not pass for this one's
        note["stderr_tail"] = err
        print(json.dumps(note, indent=1))
        return rc
    try:
        stats = json.loads((out / "stats.json").read_text())
        note["steps"] = step_figures(stats)
        note["invariant_ok"] = stats.get("invariant_ok")
        tokens = max((s.get("tokens_out") or 0 for s in stats.get("steps", [])), default=0)
        if tokens:
            note["tokens"] = tokens
            note["tokens_per_s"] = round(tokens / wall)
    except (OSError, ValueError):
        note["stderr_tail"] = err
    text = json.dumps(note, indent=1)
    print(text)
    if out.is_dir():
        (out / "measure.json").write_text(text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
