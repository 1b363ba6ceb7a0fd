"""Soak run: N generated documents (default 5M) through the quickstart's steps, watching memory.

Generates JSONL.gz files of the sample corpus (pipeline.samples, one seed per file, written file by
file so generation never holds the corpus), writes a recipe with the steps of
recipes/quickstart.yaml after extraction (the corpus is text already), runs `gristmill run` in a
subprocess under `nice`, and samples every second:
- the driver's RSS (the `gristmill run` process): must not grow with the corpus, so the note
  gives its peak in the first fifth of the run and over the whole run;
- every Ray worker process under it (`ray::...`): peak RSS of one worker and of all together.

    .venv/bin/python tools/soak.py                      # 5M docs, 50 files (hours on 2 cores)
    .venv/bin/python tools/soak.py --docs 200000 --files 8

The closing note is printed as JSON and written to <work>/soak.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.measure_run import run_watched  # noqa: E402


def generate(work: Path, docs: int, files: int) -> list[Path]:
    from pipeline.samples import multilingual_docs, write_docs

    out = work / "corpus"
    out.mkdir(parents=True, exist_ok=True)
    per = -(-docs // files)
    paths = []
    for k in range(files):
        n = min(per, docs - k * per)
        if n <= 0:
            break
        p = out / f"part-{k:05d}.jsonl.gz"
        paths.append(p)
        if p.exists():
            continue
        chunk = [{**{x: v for x, v in d.items() if x not in ("lang", "id")}, "id": f"f{k:04d}-{i:08d}"}
                 for i, d in enumerate(multilingual_docs(n, seed=k))]
        write_docs(chunk, str(p), "jsonl")
    return paths


def recipe(work: Path, workers: int | None) -> Path:
    quick = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())
    steps = [s for s in quick["steps"] if s["op"] != "html_extract"]
    r = {"name": "soak", "input": {"format": "jsonl", "paths": [str(work / "corpus" / "*.jsonl.gz")],
                                   "batch_rows": 1024},
         "output": str(work / "out"), "seed": 0, "steps": steps}
    p = work / "soak.yaml"
    p.write_text(yaml.safe_dump(r, sort_keys=False))
    return p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=5_000_000)
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--work", default=None, help="working dir (default: a temp dir); corpus files are reused")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="gristmill-soak-"))
    t0 = time.time()
    files = generate(work, args.docs, args.files)
    gen_s = time.time() - t0
    p = recipe(work, args.workers)
    cmd = ["nice", "-n", "10", sys.executable, "-m", "pipeline.cli", "run", str(p), "--quiet", "--no-resume"]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    rc, wall, mem, err = run_watched(cmd)
    note = {"docs": args.docs, "files": len(files), "generate_s": round(gen_s, 1), "run_s": round(wall, 1),
            "rc": rc, **mem, "command": " ".join(sys.argv)}
    try:
        stats = json.loads((work / "out" / "stats.json").read_text())
        note["docs_read"] = stats["steps"][0]["docs_in"]
        note["docs_out"] = stats["steps"][-1]["docs_out"]
        note["invariant_ok"] = stats["invariant_ok"]
    except (OSError, ValueError, KeyError, IndexError):
        note["stderr_tail"] = err
    (work / "soak.json").write_text(json.dumps(note, indent=1))
    print(json.dumps(note, indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(main())
