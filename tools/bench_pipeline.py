"""End-to-end engine benchmarks (issue 19): `gristmill run` as users run it vs peers, each side a
fresh process (start-up included), on the same files and cores, ratios from one run (after one
untimed run of ours that warms the machine: see warm_up).

    python tools/bench_pipeline.py quickstart            # make quickstart's run, wall seconds
    python tools/bench_pipeline.py passthrough --docs 200000   # vs Ray Data read->identity->write
    python tools/bench_pipeline.py filters --docs 12000  # LID + 4 filters vs datatrove
    python tools/bench_pipeline.py front --repeat 4      # WARC->extract->LID->4 filters vs datatrove
    python tools/bench_pipeline.py workers --repeat 4    # the front with --workers 1 vs 2
    python tools/bench_pipeline.py filters --warm-ray     # also: joining a Ray head started beforehand
    python tools/bench_pipeline.py front --ray            # also: the same run with --executor ray
    python tools/bench_pipeline.py wordsetup --langs en,fr  # word splitter set-up per language, CPU s
    python tools/bench_pipeline.py perfile               # CPU per front operator per file, cold and warm
    python tools/bench_pipeline.py all

Corpora: the scale corpus from ../shared/data/make_scale_corpus.py (written once under --tmp,
in shards of --docs-per-shard so that both sides can split the work over their workers) and
the 990 pages of ../shared/data/web (pages.warc.gz and pages-heavy.warc.gz, the 311 over 150 KB)
copied --repeat times, read with the recipe's default batch_rows. Each line reports the load
average before and after, because the machine may be shared: compare ratios, not seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PY = sys.executable
FILTERS = ["gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality"]
FRONT = ["extract:html_extract", "lang:language_id"] + FILTERS  # the steps of front, workers and perfile


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def timed(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall


def scale_corpus(tmp: pathlib.Path, docs: int, per_shard: int) -> pathlib.Path:
    out = tmp / f"scale-{docs}-{per_shard}"
    if not (out / "part-00000.parquet").exists():
        subprocess.run([PY, str(DATA / "make_scale_corpus.py"), "--docs", str(docs), "--out", str(out),
                        "--docs-per-shard", str(per_shard)], check=True, capture_output=True)
        (out / "duplicates_truth.parquet").unlink(missing_ok=True)  # not an input document file
    return out


def web_copies(tmp: pathlib.Path, repeat: int) -> pathlib.Path:
    """Every WARC file of ../shared/data/web (the 990 pages: 679 light, 311 heavy), `repeat`
    times. (Until 2026-12-07 this copied only pages.warc.gz: 2,716 of the 3,960 pages.)"""
    out = tmp / f"web-all-x{repeat}"
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted((DATA / "web").glob("*.warc.gz")):
        for k in range(repeat):
            dst = out / f"{src.name.removesuffix('.warc.gz')}-{k}.warc.gz"
            if not dst.exists():
                shutil.copy(src, dst)
    return out


def recipe(tmp: pathlib.Path, name: str, fmt: str, paths: str, steps: list[str], batch_rows: int = 1024) -> str:
    p = tmp / f"{name}.yaml"
    body = "\n".join(f"  - {{id: {s.split(':')[0]}, op: {s.split(':')[-1]}}}" for s in steps)
    p.write_text(textwrap.dedent(f"""\
        name: {name}
        input: {{format: {fmt}, paths: ["{paths}"], batch_rows: {batch_rows}}}
        output: {tmp}/out-{name}
        steps:
        """) + body + "\n")
    return str(p)


def gristmill(recipe_path: str, out: pathlib.Path, workers: int | None = None,
              address: str | None = None, executor: str | None = None) -> tuple[float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(ROOT / ".venv" / "bin" / "gristmill"), "run", recipe_path, "--output", str(out), "--no-resume"]
    if workers:
        cmd += ["--workers", str(workers)]
    if address:
        cmd += ["--address", address]
    if executor:
        cmd += ["--executor", executor]
    wall = timed(cmd)
    return wall, json.loads((out / "stats.json").read_text())


def warm_up(recipe_path: str, out: pathlib.Path, on: bool) -> None:
    """One untimed run of ours before the timed one (unless --no-warm-up). Measured here: after
    the machine has idled for a minute, the first run of anything CPU-heavy is ~15-20 % slower
    (the filters run: 4.0 s instead of 3.5 s, most of it in each worker's first file, with every
    file read beforehand, so not the page cache; a pure-Python loop shows nothing). The peer's run
    comes after ours and finds the machine warm: this gives ours the same."""
    if on:
        gristmill(recipe_path, out)


class WarmRay:
    """A local Ray head started once (`ray start --head --block`, not timed) for the `--warm-ray`
    figures: each `gristmill run --address` then joins it instead of starting its own Ray, as a
    user iterating from the shell would (README: performance). SIGTERM stops it and its
    processes (`ray stop` would stop every Ray on the machine)."""

    PORT = 6399

    def __enter__(self) -> str:
        # Ray's default addressing (the machine's own address), as a user's `ray start --head` has:
        # `gristmill run --address` then resolves 127.0.0.1 to it
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        self.proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "ray"), "start", "--head", "--block",
                                      f"--port={self.PORT}", f"--num-cpus={os.cpu_count() or 2}",
                                      "--include-dashboard=false", "--disable-usage-stats"],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        address = f"127.0.0.1:{self.PORT}"
        probe = f"import ray; ray.init(address='{address}', logging_level='ERROR'); ray.shutdown()"
        for _ in range(60):
            if self.proc.poll() is not None:
                sys.exit("ray start --head failed")
            if subprocess.run([PY, "-c", probe], env=env, capture_output=True).returncode == 0:
                return address
            time.sleep(1)
        sys.exit("ray start --head: no head after 60 s")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        # `ray start` leaves its address here for `ray.init()` / `--address auto`; a plain
        # `ray.init()` later would try to join this stopped head
        current = pathlib.Path("/tmp/ray/ray_current_cluster")
        if current.is_file() and current.read_text().strip().endswith(f":{self.PORT}"):
            current.unlink()


RAY_DATA = """
import sys, ray
src, dst = sys.argv[1], sys.argv[2]
ray.init(address="local", include_dashboard=False, logging_level="WARNING")  # its own Ray, as ours
ray.data.DataContext.get_current().enable_progress_bars = False
ray.data.read_parquet(src).map_batches(lambda b: b, batch_format="pyarrow").write_parquet(dst)
"""

DATATROVE = """
import sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                        GopherRepetitionFilter, LanguageFilter)
from datatrove.pipeline.readers import ParquetReader, WarcReader
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.writers import ParquetWriter
from operators.language_id import default_model_path

