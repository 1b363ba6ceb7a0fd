"""length_filter: keep documents whose length in characters and/or words is within bounds."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from operators.base import Operator, Params, Resources, mark_dropped, register, set_column


class LengthFilterParams(Params):
    min_chars: int | None = Field(None, ge=0, description="drop documents shorter than this many characters")
    max_chars: int | None = Field(None, ge=1, description="drop documents longer than this many characters")
    min_words: int | None = Field(None, ge=0, description="drop documents with fewer whitespace-separated words")
    max_words: int | None = Field(None, ge=1, description="drop documents with more whitespace-separated words")

    @model_validator(mode="after")
    def _ordered(self):
        for lo, hi in (("min_chars", "max_chars"), ("min_words", "max_words")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{lo} ({a}) is larger than {hi} ({b})")
        return self


@register
class LengthFilter(Operator):
    """Drop documents outside [min, max] characters or words; adds `n_chars` and `n_words`."""

    name = "length_filter"
    kind = "filter"
    Params = LengthFilterParams
    needs = frozenset({"text"})
    adds = frozenset({"n_chars", "n_words"})
    resources = Resources(num_cpus=1, batch_size=4096)

    def process(self, batch: pa.Table) -> pa.Table:
        text = batch.column("text")
        n_chars = pc.utf8_length(text)
        # words = runs of non-space characters, counted without a Python loop
        n_words = pc.list_value_length(pc.utf8_split_whitespace(pc.utf8_trim_whitespace(text)))
        batch = set_column(batch, "n_chars", n_chars)
        batch = set_column(batch, "n_words", pc.cast(n_words, pa.int32()))
        p = self.params
        for value, bound, cmp, rule in ((n_chars, p.min_chars, pc.less, "too_few_chars"),
                                        (n_chars, p.max_chars, pc.greater, "too_many_chars"),
                                        (n_words, p.min_words, pc.less, "too_few_words"),
                                        (n_words, p.max_words, pc.greater, "too_many_words")):
            if bound is not None:
                batch = mark_dropped(batch, cmp(value, bound), f"length_filter:{rule}")
        return batch
