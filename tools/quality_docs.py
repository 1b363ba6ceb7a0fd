"""Real documents from ../shared/data for the quality-filter parity test and benchmark.

    .venv/bin/python tools/quality_docs.py            # prints counts per source

Sources: the text of every HTML response in the WARCs (web/*.warc.gz, cc/*.warc.gz,
peers/dolma/*.warc.gz; main content extracted with resiliparse, which is fast), OSCAR and UDHR
texts (with their `language`), and the peers' JSONL documents. Nothing is cached or copied.
"""
from __future__ import annotations

import gzip
import json
import pathlib
import sys

import pyarrow as pa

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

WARC_GLOBS = ("web/*.warc.gz", "cc/*.warc.gz", "peers/dolma/*.warc.gz")


def _decode(body: bytes) -> str:
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    return bytes_to_str(body, detect_encoding(body))


def web_docs(data: pathlib.Path = SHARED_DATA, min_chars: int = 1) -> list[dict]:
    """Main text of every HTML response in the WARCs under ``data`` (resiliparse)."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from resiliparse.extract.html2text import extract_plain_text

    out = []
    for pattern in WARC_GLOBS:
        for path in sorted(data.glob(pattern)):
            if path.name in ("clipped.warc.gz", "block-sized-records.warc.gz"):
                continue  # parser edge cases, not content
            with open(path, "rb") as f:
                try:
                    for i, rec in enumerate(
                        ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=True)
                    ):
                        ctype = (rec.http_headers.get("Content-Type") or "") if rec.http_headers else ""
                        if ctype and "html" not in ctype.lower():
                            continue
                        body = rec.reader.read()
                        text = extract_plain_text(_decode(body), main_content=True)
                        if len(text.strip()) >= min_chars:
                            url = rec.headers.get("WARC-Target-URI") or ""
                            out.append({"id": f"{path.name}/{i}", "text": text, "url": url,
                                        "source": f"web:{path.parent.name}", "language": None})
                except Exception:  # a damaged WARC: keep what was read
                    pass
    return out


def jsonl_docs(data: pathlib.Path = SHARED_DATA) -> list[dict]:
    """OSCAR + UDHR (with `language`) and the peers' JSONL texts (language unknown)."""
    out = []
    for name in ("oscar/oscar_sample.jsonl.gz", "oscar/udhr.jsonl.gz"):
        with gzip.open(data / name, "rt", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                lang = r.get("language")
                out.append({"id": r["id"], "text": r["text"], "url": "", "source": r.get("source", name),
                            "language": None if lang in (None, "und") else lang})
    for path in sorted((data / "peers").glob("*/*.json*.gz")):
        if "attributes__" in path.name:
            continue
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                r = json.loads(line)
                if isinstance(r.get("text"), str) and r["text"].strip():
                    out.append({"id": f"{path.name}/{i}", "text": r["text"], "url": "",
                                "source": f"peers:{path.parent.name}", "language": None})
    return out


def load_docs(data: pathlib.Path = SHARED_DATA) -> pa.Table:
    """All documents as a table: id, text, url, source, language (null where unknown)."""
    rows = web_docs(data) + jsonl_docs(data)
    rows = [r for r in rows if r["text"].strip()]
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("url", pa.string()),
                        ("source", pa.string()), ("language", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


if __name__ == "__main__":
    import collections
    import time

    t0 = time.perf_counter()
    table = load_docs(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else SHARED_DATA)
    dt = time.perf_counter() - t0
    counts = collections.Counter(table.column("source").to_pylist())
    chars = sum(len(t) for t in table.column("text").to_pylist())
    print(f"{table.num_rows} docs, {chars / max(table.num_rows, 1):.0f} chars mean, loaded in {dt:.1f}s")
    for k, v in sorted(counts.items()):
        print(f"  {k}: {v}")
