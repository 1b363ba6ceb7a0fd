"""Snippet score of each html_extract extractor and of trafilatura called directly, on the 990
pages of ../shared/data/web, printed side by side.

    .venv/bin/python -m tools.score_extraction                 # all 990 pages
    .venv/bin/python -m tools.score_extraction --which heavy --extractors fast,trafilatura_direct

score = mean over pages of the share of `with` snippets found in the text (with_found) and the
share of `without` snippets absent from it (without_absent), averaged: (with_found + without_absent) / 2.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
import warnings

from tools.webpages import load_gold, load_pages, score

EXTRACTORS = ("fast", "fast_nocascade", "trafilatura", "resiliparse", "trafilatura_direct")


def extractor_fn(name: str):
    """callable(html_bytes, http_content_type) -> text for an extractor name."""
    if name == "trafilatura_direct":
        import trafilatura

        return lambda html, ctype=None: trafilatura.extract(html)
    from operators._extract_charset import decode_html
    from operators.html_extract import _extract_one

    def run(html: bytes, ctype: str | None = None) -> str | None:
        text, _, _ = decode_html(html, ctype)
        if text is None:
            return None
        if name == "fast_nocascade":
            return _extract_one("fast", text, 0)[0]
        return _extract_one(name, text, None)[0]

    return run


def select(pages, golds, limit: int | None, seed: int):
    if not limit or limit >= len(pages):
        return pages, golds
    idx = sorted(random.Random(seed).sample(range(len(pages)), limit))
    return [pages[i] for i in idx], [golds[i] for i in idx]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--which", default="all", choices=["all", "light", "heavy"])
    ap.add_argument("--extractors", default=",".join(EXTRACTORS))
    ap.add_argument("--limit", type=int, default=None, help="random subset of this many pages")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fallback-chars", type=int, default=None,
                    help="fast extractor: trafilatura re-extracts pages whose text is shorter (0 = never)")
    args = ap.parse_args(argv)
    if args.fallback_chars is not None:
        import operators._extract_fast as fx

        fx.FALLBACK_CHARS = args.fallback_chars
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("trafilatura").setLevel(logging.CRITICAL)
    pages, golds = select(load_pages(args.which, with_content_type=True), load_gold(args.which),
                          args.limit, args.seed)
    names = [n.strip() for n in args.extractors.split(",") if n.strip()]
    print(f"{len(pages)} pages ({args.which})")
    print(f"{'extractor':22s} {'score':>7s} {'with_found':>10s} {'without_absent':>14s} {'cpu s':>7s}")
    results = {}
    for name in names:
        fn = extractor_fn(name)
        t = time.process_time()
        texts = [fn(h, ct) for _, h, ct in pages]
        dt = time.process_time() - t
        s = score(texts, golds)
        results[name] = s
        print(f"{name:22s} {s['score']:7.4f} {s['with_found']:10.4f} {s['without_absent']:14.4f} {dt:7.1f}",
              flush=True)
    if "fast" in results and "trafilatura_direct" in results:
        d = results["fast"]["score"] - results["trafilatura_direct"]["score"]
        print(f"fast - trafilatura_direct = {d:+.4f} (target >= -0.01)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
