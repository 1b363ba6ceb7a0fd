"""Near-duplicate removal benchmark: `minhash_dedup` on Ray vs datatrove's 4-stage MinHash vs
datasketch MinHash + MinHashLSH, on the same generated corpus, in one run.

    .venv/bin/python tools/bench_dedup.py                          # 50k and 200k docs, all three
    .venv/bin/python tools/bench_dedup.py --docs 200000 --methods ours,datasketch
    .venv/bin/python tools/bench_dedup.py --docs 1000000 --methods ours --no-truth   # scale run

The corpus comes from ../shared/data/make_scale_corpus.py (real paragraphs with planted exact and
near duplicates), generated into --workdir (a temp dir by default; never the repository).

Ground truth, computed here from the planted groups (an original and its planted copies): every
pair of a group whose exact Jaccard similarity of shingle sets (``operators._minhash.reference_
shingles``: lowercase, punctuation -> space, word 5-grams; character 5-grams for languages written
without spaces) is >= --threshold is a duplicate pair; pairs are clustered (connected components)
and each truth cluster of n documents should lose n - 1 of them.
A removed document counts as correct when the document it was removed in favour of (ours:
``dup_of``; datasketch: the indexed match; datatrove: the kept member of its cluster) is in its
truth cluster, or, for pairs outside the planted groups, when their own exact Jaccard is
>= threshold. precision = correct / removed, recall = correct within truth clusters / (sum n - 1).

Each method runs in a subprocess; its wall time covers reading the Parquet files to having every
decision (ours: the output dataset materialized in Ray's object store; datatrove: its four stages
incl. reading and writing; datasketch: the loop). Ray starts and runs a 2,000-document warm-up
before the clock starts (a running cluster has warm workers); datatrove's and datasketch's
process start-up is inside their time. Peak memory is sampled (PSS, every 0.5 s) over the
subprocess and all its descendants (for ours: driver, raylet, GCS, workers, object store); the
driver's own peak RSS is reported too. Cores: ours and datatrove use 2, datasketch 1.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
METHODS = ("ours", "datatrove", "datasketch")


# -- corpus and truth ---------------------------------------------------------------------------
def make_corpus(docs: int, workdir: pathlib.Path, seed: int = 0) -> pathlib.Path:
    out = workdir / f"corpus-{docs}-{seed}"
    if (out / "duplicates_truth.parquet").exists():
        return out
    t0 = time.time()
    subprocess.run([sys.executable, str(DATA / "make_scale_corpus.py"), "--docs", str(docs), "--out", str(out),
                    "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL)
    print(f"[bench] corpus of {docs} docs in {time.time() - t0:.0f}s -> {out}", file=sys.stderr)
    return out


def corpus_files(corpus: pathlib.Path) -> list[str]:
    return sorted(glob.glob(str(corpus / "part-*.parquet")))


def load_texts(corpus: pathlib.Path, ids: set[str] | None = None) -> dict[str, tuple[str, str]]:
    out = {}
    for f in corpus_files(corpus):
        t = pq.read_table(f, columns=["id", "text", "language"])
        if ids is not None:
            t = t.filter(pc.is_in(t["id"], value_set=pa.array(sorted(ids))))
        for i, x, lang in zip(t["id"].to_pylist(), t["text"].to_pylist(), t["language"].to_pylist()):
            out[i] = (x, lang)
    return out


class _UF:
    def __init__(self):
        self.p = {}

    def find(self, x):
        self.p.setdefault(x, x)
        while self.p[x] != x:
            self.p[x] = self.p[self.p[x]]
            x = self.p[x]
        return x

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.p[max(ra, rb)] = min(ra, rb)


def truth_clusters(corpus: pathlib.Path, threshold: float) -> dict[str, str]:
    """doc id -> truth cluster id, for documents in a truth cluster of size >= 2 (cached)."""
    from operators._minhash import reference_jaccard, reference_shingles

    cache = corpus / f"truth-{threshold}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    t0 = time.time()
    planted = pq.read_table(corpus / "duplicates_truth.parquet").to_pylist()
    groups: dict[str, list[str]] = {}
    for r in planted:
        groups.setdefault(r["original_id"], [r["original_id"]]).append(r["id"])
    texts = load_texts(corpus, {d for g in groups.values() for d in g})
    uf = _UF()
    for members in groups.values():
        sh = [reference_shingles(*texts[m]) for m in members]
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                if reference_jaccard(sh[i], sh[j]) >= threshold:
                    uf.union(members[i], members[j])
    clusters: dict[str, list[str]] = {}
    for x in list(uf.p):
        clusters.setdefault(uf.find(x), []).append(x)
    out = {m: root for root, ms in clusters.items() if len(ms) > 1 for m in ms}
    cache.write_text(json.dumps(out))
    print(f"[bench] truth: {len(planted)} planted pairs -> {len({*out.values()})} clusters, "
          f"{len(out) - len({*out.values()})} docs to remove ({time.time() - t0:.0f}s)", file=sys.stderr)
    return out


def score(pred: dict[str, str], truth: dict[str, str], corpus: pathlib.Path, threshold: float) -> dict:
    """pred: removed id -> the id it was removed in favour of (None when unknown)."""
    from operators._minhash import reference_jaccard, reference_shingles

    n_truth = len(truth) - len(set(truth.values()))
    in_truth = sum(1 for r, k in pred.items() if k is not None and truth.get(r) is not None
                   and truth.get(r) == truth.get(k))
    others = [(r, k) for r, k in pred.items() if k is not None and not (truth.get(r) is not None
                                                                          and truth.get(r) == truth.get(k))]
    texts = load_texts(corpus, {x for p in others for x in p}) if others else {}
    extra = sum(1 for r, k in others
                if reference_jaccard(reference_shingles(*texts[r]), reference_shingles(*texts[k])) >= threshold)
    return {"removed": len(pred), "truth_removed": n_truth,
            "precision": round((in_truth + extra) / len(pred), 4) if pred else None,
            "recall": round(in_truth / n_truth, 4) if n_truth else None,
            "correct_outside_planted": extra}


# -- memory sampling -------------------------------------------------------------------------
class TreeMemory(threading.Thread):
    """Peak of the summed PSS of a process and all its descendants."""

    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.stop = pid, every, 0, False

    def run(self):
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop:
            total = 0
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    total += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.every)


def run_method(method: str, corpus: pathlib.Path, out: pathlib.Path, args) -> dict:
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", method, "--corpus", str(corpus),
           "--result", str(out), "--threshold", str(args.threshold)]
    env = dict(os.environ)
    # see the report: Ray's default soft limit (one worker per CPU) makes every step of a global
    # operator restart worker processes on a 2-core machine
    env.setdefault("RAY_num_workers_soft_limit", "8")
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=str(ROOT))
    mon = TreeMemory(proc.pid)
    mon.start()
    rc = proc.wait()
    mon.stop = True
    mon.join(timeout=5)
    if rc != 0:
        raise SystemExit(f"[bench] {method} failed (exit {rc})")
    stats = json.loads((out.with_suffix(".json")).read_text())
    stats["peak_pss_mb"] = round(mon.peak / 2**20)
    stats["subprocess_s"] = round(time.time() - t0, 1)
    return stats


# -- workers (run in their own process) -----------------------------------------------------------
def _maxrss_mb() -> int:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def worker_ours(corpus: pathlib.Path, result: pathlib.Path, threshold: float) -> dict:
    from pipeline.runtime import init_ray

    ray = init_ray(num_cpus=2, quiet=True)
    import ray.data

    from operators.base import DROP_REASON, RunContext
    from operators.minhash_dedup import MinHashDedup

    files = corpus_files(corpus)
    cols = ["id", "text", "language"]
    op = MinHashDedup(threshold=threshold)
    warm = ray.data.read_parquet(files[:1], columns=cols).limit(2000)
    op.run(warm, RunContext(step_id="warmup", output_dir=str(result.parent))).materialize()

    t0 = time.time()
    ds = ray.data.read_parquet(files, columns=cols)
    out = op.run(ds, RunContext(step_id="dedup", output_dir=str(result.parent))).materialize()
    seconds = time.time() - t0
    n = out.count()
    removed = out.map_batches(
        lambda t: t.filter(pc.is_valid(t[DROP_REASON])).select(["id", "dup_of"]), batch_format="pyarrow")
    pairs = pa.concat_tables([ray.get(r) for r in removed.to_arrow_refs()] or [pa.table({"id": [], "dup_of": []})])
    pq.write_table(pairs, result)
    return {"method": "ours", "docs": n, "seconds": round(seconds, 2), "cores": 2, "driver_maxrss_mb": _maxrss_mb()}


def worker_datasketch(corpus: pathlib.Path, result: pathlib.Path, threshold: float) -> dict:
    from datasketch import MinHash, MinHashLSH

    from operators._minhash import reference_shingles

    t0 = time.time()
    lsh = MinHashLSH(threshold=threshold, num_perm=112)
    removed_id, removed_of, n = [], [], 0
    for f in corpus_files(corpus):
        t = pq.read_table(f, columns=["id", "text", "language"])
        for i, text, lang in zip(t["id"].to_pylist(), t["text"].to_pylist(), t["language"].to_pylist()):
            n += 1
            m = MinHash(num_perm=112)
            m.update_batch([" ".join(s).encode("utf-8") for s in reference_shingles(text, lang)])
            hits = lsh.query(m)
            if hits:
                removed_id.append(i)
                removed_of.append(min(hits))
            else:
                lsh.insert(i, m)
    seconds = time.time() - t0
    pq.write_table(pa.table({"id": removed_id, "dup_of": removed_of}), result)
    return {"method": "datasketch", "docs": n, "seconds": round(seconds, 2), "cores": 1,
            "driver_maxrss_mb": _maxrss_mb()}


def worker_datatrove(corpus: pathlib.Path, result: pathlib.Path, threshold: float) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter

    work = pathlib.Path(tempfile.mkdtemp(prefix="dt-", dir=result.parent))
    cfg = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    n_files = len(corpus_files(corpus))
    tasks = max(2, n_files)

    def reader():
        return ParquetReader(str(corpus), glob_pattern="part-*.parquet", text_key="text", id_key="id")

    def adapter(self, doc):
        return {"id": doc.id, "cluster": doc.metadata.get("minhash_cluster_id", -1)}

    sig_step = MinhashDedupSignature(output_folder=str(work / "sigs"), config=cfg)
    # datatrove 0.10.1 hands str to xxhash, which xxhash 4.x (the pinned version) refuses; hash the
    # UTF-8 bytes instead (what older xxhash did implicitly)
    sig_step._hash_func = _xxh64_str
    stages = [
        LocalPipelineExecutor([reader(), sig_step],
                              tasks=tasks, workers=2, logging_dir=str(work / "log1")),
        LocalPipelineExecutor([MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"),
                                                   config=cfg)],
                              tasks=cfg.num_buckets, workers=2, logging_dir=str(work / "log2")),
        LocalPipelineExecutor([MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "ids"),
                                                   config=cfg, save_cluster_id=True)],
                              tasks=1, workers=1, logging_dir=str(work / "log3")),
        LocalPipelineExecutor([reader(), MinhashDedupFilter(input_folder=str(work / "ids"), load_cluster_ids=True,
                                                            exclusion_writer=ParquetWriter(str(work / "removed"),
                                                                                           adapter=adapter)),
                               ParquetWriter(str(work / "kept"), adapter=adapter)],
                              tasks=tasks, workers=2, logging_dir=str(work / "log4")),
    ]
    t0 = time.time()
    stage_s = []
    for ex in stages:
        s0 = time.time()
        ex.run()
        stage_s.append(round(time.time() - s0, 1))
    seconds = time.time() - t0

    def rows(folder):
        for f in sorted(glob.glob(str(work / folder / "*.parquet"))):
            yield from pq.read_table(f, columns=["id", "cluster"]).to_pylist()

    keeper = {}
    n = 0
    for r in rows("kept"):
        n += 1
        if r["cluster"] != -1:
            keeper[r["cluster"]] = r["id"]
    rem = list(rows("removed"))
    n += len(rem)
    pq.write_table(pa.table({"id": [r["id"] for r in rem], "dup_of": [keeper.get(r["cluster"]) for r in rem]},
                            schema=pa.schema([("id", pa.string()), ("dup_of", pa.string())])), result)
    return {"method": "datatrove", "docs": n, "seconds": round(seconds, 2), "cores": 2, "stage_s": stage_s,
            "driver_maxrss_mb": _maxrss_mb()}


def _xxh64_str(data):
    import xxhash

    return xxhash.xxh64_intdigest(data.encode("utf-8") if isinstance(data, str) else data)


WORKERS = {"ours": worker_ours, "datasketch": worker_datasketch, "datatrove": worker_datatrove}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, nargs="+", default=[50_000, 200_000])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where corpora and results go (default: a temp dir)")
    ap.add_argument("--no-truth", action="store_true", help="skip precision/recall (scale runs)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.worker:
        res = pathlib.Path(a.result)
        stats = WORKERS[a.worker](pathlib.Path(a.corpus), res, a.threshold)
        res.with_suffix(".json").write_text(json.dumps(stats))
        return 0

    work = pathlib.Path(a.workdir or tempfile.mkdtemp(prefix="gristmill-bench-dedup-"))
    work.mkdir(parents=True, exist_ok=True)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    report = []
    for docs in a.docs:
        corpus = make_corpus(docs, work, a.seed)
        truth = None if a.no_truth else truth_clusters(corpus, a.threshold)
        rows = {}
        for m in methods:
            out = work / f"result-{docs}-{m}.parquet"
            print(f"[bench] {docs} docs: {m} ...", file=sys.stderr, flush=True)
            st = run_method(m, corpus, out, a)
            st["docs_per_s"] = round(st["docs"] / st["seconds"])
            st["docs_per_s_per_core"] = round(st["docs"] / st["seconds"] / st["cores"])
            if truth is not None:
                t = pq.read_table(out)
                pred = dict(zip(t["id"].to_pylist(), t["dup_of"].to_pylist()))
                st.update(score(pred, truth, corpus, a.threshold))
            rows[m] = st
            print(json.dumps({"docs_in_corpus": docs, **st}), flush=True)
        if "ours" in rows:
            for peer in ("datatrove", "datasketch"):
                if peer in rows:
                    rows["ours"][f"x_{peer}_docs_per_s"] = round(rows["ours"]["docs_per_s"] / rows[peer]["docs_per_s"], 2)
                    rows["ours"][f"x_{peer}_per_core"] = round(
                        rows["ours"]["docs_per_s_per_core"] / rows[peer]["docs_per_s_per_core"], 2)
        report.append({"docs": docs, "results": rows})
        print(_table(docs, rows), flush=True)
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(report, indent=2))
    print(f"[bench] work dir: {work}", file=sys.stderr)
    return 0


def _table(docs: int, rows: dict) -> str:
    head = f"\n{docs} docs | {'method':<10} | {'seconds':>8} | {'docs/s':>7} | {'/core':>6} | {'P':>6} | {'R':>6} | {'peak MB':>7} | {'driver MB':>9}"
    lines = [head, "-" * len(head)]
    for m, s in rows.items():
        lines.append(f"{'':>{len(str(docs)) + 5}} | {m:<10} | {s['seconds']:>8} | {s['docs_per_s']:>7} | "
                     f"{s['docs_per_s_per_core']:>6} | {str(s.get('precision', '-')):>6} | {str(s.get('recall', '-')):>6} | "
                     f"{s['peak_pss_mb']:>7} | {s['driver_maxrss_mb']:>9}")
    if "ours" in rows:
        extra = {k: v for k, v in rows["ours"].items() if k.startswith("x_")}
        if extra:
            lines.append("ours vs peers: " + ", ".join(f"{k[2:]} {v}x" for k, v in extra.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
