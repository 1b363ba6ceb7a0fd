"""Throughput of the `language_id` operator vs the raw fastText model on the same texts.

    .venv/bin/python tools/bench_langid.py                       # real docs from ../shared/data
    .venv/bin/python tools/bench_langid.py --parquet DIR/part-00000.parquet --limit 20000

"Raw" is what any caller of the model has to do at least: a Python loop of
``model.predict(text.replace("\\n", " "))`` (fastText refuses newlines). "Ours" is
``LanguageId()(table)`` on Arrow batches of the operator's batch size: normalization, batched
predict, label/score columns and the drop_reason column. Both run in this process on one core,
interleaved, best of ``repeats``. Also reports how often the two labels agree.

``bench_language_id(texts)`` is the entry point other benchmarks (tools/bench_quality.py) call.
"""
from __future__ import annotations

import argparse
import gzip
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402

from operators.language_id import LanguageId, default_model_path, load_fasttext  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"


def real_texts(data: pathlib.Path = DEFAULT_DATA) -> dict[str, list[str]]:
    """The real documents the parity test uses: OSCAR sample, UDHR, peers' demo data and the main
    text of the 990 web pages (resiliparse, main_content=True)."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    def jsonl(path):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    out: dict[str, list[str]] = {
        "oscar": [d["text"] for d in jsonl(data / "oscar" / "oscar_sample.jsonl.gz")],
        "udhr": [d["text"] for d in jsonl(data / "oscar" / "udhr.jsonl.gz")],
        "peers": [],
        "web": [],
    }
    for path in sorted((data / "peers").glob("*/*.json*.gz")):
        if not path.name.startswith("attributes__"):
            out["peers"] += [r["text"] for r in jsonl(path) if isinstance(r.get("text"), str)]
    for path in sorted((data / "web").glob("*.warc.gz")):
        with open(path, "rb") as f:
            for rec in ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=True):
                body = rec.reader.read()
                out["web"].append(extract_plain_text(bytes_to_str(body, detect_encoding(body)), main_content=True))
    return out


def bench_language_id(texts: list[str], repeats: int = 3, batch_size: int | None = None, **params) -> dict:
    """docs/s of LanguageId(**params) vs the raw model's per-document predict, same texts, one core.

    Returns docs, mb, raw_docs_s, ours_docs_s, ratio (ours/raw), raw_mb_s, ours_mb_s,
    label_agreement (ours == raw top-1 label), seconds (best raw, best ours)."""
    texts = [t if t is not None else "" for t in texts]
    op = LanguageId(label_only=True, **params)
    op.ensure_setup()
    model = load_fasttext(params.get("model_path") or default_model_path())
    bs = batch_size or LanguageId.resources.batch_size
    n = len(texts)
    batches = [
        pa.table({"id": [str(i) for i in range(s, min(s + bs, n))], "text": texts[s : s + bs]}) for s in range(0, n, bs)
    ]
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    best_raw = best_ours = float("inf")
    raw_labels: list[str] = []
    ours_labels: list[str] = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        raw_labels = [model.predict(t.replace("\n", " "))[0][0] for t in texts]
        t1 = time.perf_counter()
        outs = [op.process(b) for b in batches]
        t2 = time.perf_counter()
        best_raw, best_ours = min(best_raw, t1 - t0), min(best_ours, t2 - t1)
        ours_labels = [x for o in outs for x in o.column("language").to_pylist()]
    agree = sum(r.removeprefix("__label__") == o for r, o in zip(raw_labels, ours_labels)) / max(n, 1)
    return {
        "docs": n,
        "mb": nbytes / 1e6,
        "raw_docs_s": n / best_raw,
        "ours_docs_s": n / best_ours,
        "ratio": best_raw / best_ours,
        "raw_mb_s": nbytes / 1e6 / best_raw,
        "ours_mb_s": nbytes / 1e6 / best_ours,
        "label_agreement": agree,
        "seconds": (best_raw, best_ours),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA, help="shared/data folder")
    ap.add_argument("--parquet", type=pathlib.Path, help="bench on this Parquet file's `text` instead")
    ap.add_argument("--limit", type=int, default=None, help="first N documents only")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-chars", type=int, default=None, help="LanguageId max_chars (off by default)")
    args = ap.parse_args(argv)
    if args.parquet:
        import pyarrow.parquet as pq

        texts = pq.read_table(args.parquet, columns=["text"]).column("text").to_pylist()
        source = str(args.parquet)
    else:
        parts = real_texts(args.data)
        texts = [t for v in parts.values() for t in v]
        source = ", ".join(f"{k} {len(v)}" for k, v in parts.items())
    texts = texts[: args.limit] if args.limit else texts
    params = {"max_chars": args.max_chars} if args.max_chars else {}
    r = bench_language_id(texts, repeats=args.repeats, **params)
    print(f"texts: {source} -> {r['docs']} docs, {r['mb']:.1f} MB (one core, best of {args.repeats})")
    print(f"raw lid.176 predict loop : {r['raw_docs_s']:8.0f} docs/s  {r['raw_mb_s']:.2f} MB/s")
    print(f"language_id operator     : {r['ours_docs_s']:8.0f} docs/s  {r['ours_mb_s']:.2f} MB/s")
    print(f"ratio ours/raw           : {r['ratio']:.3f}   (target >= 0.5)")
    print(f"label agreement          : {r['label_agreement']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
