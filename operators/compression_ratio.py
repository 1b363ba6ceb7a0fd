"""zlib compression ratio per document: a cheap redundancy / information-density signal.

Definition (the one of the ZIP / "Entropy Law" data-selection paper, Yin et al. 2024):

    compression_ratio = len(utf8 bytes) / len(zlib.compress(utf8 bytes, level))

Higher means more redundant (repetitive boilerplate compresses well: 5-20); ordinary prose sits
around 2-3; very short texts fall below 1 because of zlib's fixed overhead (header + checksum).
ZIP selection prefers LOW ratios (more information per byte). Null and empty texts get null
(the ratio is undefined there), not a number a selector could mistake for "very diverse".

The raw lengths are computed in Arrow; the compressed lengths need one zlib C call per document
(zlib has no batch API). The Python loop around those calls is <0.1% of the time (measured on
2,539 real documents: 0.4 ms of loop overhead vs ~0.5 s of deflate at level 6).
"""
from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from operators.base import Operator, Params, Resources, register, set_column


class CompressionRatioParams(Params):
    level: int = Field(6, ge=1, le=9, description="zlib compression level (6 = zlib's default; 9 ~1.7x slower)")


def compression_ratios(text: pa.Array | pa.ChunkedArray, level: int = 6) -> pa.Array:
    """raw bytes / zlib-compressed bytes for each string; null for null or empty strings."""
    arr = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    n = len(arr)
    raw = pc.binary_length(arr).to_numpy(zero_copy_only=False).astype(np.float64)  # NaN where null
    binary = arr.cast(pa.large_binary() if pa.types.is_large_string(arr.type) else pa.binary())
    compress = zlib.compress
    comp = np.fromiter(
        (len(compress(b, level)) if b else 0 for b in binary.to_pylist()), dtype=np.float64, count=n
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = raw / comp
    ratio[~np.isfinite(ratio) | (raw == 0)] = np.nan
    return pa.array(ratio, pa.float64(), from_pandas=True)  # NaN -> null


@register
class CompressionRatio(Operator):
    """Add `compression_ratio` = raw UTF-8 bytes / zlib-compressed bytes (higher = more redundant)."""

    name = "compression_ratio"
    kind = "map"
    Params = CompressionRatioParams
    needs = frozenset({"text"})
    adds = frozenset({"compression_ratio"})
    resources = Resources(num_cpus=1, batch_size=1024)

    def process(self, batch: pa.Table) -> pa.Table:
        return set_column(batch, "compression_ratio", compression_ratios(batch.column("text"), self.params.level))
