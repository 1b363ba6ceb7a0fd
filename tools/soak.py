"""Soak run: N generated documents (default 5M) through the quickstart's steps, watching memory.

Generates JSONL.gz files (soak_docs: one seed per file, written file by file, two processes, so
generation never holds the corpus), writes a recipe with the steps of
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
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.measure_run import run_watched  # noqa: E402


POOL = 20_000  # synthetic sentences per language


@functools.lru_cache(maxsize=1)  # the same pools for every file a generating process writes
def _sentence_pools(seed: int = 0) -> dict[str, list[str]]:
    """Per language, POOL sentences of 8-16 words drawn from the words of pipeline.samples'
    sentences in that language (characters for Chinese)."""
    import numpy as np

    from pipeline.samples import SENTENCES

    rng = np.random.default_rng(seed)
    pools = {}
    for lang, sents in SENTENCES.items():
        cjk = lang == "zh"
        words = sorted({w for s in sents for w in (s if cjk else s.split()) if w.isalnum()})
        idx = rng.integers(0, len(words), size=(POOL, 16))
        lens = rng.integers(8, 17, size=POOL)
        sep, end = ("", "。") if cjk else (" ", ".")
        pools[lang] = [sep.join(words[j] for j in row[:m]).capitalize() + end for row, m in zip(idx, lens)]
    return pools


def soak_docs(n: int, seed: int, pools: dict[str, list[str]]) -> list[dict]:
    """`n` documents of 3-10 sentences from the language's pool, so two documents rarely share
    text by chance (multilingual_docs draws from ~10 sentences a language: at 100k documents
    nearly every document is a near copy of thousands of others, which no crawl looks like).
    Planted: ~5% exact copies (half differing in case and whitespace), ~3% near copies (one
    sentence replaced), ~5% boilerplate junk."""
    import random

    from pipeline.samples import JUNK, WEIGHTS

    rng = random.Random(seed)
    langs, weights = zip(*WEIGHTS.items())
    docs: list[dict] = []
    lang_of: list[str] = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.08 and docs:
            k = rng.randrange(len(docs))
            lang, text = lang_of[k], docs[k]["text"]
            if roll < 0.025:
                text = "  " + text.upper().replace(" ", "   ") + "\n"
            elif roll >= 0.05 and lang in pools:  # a near copy
                paras = text.split("\n\n")
                paras[rng.randrange(len(paras))] = rng.choice(pools[lang])
                text = "\n\n".join(paras)
        elif roll < 0.13:
            lang, text = "und", " ".join(rng.sample(JUNK, rng.randint(1, 2)))
        else:
            lang = rng.choices(langs, weights)[0]
            text = "\n\n".join(rng.choices(pools[lang], k=rng.randint(3, 10)))
        docs.append({"id": f"s{seed:04d}-{i:08d}", "text": text, "url": f"https://example.{lang}/page/{i}"})
        lang_of.append(lang)
    return docs


def _write_part(args: tuple) -> None:
    from pipeline.samples import write_docs

    path, n, seed = args
    write_docs(soak_docs(n, seed, _sentence_pools()), str(path), "jsonl")


def generate(work: Path, docs: int, files: int) -> list[Path]:
    from multiprocessing import Pool

    out = work / "corpus"
    out.mkdir(parents=True, exist_ok=True)
    per = -(-docs // files)
    parts = [(out / f"part-{k:05d}.jsonl.gz", min(per, docs - k * per), k) for k in range(files) if docs > k * per]
    todo = [p for p in parts if not p[0].exists()]
    with Pool(2) as pool:
        pool.map(_write_part, todo, chunksize=1)
    return [p[0] for p in parts]


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
