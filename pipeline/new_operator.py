"""`gristmill new-operator NAME`: write a working operator skeleton and its test, ready to list
under a recipe's `plugins:` (as a path relative to the recipe, or as a module name when it
sits next to the recipe)."""
from __future__ import annotations

import os
import re

NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

_HEAD = '''"""{name}: TODO one line saying what this operator does (`gristmill ops` shows this docstring)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from operators.base import Operator, Params, Resources, RunContext, mark_dropped, register, set_column


class {cls}Params(Params):  # operators.base.Params: a misspelled key in a recipe is an error
    min_chars: int = Field(1, ge=0, description="TODO: replace with your own parameters")

'''

_FILTER = _HEAD + '''
@register
class {cls}(Operator):
    """TODO: what it keeps and drops, and the paper or source of the rule.

    Adds `{name}_score` (here: characters per document). A row whose score is below
    `min_chars` gets drop_reason `{name}:too_short`.
    """

    name = "{name}"
    kind = "filter"
    Params = {cls}Params
    needs = {{"text"}}
    adds = {{"{name}_score"}}
    resources = Resources(num_cpus=1, batch_size=1024)

    def process(self, batch: pa.Table) -> pa.Table:
        # columnar: one Arrow compute call over the batch, no per-document Python loop
        score = pc.utf8_length(batch.column("text"))
        batch = set_column(batch, "{name}_score", score)
        return mark_dropped(batch, pc.less(score, self.params.min_chars), "{name}:too_short")
'''

_MAP = _HEAD + '''
@register
class {cls}(Operator):
    """TODO: what column it adds and how it is computed.

    Adds `{name}_score` (here: characters per document, null below `min_chars`). Drops nothing.
    """

    name = "{name}"
    kind = "map"
    Params = {cls}Params
    needs = {{"text"}}
    adds = {{"{name}_score"}}
    resources = Resources(num_cpus=1, batch_size=1024)

    def process(self, batch: pa.Table) -> pa.Table:
        score = pc.utf8_length(batch.column("text"))
        score = pc.if_else(pc.less(score, self.params.min_chars), pa.scalar(None, score.type), score)
        return set_column(batch, "{name}_score", score)
'''

_GLOBAL = _HEAD + '''
@register
class {cls}(Operator):
    """TODO: what it decides over the whole dataset.

    Global: receives the whole dataset as a Ray Dataset and returns one. Adds `{name}_score`
    (characters); rows below both `min_chars` and the mean length get drop_reason
    `{name}:too_short`.
    """

    name = "{name}"
    kind = "global"
    Params = {cls}Params
    needs = {{"text"}}
    adds = {{"{name}_score"}}

    def run(self, ds, ctx: RunContext):
        scored = ds.map_batches(
            lambda b: set_column(b, "{name}_score", pc.utf8_length(b.column("text"))),
            batch_format="pyarrow").materialize()  # read twice: once for the mean, once to mark rows
        cutoff = min(self.params.min_chars, scored.mean("{name}_score") or 0)
        return scored.map_batches(
            lambda b: mark_dropped(b, pc.less(b.column("{name}_score"), cutoff), "{name}:too_short"),
            batch_format="pyarrow")
'''

_TEST = '''"""Tests for the {name} operator: run them with `pytest {test_file}`."""
from __future__ import annotations

import os

import pyarrow as pa
import pytest
from pydantic import ValidationError

from operators.base import load_plugin

# imported the way a recipe's `plugins:` imports it (its code then reaches Ray workers too)
{cls} = load_plugin(os.path.join(os.path.dirname(os.path.abspath(__file__)), "{name}.py")).{cls}


def test_params_reject_unknown_keys():
    with pytest.raises(ValidationError):
        {cls}(min_chras=3)


{body}'''

_TEST_BATCH = '''def test_marks_rows_and_keeps_every_row():
    table = pa.table({{"id": ["a", "b"], "text": ["hi", "a longer document"]}})
    out = {cls}(min_chars=5)(table)  # in-process, no Ray: setup() runs lazily
    assert out.num_rows == table.num_rows  # filters mark rows, they never remove them
    assert out.column("{name}_score").to_pylist() == [2, 17]
{check}
'''

_CHECKS = {
    "filter": '    assert out.column("drop_reason").to_pylist() == ["{name}:too_short", None]',
    "map": '    assert "drop_reason" not in out.column_names',
}

_TEST_GLOBAL = '''def test_run_on_ray_marks_short_rows():
    ray = pytest.importorskip("ray")
    from operators.base import RunContext

    ray.init(num_cpus=1, include_dashboard=False, ignore_reinit_error=True)
    ds = ray.data.from_arrow(pa.table({{"id": ["a", "b"], "text": ["hi", "a longer document"]}}))
    out = {cls}(min_chars=5).run(ds, RunContext(step_id="{name}", output_dir="/tmp")).to_arrow_refs()
    rows = pa.concat_tables(ray.get(out)).sort_by("id").to_pylist()
    assert [r["drop_reason"] for r in rows] == ["{name}:too_short", None]
'''

TEMPLATES = {"filter": _FILTER, "map": _MAP, "global": _GLOBAL}


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def write_skeleton(name: str, directory: str = ".", kind: str = "filter", force: bool = False) -> list[str]:
    """Write `<directory>/<name>.py` and `<directory>/test_<name>.py`; returns their paths."""
    if not NAME.match(name):
        raise ValueError(f"operator name {name!r}: use lowercase letters, digits and _, starting with a letter "
                         "(it is also the module name)")
    if kind not in TEMPLATES:
        raise ValueError(f"kind {kind!r}: choose one of {', '.join(TEMPLATES)}")
    cls = class_name(name)
    module = os.path.join(directory, f"{name}.py")
    test = os.path.join(directory, f"test_{name}.py")
    for path in (module, test):
        if os.path.exists(path) and not force:
            raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    body = (_TEST_GLOBAL if kind == "global" else _TEST_BATCH).format(
        name=name, cls=cls, check=_CHECKS.get(kind, "").format(name=name))
    os.makedirs(directory, exist_ok=True)
    with open(module, "w", encoding="utf-8") as f:
        f.write(TEMPLATES[kind].format(name=name, cls=cls))
    with open(test, "w", encoding="utf-8") as f:
        f.write(_TEST.format(name=name, cls=cls, body=body, test_file=os.path.basename(test)))
    return [module, test]
