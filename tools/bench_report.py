"""Report size and build time on a large run (issue 24's budget: 1M documents, < 1 min, < 10 MB).

    python tools/bench_report.py --docs 1000000 --work /tmp/report-bench

Builds N documents from the generated sample corpus (each cut at a seeded random length, with a
unique id and URL; vectorized, seconds), runs two `length_filter` steps on them with
`gristmill run`, then times `gristmill report` and prints the file size. Everything lives under
--work (nothing in the repo).
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import textwrap
import time


def make_corpus(work: str, n: int, seed: int = 0) -> str:
    import numpy as np
    import polars as pl

    from pipeline.samples import build_sample

    sample = os.path.join(work, "sample")
    if not glob.glob(os.path.join(sample, "*.jsonl.gz")):
        build_sample("quickstart-sample", sample, n_docs=600, files=2)
    out = os.path.join(work, f"docs-{n}")
    if glob.glob(os.path.join(out, "*.parquet")):
        return out
    src = pl.concat([pl.read_ndjson(f) for f in sorted(glob.glob(os.path.join(sample, "*.jsonl.gz")))],
                    how="diagonal_relaxed")
    rng = np.random.default_rng(seed)
    df = src[rng.integers(0, len(src), n)]
    df = df.with_columns(pl.Series("cut", rng.integers(20, 1500, n)))
    df = df.with_columns(pl.col("text").str.slice(0, pl.col("cut")).alias("text"),
                         pl.format("d{}", pl.int_range(n)).alias("id"),
                         pl.format("https://site{}.example.{}/p/{}", pl.Series(rng.integers(0, 500, n)),
                                   pl.col("meta_lang"), pl.int_range(n)).alias("url"),
                         pl.col("meta_lang").alias("language"))
    df = df.select("id", "text", "url", "source", "language")
    os.makedirs(out, exist_ok=True)
    per = 50_000
    for i in range(0, n, per):
        df[i:i + per].write_parquet(os.path.join(out, f"part-{i // per:05d}.parquet"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--work", default="/tmp/gristmill-report-bench")
    a = ap.parse_args(argv)
    os.makedirs(a.work, exist_ok=True)
    docs = make_corpus(a.work, a.docs)
    recipe = os.path.join(a.work, "report-bench.yaml")
    out = os.path.join(a.work, "out")
    with open(recipe, "w") as f:
        f.write(textwrap.dedent(f"""\
            name: report-bench
            input: {{format: parquet, paths: ["{docs}/part-*.parquet"]}}
            output: {out}
            steps:
              - {{id: length, op: length_filter, params: {{min_chars: 200, max_chars: 1400}}}}
              - {{id: words, op: length_filter, params: {{min_words: 40}}}}
            """))
    exe = [sys.executable, "-m", "pipeline.cli"]
    subprocess.run(exe + ["run", recipe, "--quiet", "--address", "local"], check=True)
    t0, c0 = time.perf_counter(), os.times()
    subprocess.run(exe + ["report", out], check=True)
    c1 = os.times()
    wall = time.perf_counter() - t0
    cpu = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    size = os.path.getsize(os.path.join(out, "report.html"))
    print(f"report of {a.docs:,} documents: {wall:.1f} s wall, {cpu:.1f} s CPU, {size / 2**20:.1f} MB "
          f"(budget: < 60 s, < 10 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
