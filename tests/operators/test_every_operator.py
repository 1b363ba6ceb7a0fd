"""Every registered operator runs the same in-process (a notebook call) and inside the engine on Ray."""
from __future__ import annotations

import textwrap

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from operators.base import DROP_REASON, REGISTRY, RunContext, load_operators
from pipeline.executor import RunOptions, run_recipe
from pipeline.recipe import load_recipe
from pipeline.samples import multilingual_docs

load_operators()
# parameters for operators that cannot run on defaults alone; models must come from packages
EXAMPLE_PARAMS: dict[str, dict] = {
    "length_filter": {"min_chars": 60},
    "sample": {"fraction": 0.5},
}
NEEDS_ARTIFACT = {"quality_classifier"}  # needs a trained model by path: covered by its own tests
# generating operators return more rows than they get, and an LLM over 240 documents is minutes
# here: tests/operators/test_rephrase.py runs rephrase in-process and on Ray on a few documents
NEEDS_ARTIFACT |= {"rephrase"}


def corpus() -> pa.Table:
    docs = multilingual_docs(240, seed=5)
    return pa.table({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs],
                     "url": [d["url"] for d in docs]})


def runnable(name: str) -> bool:
    cls = REGISTRY[name]
    return name not in NEEDS_ARTIFACT and set(cls.needs) <= {"id", "text", "url"}


def kept_sorted(t: pa.Table) -> pa.Table:
    if DROP_REASON in t.column_names:
        t = t.filter(pc.is_null(t.column(DROP_REASON))).drop_columns([DROP_REASON])
    return t.sort_by("id")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_in_process_equals_on_ray(name, ray_session, tmp_path):
    if not runnable(name):
        pytest.skip(f"{name} needs columns or artifacts a plain text corpus does not have")
    cls = REGISTRY[name]
    table = corpus()
    params = EXAMPLE_PARAMS.get(name, {})
    op = cls(params)
    if cls.kind == "global":
        import ray.data

        ds = op.run(ray.data.from_arrow(table), RunContext(step_id="x", output_dir=str(tmp_path)))
        local = pa.concat_tables([pa.Table.from_batches(b.to_batches()) for b in
                                  [pa.concat_tables(ray_session.get(ds.to_arrow_refs()))]])
    else:
        local = op(table)
        assert local.num_rows == table.num_rows  # filters mark rows, they do not remove them
    pq.write_table(table, tmp_path / "in.parquet")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        name: one
        input: {{format: parquet, paths: ["{tmp_path}/in.parquet"]}}
        output: {tmp_path}/out
        steps:
          - {{id: step, op: {name}, params: {params!r}}}
        """).replace("'", '"'))
    stats = run_recipe(load_recipe(str(recipe)), RunOptions(output=str(tmp_path / "out"), quiet=True))
    on_ray = pq.read_table(tmp_path / "out" / "step").sort_by("id")
    expected = kept_sorted(local)
    assert on_ray.column("id").equals(expected.column("id"))
    for col in set(cls.adds) & set(on_ray.column_names):
        assert on_ray.column(col).equals(expected.column(col).cast(on_ray.schema.field(col).type)), col
    assert stats["invariant_ok"]
