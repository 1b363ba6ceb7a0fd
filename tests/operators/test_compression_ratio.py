from __future__ import annotations

import gzip
import json
import pathlib
import zlib

import pyarrow as pa
import pytest
from pydantic import ValidationError

from operators.base import DROP_REASON, load_operators
from operators.compression_ratio import CompressionRatio

DATA = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")


def _ref(text: str | None, level: int = 6):
    if not text:
        return None
    b = text.encode("utf-8")
    return len(b) / len(zlib.compress(b, level))


TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 40,
    "Grüße aus Köln — 日本語のテキスト, and a short mixed line.",
    None,
    "",
    "x",
    "A plain sentence of ordinary English prose, with a few different words in it.",
]


def test_matches_zlib_reference_and_keeps_columns():
    t = pa.table({"id": [str(i) for i in range(len(TEXTS))], "text": TEXTS, "source": ["s"] * len(TEXTS)})
    out = CompressionRatio()(t)
    assert out.column_names == ["id", "text", "source", "compression_ratio"]
    got = out.column("compression_ratio").to_pylist()
    for g, text in zip(got, TEXTS):
        ref = _ref(text)
        assert (g is None) == (ref is None)
        if ref is not None:
            assert g == pytest.approx(ref, rel=1e-12)
    assert got[0] > 10 > got[5]  # repetitive text compresses far better than prose
    assert got[4] < 1  # one byte: zlib's fixed overhead dominates
    assert DROP_REASON not in out.column_names


def test_level_param_and_validation():
    t = pa.table({"id": ["a"], "text": [TEXTS[5] * 3 + TEXTS[1]]})
    one = CompressionRatio(level=1)(t).column("compression_ratio")[0].as_py()
    nine = CompressionRatio(level=9)(t).column("compression_ratio")[0].as_py()
    assert one == pytest.approx(_ref(t.column("text")[0].as_py(), 1))
    assert nine == pytest.approx(_ref(t.column("text")[0].as_py(), 9))
    with pytest.raises(ValidationError):
        CompressionRatio(level=0)
    with pytest.raises(ValidationError):
        CompressionRatio(lvl=5)
    assert load_operators()["compression_ratio"] is CompressionRatio and CompressionRatio.kind == "map"


def test_chunked_and_large_string_inputs():
    chunked = pa.chunked_array([pa.array(TEXTS[:3]), pa.array(TEXTS[3:])])
    t1 = pa.table({"id": [str(i) for i in range(len(TEXTS))], "text": chunked})
    t2 = pa.table({"id": [str(i) for i in range(len(TEXTS))], "text": pa.array(TEXTS, pa.large_string())})
    ref = CompressionRatio()(pa.table({"id": t1.column("id"), "text": pa.array(TEXTS)}))
    assert CompressionRatio()(t1).column("compression_ratio").equals(ref.column("compression_ratio"))
    assert CompressionRatio()(t2).column("compression_ratio").to_pylist() == ref.column("compression_ratio").to_pylist()
    empty = CompressionRatio()(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}))
    assert empty.num_rows == 0 and "compression_ratio" in empty.column_names


@needs_data
def test_real_documents_batch_invariant():
    with gzip.open(DATA / "oscar" / "udhr.jsonl.gz", "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f][:300]
    t = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
    whole = CompressionRatio()(t).column("compression_ratio").to_pylist()
    parts = [CompressionRatio()(t.slice(s, 7)).column("compression_ratio").to_pylist() for s in range(0, len(texts), 7)]
    assert whole == [x for p in parts for x in p]
    assert whole == pytest.approx([_ref(x) for x in texts], rel=1e-12)
