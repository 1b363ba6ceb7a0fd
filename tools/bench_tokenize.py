"""Tokenize throughput: the `tokenize` step vs raw `tokenizers` encode_batch, same text, same run.

    .venv/bin/python tools/bench_tokenize.py                 # 20k documents, 5 alternating rounds
    .venv/bin/python tools/bench_tokenize.py --docs 50000 --rounds 7

Text: real documents (../shared/data/oscar/oscar_sample.jsonl.gz when present, else the
project's multilingual sample generator). Both sides run single-threaded in this process
(RAYON_NUM_THREADS=1, so "per core"), on the same 1,024-document batches, with the same
tokenizer (the default: Mistral's SentencePiece v1 from mistral-common, as tokenizer.json):
- raw: `Tokenizer.encode_batch(texts, add_special_tokens=True)` and reading each `.ids`
  (the least any caller must do to get ids out);
- step: `Tokenize.process(batch)` on the Arrow batch, which also appends EOS and builds the
  `tokens` list<int32> and `n_tokens` columns.
Rounds alternate raw/step so machine noise hits both; the median round of each is reported with
tokens/s and the ratio step/raw (the issue's target: >= 0.90).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import statistics
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pyarrow as pa  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
OSCAR = ROOT.parent / "shared" / "data" / "oscar" / "oscar_sample.jsonl.gz"


def texts(n: int) -> list[str]:
    out: list[str] = []
    if OSCAR.is_file():
        with gzip.open(OSCAR, "rt", encoding="utf-8") as f:
            base = [json.loads(line)["text"] for line in f if line.strip()]
    else:
        from pipeline.samples import multilingual_docs

        base = [d["text"] for d in multilingual_docs(2000, seed=1)]
    while len(out) < n:
        out += base
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1024)
    args = ap.parse_args()
    from operators.tokenize import Tokenize

    docs = texts(args.docs)
    batches = [pa.table({"id": [str(i) for i in range(k, min(k + args.batch, len(docs)))],
                         "text": docs[k:k + args.batch]}) for k in range(0, len(docs), args.batch)]
    lists = [b.column("text").to_pylist() for b in batches]
    op = Tokenize()
    op.ensure_setup()
    tok = op.tok

    def raw() -> int:
        n = 0
        for t in lists:
            for e in tok.encode_batch(t, add_special_tokens=True):
                n += len(e.ids)
        return n

    def step() -> int:
        return sum(int(pa.compute.sum(op.process(b).column("n_tokens")).as_py()) for b in batches)

    raw(), step()  # warm-up
    times: dict[str, list[float]] = {"raw": [], "step": []}
    tokens = {}
    for _ in range(args.rounds):
        for name, fn in (("raw", raw), ("step", step)):
            t0 = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {"raw": tokens["raw"] / med["raw"], "step": tokens["step"] / med["step"]}
    mb = sum(len(t.encode()) for t in docs) / 1e6
    print(f"{len(docs):,} documents ({mb:.1f} MB), {args.rounds} rounds, 1 thread each")
    print(f"raw tokenizers encode_batch: {rate['raw']:,.0f} tokens/s  ({tokens['raw']:,} tokens, median {med['raw']:.2f} s)")
    print(f"tokenize step:               {rate['step']:,.0f} tokens/s  ({tokens['step']:,} tokens incl. EOS, "
          f"median {med['step']:.2f} s)")
    print(f"ratio step/raw (time on the same text): {med['raw'] / med['step']:.3f}")


if __name__ == "__main__":
    main()
