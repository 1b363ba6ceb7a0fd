"""Benchmark zip_select against the reference ZIP (../shared/anchors/zip/ZIP.py) on one pool.

    .venv/bin/python tools/bench_zip.py [--pool DIR] [--budgets 300 1000] [--reference-budgets 300]
    .venv/bin/python tools/bench_zip.py --scale DIR --groups 8 --keep-fraction 0.1   # on Ray

Default pool: 20,000 documents from ../shared/data/make_scale_corpus.py (built into /tmp once).
For each budget: wall time of the reference (run unchanged in a subprocess with its own defaults
K1=10000 K2=200 K3=100 n_jobs=64 -> min(cpus, 64) processes; it compresses the Python repr of
{"id", "source", "text"} dicts) and of zip_select (in this process, one core, same K1/K2/K3; with
its zstd backend, and with backend zlib = the reference's compressor and window), and
for each selection: zlib-9 and zstd-19 compression ratio of the selected texts joined by newlines
(lower = more diverse), and the planted duplicate pairs (near / exact, from duplicates_truth.parquet)
selected together; the same figures for random subsets of the same size (mean of --randoms
draws). The reference is skipped cleanly when ../shared/anchors is absent.

--scale runs zip_select as a recipe step would (ray.data, groups spread over the workers) on a
pool split into --groups groups by id, and reports wall time and the driver's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import signal
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "anchors" / "zip" / "ZIP.py"
MAKE_CORPUS = SHARED / "data" / "make_scale_corpus.py"


def ensure_pool(path: str | None, docs: int) -> pathlib.Path:
    if path:
        return pathlib.Path(path)
    out = pathlib.Path(tempfile.gettempdir()) / f"gristmill-zip-pool-{docs}"
    if not (out / "duplicates_truth.parquet").exists():
        if not MAKE_CORPUS.exists():
            sys.exit(f"no --pool given and {MAKE_CORPUS} is absent")
        subprocess.run([sys.executable, str(MAKE_CORPUS), "--docs", str(docs), "--out", str(out)], check=True)
    return out


def read_pool(pool: pathlib.Path) -> tuple[pa.Table, pa.Table | None]:
    parts = sorted(pool.glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    truth = pool / "duplicates_truth.parquet"
    return table, (pq.read_table(truth) if truth.exists() else None)


def ratios(texts: list[str]) -> tuple[float, float]:
    import zstandard as zstd

    b = "\n".join(texts).encode()
    return len(b) / len(zlib.compress(b, 9)), len(b) / len(zstd.ZstdCompressor(level=19).compress(b))


def dup_pairs(ids: list[str], truth: pa.Table | None) -> dict[str, int]:
    if truth is None:
        return {}
    chosen = pa.array(ids, pa.string())
    both = pc.and_(pc.is_in(truth.column("id"), chosen), pc.is_in(truth.column("original_id"), chosen))
    kinds = truth.filter(both).column("kind").to_pylist()
    return {"near": kinds.count("near"), "exact": kinds.count("exact")}


def figures(ids: list[str], text_of: dict[str, str], truth) -> dict:
    z9, zs19 = ratios([text_of[i] for i in ids])
    return {"n": len(ids), "zlib9": round(z9, 4), "zstd19": round(zs19, 4), "dup_pairs": dup_pairs(ids, truth)}


def run_reference(table: pa.Table, budget: int, timeout: float) -> dict:
    if not REFERENCE.exists():
        return {"skipped": f"{REFERENCE} absent"}
    with tempfile.TemporaryDirectory() as tmp:
        pool = [{"id": i, "source": s, "text": t} for i, s, t in
                zip(table.column("id").to_pylist(), table.column("source").to_pylist(), table.column("text").to_pylist())]
        with open(f"{tmp}/pool.json", "w") as f:
            json.dump(pool, f)
        t0 = time.perf_counter()
        # its own process group: on a timeout its multiprocessing workers go too
        proc = subprocess.Popen([sys.executable, str(REFERENCE), "--data_path", f"{tmp}/pool.json", "--save_path",
                                 f"{tmp}/out.json", "--budget", str(budget)], cwd=tmp,
                                stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            if proc.wait(timeout=timeout):
                raise RuntimeError(f"the reference exited with {proc.returncode}")
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"did_not_finish_s": timeout}
        wall = time.perf_counter() - t0
        with open(f"{tmp}/out.json") as f:
            ids = [d["id"] for d in json.load(f)]
    return {"wall_s": round(wall, 2), "ids": ids}


def run_zip_select(table: pa.Table, budget: int, backend: str) -> dict:
    from operators.zip_select import ZipSelect

    op = ZipSelect(budget_docs=budget, backend=backend)
    t0 = time.perf_counter()
    out = op.select(table.select(["id", "text"]))
    wall = time.perf_counter() - t0
    kept = out.filter(pc.is_valid(out.column("zip_rank"))).sort_by("zip_rank")
    return {"wall_s": round(wall, 2), "ids": kept.column("id").to_pylist()}


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def bench(args) -> dict:
    pool = ensure_pool(args.pool, args.docs)
    table, truth = read_pool(pool)
    text_of = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    all_ids = table.column("id").to_pylist()
    rng = np.random.default_rng(0)
    report = {"pool": str(pool), "docs": table.num_rows, "runs": []}
    for budget in args.budgets:
        row: dict = {"budget": budget, "load_before": load()}
        for backend in args.backends:
            ours = run_zip_select(table, budget, backend)
            row[f"zip_select_{backend}"] = {"wall_s": ours["wall_s"], **figures(ours["ids"], text_of, truth)}
        ours_s = row[f"zip_select_{args.backends[0]}"]["wall_s"]
        if budget in args.reference_budgets:
            ref = run_reference(table, budget, args.reference_timeout)
            row["reference"] = {k: v for k, v in ref.items() if k != "ids"}
            if "ids" in ref:
                row["reference"].update(figures(ref["ids"], text_of, truth))
                row["speedup"] = round(ref["wall_s"] / max(ours_s, 1e-9), 1)
        draws = [figures([all_ids[i] for i in rng.choice(len(all_ids), budget, replace=False)], text_of, truth)
                 for _ in range(args.randoms)]
        row["random_mean"] = {
            "zlib9": round(float(np.mean([d["zlib9"] for d in draws])), 4),
            "zstd19": round(float(np.mean([d["zstd19"] for d in draws])), 4),
            "dup_pairs": {k: round(float(np.mean([d["dup_pairs"].get(k, 0) for d in draws])), 2)
                          for k in ("near", "exact")}}
        row["load_after"] = load()
        report["runs"].append(row)
        print(json.dumps(row), flush=True)
    return report


def scale(args) -> dict:
    """zip_select on Ray over a large pool split into groups: wall time and driver peak RSS."""
    import ray.data

    from operators.base import RunContext
    from operators.zip_select import ZipSelect
    from pipeline.runtime import init_ray

    init_ray(num_cpus=args.cpus, quiet=True)
    files = sorted(str(p) for p in pathlib.Path(args.scale).glob("part-*.parquet"))
    groups = args.groups

    def add_group(batch: pa.Table) -> pa.Table:
        # ids end in the document's position: position mod groups -> groups of equal size
        pos = pc.cast(pc.utf8_slice_codeunits(batch.column("id"), -9), pa.int64())
        return batch.append_column("zip_group", pc.cast(pc.remainder(pos, groups), pa.string()))

    t0 = time.perf_counter()
    ds = ray.data.read_parquet(files, columns=["id", "text"]).map_batches(add_group, batch_format="pyarrow")
    ds = ds.materialize()
    t_read = time.perf_counter() - t0
    op = ZipSelect(keep_fraction=args.keep_fraction, group_by="zip_group")
    out = op.run(ds, RunContext(step_id="zip", output_dir=tempfile.gettempdir()))
    counts = out.map_batches(lambda b: pa.table({"kept": [int(pc.sum(pc.is_null(b.column("drop_reason"))).as_py() or 0)],
                                                 "rows": [b.num_rows]}), batch_format="pyarrow").to_pandas()
    wall = time.perf_counter() - t0
    res = {"docs": int(counts["rows"].sum()), "kept": int(counts["kept"].sum()), "groups": groups,
           "keep_fraction": args.keep_fraction, "wall_s": round(wall, 1), "read_s": round(t_read, 1),
           "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "load_after": load()}
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", help="folder from make_scale_corpus.py (default: build 20,000 docs in /tmp)")
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--budgets", type=int, nargs="+", default=[300, 1000])
    ap.add_argument("--reference-budgets", type=int, nargs="*", default=[300],
                    help="budgets the reference runs for (it did not finish 1000 in 25 minutes)")
    ap.add_argument("--reference-timeout", type=float, default=1800)
    ap.add_argument("--randoms", type=int, default=5)
    ap.add_argument("--backends", nargs="+", default=["zstd", "zlib"], choices=["zstd", "zlib"],
                    help="zip_select's compressor (the first one is timed against the reference)")
    ap.add_argument("--scale", help="folder of a large pool: run the grouped Ray benchmark on it instead")
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--keep-fraction", type=float, default=0.1)
    ap.add_argument("--cpus", type=int, default=None)
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args()
    report = scale(args) if args.scale else bench(args)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
