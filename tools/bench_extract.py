"""Pages/s per core of each html_extract extractor and of trafilatura called directly, on the
same pages in one run, with the ratios to trafilatura.

    .venv/bin/python -m tools.bench_extract                    # all 990 pages, 1 round
    .venv/bin/python -m tools.bench_extract --limit 200 --rounds 2

One process (= one core). The extractors run interleaved page by page (round-robin, rotating the
order), so load from other processes on the machine hits all of them alike; both CPU time
(time.process_time: what the extractor costs) and wall time are reported. Our extractors are
timed on the operator's path (charset resolution + extraction); trafilatura_direct gets the raw
bytes, as a user would call it.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings

from tools.score_extraction import EXTRACTORS, extractor_fn, select
from tools.webpages import load_gold, load_pages


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--which", default="all", choices=["all", "light", "heavy"])
    ap.add_argument("--extractors", default=",".join(EXTRACTORS))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fallback-chars", type=int, default=None,
                    help="fast extractor: trafilatura re-extracts pages whose text is shorter (0 = never)")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args(argv)
    if args.fallback_chars is not None:
        import operators._extract_fast as fx

        fx.FALLBACK_CHARS = args.fallback_chars
    warnings.filterwarnings("ignore")
    logging.getLogger("trafilatura").setLevel(logging.CRITICAL)
    pages, _ = select(load_pages(args.which, with_content_type=True), load_gold(args.which), args.limit, args.seed)
    names = [n.strip() for n in args.extractors.split(",") if n.strip()]
    fns = {n: extractor_fn(n) for n in names}
    for n in names:  # warm up imports / caches outside the timing
        fns[n](pages[0][1], pages[0][2])
    cpu = dict.fromkeys(names, 0.0)
    wall = dict.fromkeys(names, 0.0)
    count = 0
    for r in range(args.rounds):
        for i, (_, html, ctype) in enumerate(pages):
            k = (i + r) % len(names)
            for name in names[k:] + names[:k]:
                t0, w0 = time.process_time(), time.perf_counter()
                fns[name](html, ctype)
                cpu[name] += time.process_time() - t0
                wall[name] += time.perf_counter() - w0
            count += 1
    ref = "trafilatura_direct" if "trafilatura_direct" in names else names[0]
    print(f"{count} page extractions per extractor ({args.which}, {args.rounds} round(s)), one core")
    print(f"{'extractor':22s} {'pages/s cpu':>12s} {'x ' + ref:>24s} {'pages/s wall':>13s} {'x wall':>7s}")
    for name in names:
        pc, pw = count / cpu[name], count / wall[name]
        rc, rw = pc / (count / cpu[ref]), pw / (count / wall[ref])
        print(f"{name:22s} {pc:12.1f} {rc:24.2f} {pw:13.1f} {rw:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