kind, src, dst, logs, tasks = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
lf = LanguageFilter()
lf.model.MODEL_URL = "file://" + default_model_path()  # the same fastText model, no download
head = ([ParquetReader(src, glob_pattern="part-*.parquet")] if kind == "filters"
        else [WarcReader(src, glob_pattern="*.warc.gz"), Trafilatura(favour_precision=True)])
pipe = head + [lf, GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(), FineWebQualityFilter(),
               ParquetWriter(dst)]
LocalPipelineExecutor(pipeline=pipe, tasks=tasks, workers=tasks, logging_dir=logs).run()
"""


def peer(script: str, *args: str) -> float:
    return timed([PY, "-c", script, *args], env={"PYTHONPATH": str(ROOT)})


def datatrove(kind: str, src: pathlib.Path, tmp: pathlib.Path, tasks: int) -> float:
    """datatrove's pipeline from a clean slate: its executor skips the tasks its logging dir
    records as done, so a second benchmark run would otherwise time nothing."""
    dst, logs = tmp / f"dt-{kind}", tmp / f"dt-{kind}-logs"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    return peer(DATATROVE, kind, str(src), str(dst), str(logs), str(tasks))


def report(name: str, ours: float, peer_wall: float, docs: int, target: str, before: str) -> dict:
    ratio = peer_wall / ours
    print(f"{name:<12} gristmill {ours:7.1f} s ({docs / ours:8,.0f} docs/s)   peer {peer_wall:7.1f} s "
          f"({docs / peer_wall:8,.0f} docs/s)   ratio {ratio:5.2f}x (target {target})   load {before} -> {load()}",
          flush=True)
    return {"bench": name, "gristmill_s": round(ours, 2), "peer_s": round(peer_wall, 2), "docs": docs,
            "ratio": round(ratio, 3)}


def bench_quickstart(tmp: pathlib.Path, a) -> dict:
    before = load()
    out = tmp / "out-quickstart"
    wall, stats = gristmill(str(ROOT / "recipes" / "quickstart.yaml"), out)
    busy = sum(s.get("busy_s", 0) for s in stats["steps"])
    print(f"quickstart   gristmill {wall:7.1f} s (target <= 20 s), operators busy {busy:.1f} s   load {before} -> {load()}",
          flush=True)
    return {"bench": "quickstart", "gristmill_s": round(wall, 2), "busy_s": round(busy, 2)}


def bench_passthrough(tmp: pathlib.Path, a) -> dict:
    src = scale_corpus(tmp, a.docs or 200_000, a.docs_per_shard or 50_000)
    r = recipe(tmp, "passthrough", "parquet", f"{src}/part-*.parquet", ["all:sample"], batch_rows=4096)
    pathlib.Path(r).write_text(pathlib.Path(r).read_text().replace("op: sample}", "op: sample, params: {fraction: 1.0}}"))
    warm_up(r, tmp / "out-passthrough", a.warm_up)
    before = load()
    ours, stats = gristmill(r, tmp / "out-passthrough")
    dst = tmp / "out-raydata"
    shutil.rmtree(dst, ignore_errors=True)
    files = sorted(str(p) for p in src.glob("part-*.parquet"))
    theirs = peer(RAY_DATA, ",".join(files) if len(files) == 1 else str(src), str(dst))
    docs = stats["steps"][0]["docs_in"]
    return report("passthrough", ours, theirs, docs, ">= 0.8x", before)


def bench_filters(tmp: pathlib.Path, a) -> dict:
    src = scale_corpus(tmp, a.docs or 12_000, a.docs_per_shard or 3_000)
    r = recipe(tmp, "filters", "parquet", f"{src}/part-*.parquet", ["lang:language_id"] + FILTERS)
    warm_up(r, tmp / "out-filters", a.warm_up)
    before = load()
    ours, stats = gristmill(r, tmp / "out-filters")
    on_ray = ray_runs(a, lambda: gristmill(r, tmp / "out-filters-ray", executor="ray")[0])
    warm = warm_runs(a, lambda address: gristmill(r, tmp / "out-filters-warm", address=address)[0])
    theirs = datatrove("filters", src, tmp, a.tasks)
    res = report("filters", ours, theirs, stats["steps"][0]["docs_in"], ">= 10x", before)
    return report_warm(res, warm, theirs, on_ray)


def warm_runs(a, fn):
    """fn(address) with a warm local Ray head (--warm-ray), else None."""
    if not a.warm_ray:
        return None
    with WarmRay() as address:
        return fn(address)


def ray_runs(a, fn):
    """fn() for the same recipe with `--executor ray` (a Ray of its own), when --ray; else None."""
    return fn() if a.ray else None


def report_warm(res: dict, warm: float | None, peer_wall: float, on_ray: float | None = None) -> dict:
    if on_ray is not None:
        print(f"{'':<12} gristmill --executor ray (its own local Ray): {on_ray:7.1f} s   ratio "
              f"{peer_wall / on_ray:5.2f}x", flush=True)
        res = {**res, "gristmill_ray_s": round(on_ray, 2), "ratio_ray": round(peer_wall / on_ray, 3)}
    if warm is None:
        return res
    print(f"{'':<12} gristmill joining a warm local Ray (--address): {warm:7.1f} s   ratio {peer_wall / warm:5.2f}x",
          flush=True)
    return {**res, "gristmill_warm_s": round(warm, 2), "ratio_warm": round(peer_wall / warm, 3)}


def bench_front(tmp: pathlib.Path, a) -> dict:
    src = web_copies(tmp, a.repeat)
    r = recipe(tmp, "front", "warc", f"{src}/*.warc.gz", FRONT)
    warm_up(r, tmp / "out-front", a.warm_up)
    before = load()
    ours, stats = gristmill(r, tmp / "out-front")
    on_ray = ray_runs(a, lambda: gristmill(r, tmp / "out-front-ray", executor="ray")[0])
    warm = warm_runs(a, lambda address: gristmill(r, tmp / "out-front-warm", address=address)[0])
    theirs = datatrove("front", src, tmp, a.tasks)
    res = report_warm(report("front", ours, theirs, stats["steps"][0]["docs_in"], ">= 10x", before), warm, theirs,
                      on_ray)
    busy = sum(s.get("busy_s", 0) for s in stats["steps"])
    seg = max(s.get("segment_wall_s", 0) for s in stats["steps"])
    print(f"             steps busy {busy:.1f} s over a {seg:.1f} s segment: {busy / max(seg, 1e-9):.2f} cores busy")
    return res


def bench_workers(tmp: pathlib.Path, a) -> dict:
    src = web_copies(tmp, a.repeat)
    r = recipe(tmp, "front", "warc", f"{src}/*.warc.gz", FRONT)
    warm_up(r, tmp / "out-w1", a.warm_up)
    before = load()
    one, s1 = gristmill(r, tmp / "out-w1", workers=1)
    two, s2 = gristmill(r, tmp / "out-w2", workers=2)
    warm = warm_runs(a, lambda address: (gristmill(r, tmp / "out-w1-warm", workers=1, address=address)[0],
                                         gristmill(r, tmp / "out-w2-warm", workers=2, address=address)[0]))
    if warm:
        print(f"             joining a warm local Ray: 1 worker {warm[0]:7.1f} s   2 workers {warm[1]:7.1f} s   "
              f"speed-up {warm[0] / warm[1]:4.2f}x", flush=True)
    docs = s1["steps"][0]["docs_in"]
    for w, st in ((1, s1), (2, s2)):
        busy = sum(s.get("busy_s", 0) for s in st["steps"])
        seg = max(s.get("segment_wall_s", 0) for s in st["steps"])
        print(f"             --workers {w}: steps busy {busy:.1f} s over a {seg:.1f} s segment "
              f"({busy / max(seg, 1e-9) / w:.0%} of {w} core(s))")
    print(f"workers      1 worker {one:7.1f} s   2 workers {two:7.1f} s   speed-up {one / two:4.2f}x (target >= 1.8x)"
          f"   load {before} -> {load()}", flush=True)
    res = {"bench": "workers", "w1_s": round(one, 2), "w2_s": round(two, 2), "docs": docs, "ratio": round(one / two, 3)}
    if warm:
        res.update(w1_warm_s=round(warm[0], 2), w2_warm_s=round(warm[1], 2), ratio_warm=round(warm[0] / warm[1], 3))
    return res


WORD_SETUP = """import sys, time
t0 = time.process_time()
import polars as pl
from operators import _words as w
t1 = time.process_time()
texts = ["Hello, world! l'homme don't z.B. (the) e.g. http://x.com/a 3:00 «Bonjour» peut-être geht’s ...,; " * 3] * 50
w.split_words(pl.Series(texts), pl.Series([sys.argv[1]] * len(texts)))
print(time.process_time() - t1, "spacy" in sys.modules)
"""


def bench_wordsetup(tmp: pathlib.Path, a) -> dict:
    """CPU seconds a fresh process spends before the word splitter's first 50 documents of one
    language (imports excluded): cold (an empty rules cache: spaCy builds them) and warm (read back)."""
    before = load()
    out = {"bench": "wordsetup"}
    cold_dir = tmp / "words-cache-cold"
    shutil.rmtree(cold_dir, ignore_errors=True)
    for lang in a.langs.split(","):
        row = []
        for label in ("cold", "warm"):  # the cold run fills cold_dir, the warm run reads it
            proc = subprocess.run([PY, "-c", WORD_SETUP, lang], cwd=ROOT, capture_output=True, text=True, check=True,
                                  env={**os.environ, "GRISTMILL_WORDS_CACHE": str(cold_dir)})
            cpu, spacy = proc.stdout.split()
            row.append(f"{label} {float(cpu):5.2f} s (spaCy imported: {spacy})")
            out[f"{lang}_{label}_cpu_s"] = round(float(cpu), 3)
        print(f"wordsetup    {lang:4s} " + "   ".join(row), flush=True)
    print(f"wordsetup    load {before} -> {load()}", flush=True)
    return out


PER_FILE = """import os, sys, time
os.environ["POLARS_MAX_THREADS"] = "1"  # as in a worker (pipeline.pools)
import pyarrow.compute as pc
from operators.base import DROP_REASON, load_operators
from pipeline.executor import SegmentWorker
from pipeline.io import read_file_batches
SegmentWorker()  # what a worker process sets up for itself (malloc settings)
ops = load_operators()
names = sys.argv[1].split(",")
steps = [ops[n]() for n in names]
for op in steps:
    op.ensure_setup()
