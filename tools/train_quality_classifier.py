"""Train a fastText quality classifier (DCLM-style) from labelled Parquet / JSONL.

    .venv/bin/python tools/train_quality_classifier.py labelled.parquet more.jsonl.gz \\
        --label-column label --positive hq --output quality.bin [--valid-fraction 0.1] [--seed 0]

Input rows need a text column and a label column (strings, ints or bools; each distinct value
becomes ``__label__<value>``). ``--positive`` names the value whose probability the
``quality_classifier`` operator uses as its score (``hq`` by default; a bool column uses
``True``). A seeded shuffle holds out ``--valid-fraction`` of the rows; the model is trained on
the rest and the held-out split is scored with the same code path the operator uses
(``QualityClassifier(backend=fasttext)``). Printed: precision / recall / F1 at 0.5, accuracy,
ROC AUC (Mann-Whitney, ties count half). ``--metrics out.json`` writes them too.

Then: ``{op: quality_classifier, params: {model_path: quality.bin, label: hq, min_score: 0.5}}``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402


def read_labelled(paths: list[str], text_column: str = "text", label_column: str = "label") -> pa.Table:
    """Concatenate Parquet / JSONL(.gz) files into a table with `text` and `label` (string) columns."""
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    tables = []
    for path in paths:
        name = str(path)
        if name.endswith(".parquet") or os.path.isdir(name):
            t = pq.read_table(name, columns=[text_column, label_column])
        elif name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")):
            t = pj.read_json(name).select([text_column, label_column])
        else:
            raise ValueError(f"{name}: expected .parquet, .jsonl or .jsonl.gz")
        label = t.column(label_column)
        if not pa.types.is_string(label.type):
            label = pa.array([None if v is None else str(v) for v in label.to_pylist()], pa.string())
        tables.append(pa.table({"text": t.column(text_column).cast(pa.string()), "label": label}))
    table = pa.concat_tables(tables)
    mask = pa.compute.and_(pa.compute.is_valid(table.column("text")), pa.compute.is_valid(table.column("label")))
    return table.filter(mask)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (probability a random positive outscores a random negative)."""
    pos, neg = scores[positive], np.sort(scores[~positive])
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


def binary_metrics(scores: np.ndarray, positive: np.ndarray, threshold: float = 0.5) -> dict:
    pred = scores >= threshold
    tp = int((pred & positive).sum())
    fp = int((pred & ~positive).sum())
    fn = int((~pred & positive).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": int(len(scores)),
        "positives": int(positive.sum()),
        "threshold": threshold,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": float((pred == positive).mean()) if len(scores) else float("nan"),
        "auc": roc_auc(scores, positive),
    }


def _one_line(texts: list[str]) -> list[str]:
    return [t.replace("\n", " ") for t in texts]


_FIT = """
import json, sys
import fasttext
a = json.loads(sys.argv[1])
fasttext.train_supervised(a["input"], verbose=0, **a["kwargs"]).save_model(a["output"])
"""


def fit_fasttext(input_file: str, output: str, **kwargs) -> None:
    """``fasttext.train_supervised(input_file, **kwargs).save_model(output)`` in a fresh process.

    Why: fastText 0.9.2 (fasttext-numpy2-wheel) initializes only the first tenth of the input matrix
    when thread=1 (DenseMatrix::uniformThread fills block 0 of 10) and never zeroes the rest, so
    it trains on whatever the allocator hands back. In a fresh process with glibc's mmap threshold
    pinned (large blocks always come from mmap, hence zero pages) that memory is zero and training
    is deterministic; in a long-lived process (pytest, a notebook) reused heap memory holds garbage
    and training diverges ("Encountered NaN") or silently gives a worse model."""
    import subprocess

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")
    arg = json.dumps({"input": str(input_file), "output": str(output), "kwargs": kwargs})
    proc = subprocess.run([sys.executable, "-c", _FIT, arg], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"fastText training failed: {proc.stderr.strip()[-2000:]}")


