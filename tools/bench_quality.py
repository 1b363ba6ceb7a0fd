"""Throughput of language ID + the four heuristic filters: gristmill vs datatrove 0.10.1.

    .venv/bin/python tools/bench_quality.py            # web page text from ../shared/data
    .venv/bin/python tools/bench_quality.py --all      # + OSCAR, UDHR, peers (multilingual)

Same documents, one core each (the process is pinned to one CPU, polars to one thread), in one
run:

* datatrove: ``LocalPipelineExecutor(tasks=1, workers=1)`` over ``[documents, LanguageFilter(),
  GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(), FineWebQualityFilter()]``
  (the FineWeb order; a dropped document skips the later filters, as in any datatrove pipeline);
* gristmill: ``language_id`` then the four filters on Arrow batches of 1024, each step seeing
  only the rows the previous one kept (what the executor does), the word tokenizer picked from
  the ``language`` column.

Both sides are warmed up first (models loaded, spaCy languages built), so the figures are
steady-state docs/s; the tokens our filters remember between steps are forgotten before the timed
run. Times are CPU seconds of this process (``time.process_time``; datatrove with one worker runs
in-process), so other load on a shared machine does not skew the ratio much. Also: ``language_id`` alone vs the raw fastText model's predict loop
(tools/bench_langid.py). Prints docs/s per core and the ratios.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("POLARS_MAX_THREADS", "1")
ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from operators.base import kept_mask  # noqa: E402
from operators.language_id import LanguageId, default_model_path  # noqa: E402
from operators.quality_rules import (C4Quality, FineWebQuality, GopherQuality, GopherRepetition,  # noqa: E402
                                    clear_caches)


def ours(texts: list[str], batch_size: int = 1024) -> tuple[float, dict]:
    steps = [LanguageId(), GopherRepetition(), GopherQuality(), C4Quality(), FineWebQuality()]
    for s in steps:
        s.ensure_setup()
    clear_caches()  # no tokens remembered from an earlier run over the same texts
    counts = {s.name: 0 for s in steps}
    t0 = time.process_time()
    for i in range(0, len(texts), batch_size):
        batch = pa.table({"id": [str(j) for j in range(i, i + len(texts[i:i + batch_size]))],
                          "text": texts[i:i + batch_size]})
        for s in steps:
            batch = s.process(batch)
            keep = kept_mask(batch)
            counts[s.name] += batch.num_rows - pc.sum(keep).as_py() if batch.num_rows else 0
            batch = batch.filter(keep).drop_columns(["drop_reason"]) if "drop_reason" in batch.column_names else batch
            if not batch.num_rows:
                break
    return time.process_time() - t0, counts


def datatrove(texts: list[str]) -> tuple[float, dict]:
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter, LanguageFilter)

    lf = LanguageFilter()
    lf.model.MODEL_URL = "file://" + default_model_path()
    filters = [lf, GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(), FineWebQualityFilter()]
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    with tempfile.TemporaryDirectory() as tmp:
        ex = LocalPipelineExecutor(pipeline=[docs, *filters], tasks=1, workers=1, logging_dir=tmp)
        t0 = time.process_time()
        ex.run()  # workers=1: runs in this process, so its CPU time is counted
        dt = time.process_time() - t0
    dropped = {type(f).__name__: int(f.stats.get("dropped", 0)) if hasattr(f.stats, "get") else None for f in filters}
    return dt, dropped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--all", action="store_true", help="also OSCAR, UDHR and peers' documents")
    ap.add_argument("--limit", type=int, default=None, help="first N documents")
    ap.add_argument("--langid-repeats", type=int, default=3)
    args = ap.parse_args(argv)
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core for both sides
    except (AttributeError, OSError):
        pass
    from tools.bench_langid import bench_language_id
    from tools.quality_docs import SHARED_DATA, jsonl_docs, web_docs

    rows = web_docs(SHARED_DATA) + (jsonl_docs(SHARED_DATA) if args.all else [])
    texts = [r["text"] for r in rows][: args.limit]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"{len(texts)} documents, {mb:.1f} MB, {mb * 1e6 / max(len(texts), 1):.0f} B mean; one core")
    # warm-up: models, spaCy languages, fastText
    warm = texts[: min(len(texts), 64)]
    ours(texts)  # builds every spaCy language the batch needs
    datatrove(warm)
    t_ours, c_ours = ours(texts)
    t_dt, c_dt = datatrove(texts)
    ours_s, dt_s = len(texts) / t_ours, len(texts) / t_dt
    print(f"datatrove LanguageFilter + 4 filters : {dt_s:9.1f} docs/s per core  ({t_dt:.1f} s CPU)")
    print(f"gristmill language_id + 4 filters    : {ours_s:9.1f} docs/s per core  ({t_ours:.1f} s CPU)")
    print(f"ratio gristmill / datatrove          : {ours_s / dt_s:9.1f}x   (target >= 10x)")
    print(f"  dropped per step, gristmill: {c_ours}")
    r = bench_language_id(texts, repeats=args.langid_repeats)
    print(f"raw lid.176 predict loop             : {r['raw_docs_s']:9.1f} docs/s per core")
    print(f"gristmill language_id alone          : {r['ours_docs_s']:9.1f} docs/s per core")
    print(f"ratio language_id / raw model        : {r['ratio']:9.2f}    (target >= 0.5); labels agree {r['label_agreement']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