for path in sys.argv[2:]:
    cpu = dict.fromkeys(["read"] + names, 0.0)
    t = time.process_time()
    for batch in read_file_batches(path, "k", "warc", 1024):
        cpu["read"] += time.process_time() - t
        for name, op in zip(names, steps):
            t = time.process_time()
            batch = op(batch)
            if DROP_REASON in batch.column_names:  # rejected rows leave, as the engine routes them
                batch = batch.filter(pc.is_null(batch.column(DROP_REASON))).drop_columns([DROP_REASON])
            cpu[name] += time.process_time() - t
        t = time.process_time()
    print(os.path.basename(path), " ".join(f"{k}={v:.2f}" for k, v in cpu.items()), f"sum={sum(cpu.values()):.2f}",
          flush=True)
"""


def bench_perfile(tmp: pathlib.Path, a) -> dict:
    """CPU seconds of each front operator on each file one worker of `front` meets with 2 workers
    (a light and a heavy copy, each first cold then warm), in one fresh process: where a worker's
    time goes, and what a file costs the first time a process meets its pages."""
    src = web_copies(tmp, max(a.repeat, 3))
    files = [str(src / f"{name}-{k}.warc.gz") for name in ("pages", "pages-heavy") for k in (0, 2)]
    before = load()
    ops = ",".join(step.split(":")[-1] for step in FRONT)
    proc = subprocess.run([PY, "-c", PER_FILE, ops, *files], cwd=ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    rows = {}
    for line in proc.stdout.split("\n"):
        if line.strip():
            name, *fields = line.split()
            rows[name] = {k: float(v) for k, v in (f.split("=") for f in fields)}
            print(f"perfile      {name:24s} " + " ".join(fields), flush=True)
    print(f"perfile      load {before} -> {load()}", flush=True)
    return {"bench": "perfile", "files": rows}


BENCHES = {"quickstart": bench_quickstart, "passthrough": bench_passthrough, "filters": bench_filters,
           "front": bench_front, "workers": bench_workers, "wordsetup": bench_wordsetup,
           "perfile": bench_perfile}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", choices=[*BENCHES, "all"])
    ap.add_argument("--docs", type=int, help="scale-corpus documents (passthrough 200000, filters 12000)")
    ap.add_argument("--docs-per-shard", type=int, help="scale-corpus rows per file (passthrough 50000, filters 3000)")
    ap.add_argument("--repeat", type=int, default=4, help="copies of the 990 web pages (front, workers)")
    ap.add_argument("--tasks", type=int, default=os.cpu_count() or 2, help="datatrove tasks = workers")
    ap.add_argument("--langs", default="en,fr,id,de,it,ru,ar,nl", help="languages (wordsetup)")
    ap.add_argument("--warm-ray", action="store_true",
                    help="filters, front, workers: also time gristmill joining a local Ray head started "
                         "beforehand (`ray start --head`, not timed), as when iterating from the shell")
    ap.add_argument("--ray", action="store_true",
                    help="filters, front: also time the same run with --executor ray (a Ray of its own; the "
                         "default auto runs a small local run on worker processes without Ray)")
    ap.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                    help="passthrough, filters, front, workers: skip the untimed run of ours before the timed "
                         "one (see warm_up)")
    ap.add_argument("--tmp", default="/tmp/gristmill-bench")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"{DATA} not found: the benchmarks need ../shared/data", file=sys.stderr)
        return 2
    tmp = pathlib.Path(a.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    names = list(BENCHES) if a.bench == "all" else [a.bench]
    results = [BENCHES[n](tmp, a) for n in names]
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