def train(
    table: pa.Table,
    output: str,
    positive: str = "hq",
    valid_fraction: float = 0.1,
    seed: int = 0,
    epoch: int = 5,
    lr: float = 0.1,
    word_ngrams: int = 2,
    dim: int = 64,
    min_count: int = 1,
    bucket: int = 200_000,
    threads: int = 1,
) -> dict:
    """Train on a seeded split of `table` (text, label), save the model to `output`, return metrics."""
    from operators.quality_classifier import QualityClassifier

    labels = table.column("label").to_pylist()
    if positive not in set(labels):
        raise ValueError(f"positive label {positive!r} not among the labels {sorted(set(labels))[:20]}")
    if len(set(labels)) < 2:
        raise ValueError("need at least two distinct labels")
    n = table.num_rows
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = int(round(n * valid_fraction))
    valid_idx, train_idx = np.sort(perm[:n_valid]), np.sort(perm[n_valid:])
    texts = table.column("text").to_pylist()

    t0 = time.perf_counter()
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=out_dir, delete=False, encoding="utf-8") as f:
        for i in train_idx:
            f.write(f"__label__{labels[i].replace(' ', '_')} {texts[i].replace(chr(10), ' ')}\n")
        train_file = f.name
    try:
        fit_fasttext(
            train_file, output, epoch=epoch, lr=lr, wordNgrams=word_ngrams, dim=dim, minCount=min_count,
            bucket=bucket, thread=threads, seed=seed,
        )
    finally:
        os.unlink(train_file)
    train_s = time.perf_counter() - t0

    result = {"output": output, "train_rows": int(len(train_idx)), "valid_rows": int(len(valid_idx)),
              "labels": sorted(set(labels)), "positive": positive, "train_seconds": train_s}
    if len(valid_idx):
        op = QualityClassifier(model_path=output, label=positive.replace(" ", "_"), label_only=True)
        valid = pa.table({"id": [str(i) for i in valid_idx], "text": [texts[i] for i in valid_idx]})
        scores = op(valid).column("quality_score").to_numpy()
        is_pos = np.array([labels[i] == positive for i in valid_idx])
        result["valid"] = binary_metrics(scores, is_pos)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", help="Parquet files/folders or JSONL(.gz) files")
    ap.add_argument("--output", required=True, help="where to save the fastText model (.bin)")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--positive", default="hq", help="label value whose probability is the quality score")
    ap.add_argument("--valid-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epoch", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--word-ngrams", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--min-count", type=int, default=1)
    ap.add_argument("--bucket", type=int, default=200_000,
                    help="hash buckets for word n-grams (model size ~ bucket x dim x 4 bytes; fastText's own default "
                    "2,000,000 gives 0.5 GB at dim 64)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--metrics", help="also write the metrics as JSON here")
    args = ap.parse_args(argv)
    if not 0.0 <= args.valid_fraction < 1.0:
        ap.error("--valid-fraction must be in [0, 1)")
    table = read_labelled(args.inputs, args.text_column, args.label_column)
    res = train(
        table, args.output, positive=args.positive, valid_fraction=args.valid_fraction, seed=args.seed,
        epoch=args.epoch, lr=args.lr, word_ngrams=args.word_ngrams, dim=args.dim, min_count=args.min_count,
        bucket=args.bucket, threads=args.threads,
    )
    print(f"trained on {res['train_rows']} rows ({', '.join(res['labels'])}) in {res['train_seconds']:.1f}s "
          f"-> {res['output']}")
    if "valid" in res:
        v = res["valid"]
        print(f"held-out {v['n']} rows ({v['positives']} {res['positive']}): precision {v['precision']:.3f} "
              f"recall {v['recall']:.3f} f1 {v['f1']:.3f} accuracy {v['accuracy']:.3f} AUC {v['auc']:.3f} "
              f"(threshold {v['threshold']})")
    if args.metrics:
        pathlib.Path(args.metrics).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
