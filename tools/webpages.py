"""The 990 evaluation pages of ../shared/data/web (trafilatura's eval set) and their gold.

Shared by the extraction score / speed tools and the quality benchmark:

    from tools.webpages import load_pages, load_gold
    pages = load_pages()            # [(url, html_bytes), ...] in gold order, light then heavy
    gold = load_gold()              # [{"url", "with", "without", ...}, ...] same order
"""
from __future__ import annotations

import gzip
import json
import pathlib
from typing import Iterable

DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "web"
SETS = {"light": ("pages.warc.gz", "gold.jsonl.gz"), "heavy": ("pages-heavy.warc.gz", "gold-heavy.jsonl.gz")}


def _sets(which: str) -> Iterable[str]:
    if which == "all":
        return ("light", "heavy")
    if which not in SETS:
        raise ValueError(f"which must be all, light or heavy, not {which!r}")
    return (which,)


def load_pages(which: str = "all", data_dir: str | pathlib.Path | None = None,
               with_content_type: bool = False) -> list[tuple]:
    """(url, html_bytes) pairs — or (url, html_bytes, http_content_type) with
    ``with_content_type`` — for the pages of ``which`` (all | light | heavy), in gold order."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    root = pathlib.Path(data_dir) if data_dir else DATA
    out = []
    for s in _sets(which):
        with open(root / SETS[s][0], "rb") as f:
            for r in ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=True):
                url = r.headers["WARC-Target-URI"]
                body = r.reader.read()
                if with_content_type:
                    out.append((url, body, r.http_headers.get("Content-Type")))
                else:
                    out.append((url, body))
    return out


def load_gold(which: str = "all", data_dir: str | pathlib.Path | None = None) -> list[dict]:
    """Gold dicts (url, key, file, with, without, optional metadata) in page order."""
    root = pathlib.Path(data_dir) if data_dir else DATA
    out = []
    for s in _sets(which):
        with gzip.open(root / SETS[s][1], "rt", encoding="utf-8") as f:
            out.extend(json.loads(line) for line in f if line.strip())
    return out


def snippet_scores(text: str | None, gold: dict) -> tuple[float | None, float | None]:
    """(share of `with` snippets found, share of `without` snippets absent) for one page;
    None for a share whose list is empty."""
    text = text or ""
    w, wo = gold.get("with") or [], gold.get("without") or []
    found = sum(1 for s in w if s in text) / len(w) if w else None
    absent = sum(1 for s in wo if s not in text) / len(wo) if wo else None
    return found, absent


def score(texts: list[str | None], golds: list[dict]) -> dict[str, float]:
    """Snippet score over pages: mean per-page share of `with` found (recall), of `without`
    absent (precision), and their mean (the headline score)."""
    rec, pre = [], []
    for t, g in zip(texts, golds):
        a, b = snippet_scores(t, g)
        if a is not None:
            rec.append(a)
        if b is not None:
            pre.append(b)
    r = sum(rec) / len(rec) if rec else 0.0
    p = sum(pre) / len(pre) if pre else 0.0
    return {"score": (r + p) / 2, "with_found": r, "without_absent": p, "pages": len(texts)}
