"""sample: keep a seeded random fraction of documents, decided per document id."""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field

from operators.base import Operator, Params, Resources, mark_dropped, register


class SampleParams(Params):
    fraction: float = Field(0.1, gt=0.0, le=1.0, description="share of documents to keep")
    seed: int = Field(0, description="same seed and ids -> same sample")


@register
class Sample(Operator):
    """Keep a random `fraction` of documents. The draw hashes (seed, id), so the sample does not
    depend on batching, worker count or row order."""

    name = "sample"
    kind = "filter"
    Params = SampleParams
    needs = frozenset({"id"})
    resources = Resources(num_cpus=1, batch_size=8192)

    def process(self, batch: pa.Table) -> pa.Table:
        h = pl.Series(batch.column("id").combine_chunks()).hash(seed=self.params.seed).to_numpy()
        u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # uniform in [0, 1)
        return mark_dropped(batch, pa.array(u >= self.params.fraction), "sample:not_sampled")
