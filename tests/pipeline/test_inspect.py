"""pipeline.inspect never hides rows: all rows and columns unless asked, and an unknown step,
column or reason, or a step that was not written, is an error that says what there is."""
from __future__ import annotations

import json

import pytest

from pipeline import inspect
from pipeline.executor import RunOptions, run_recipe
from pipeline.recipe import load_recipe

N_DOCS = 120


@pytest.fixture(scope="module")
def run_output(tmp_path_factory, ray_session):
    d = tmp_path_factory.mktemp("inspect")
    # every third document is short: 40 rows dropped by `length`, far more than any default limit
    docs = [{"id": f"d{i:03d}", "text": "tiny" if i % 3 == 0 else f"document number {i} " * 4,
             "source": "web"} for i in range(N_DOCS)]
    (d / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in docs))
    (d / "r.yaml").write_text(
        f"name: inspect\ninput: {{format: jsonl, paths: ['{d}/docs.jsonl']}}\noutput: {d}/out\nsteps:\n"
        "  - {id: length, op: length_filter, params: {min_chars: 10}}\n"
        "  - {id: every, op: sample, params: {fraction: 1.0}, write: true}\n"  # not a sink, written anyway
        "  - {id: pick, op: sample, params: {fraction: 0.5}}\n")
    out = str(d / "out")
    run_recipe(load_recipe(str(d / "r.yaml")), RunOptions(output=out, quiet=True))
    return out, docs


def test_rejected_returns_every_row_and_column_by_default(run_output):
    out, docs = run_output
    short = sorted(r["id"] for r in docs if r["text"] == "tiny")
    rows = inspect.rejected(out, "length")
    assert rows["id"].to_list() == short  # all 40, sorted by id
    assert {"id", "text", "drop_reason", "n_chars", "n_words", "source"} <= set(rows.columns)
    assert set(rows["drop_reason"]) == {"length_filter:too_few_chars"}
    assert inspect.rejected(out, "length", n=3)["id"].to_list() == short[:3]  # fewer only when asked
    narrow = inspect.rejected(out, "length", reason="length_filter:too_few", columns=["id", "n_chars"])
    assert narrow.columns == ["id", "n_chars"] and narrow.height == len(short)


def test_kept_returns_every_row_of_a_written_step(run_output):
    out, _ = run_output
    kept = inspect.kept(out, "pick")
    steps = {r["step"]: r for r in inspect.step_table(out).to_dicts()}
    assert kept.height == steps["pick"]["docs_out"] > 5
    assert "n_chars" in kept.columns and "drop_reason" not in kept.columns
    every = inspect.kept(out, "every")  # `write: true` on a step that streams into the next one
    assert every.height == steps["every"]["docs_out"] == steps["length"]["docs_out"]


def test_unknown_step_lists_the_valid_ones(run_output):
    out, _ = run_output
    with pytest.raises(ValueError) as e:
        inspect.rejected(out, "lenght")
    assert str(e.value) == f"no step 'lenght' in {out}; did you mean 'length'? Steps: read, length, every, pick"
    with pytest.raises(ValueError, match="no step 'nope' in .* Steps: read, length, every, pick"):
        inspect.kept(out, "nope")


def test_unknown_column_lists_the_ones_there_are(run_output):
    out, _ = run_output
    with pytest.raises(ValueError) as e:
        inspect.rejected(out, "length", columns=("id", "langauge"))
    msg = str(e.value)
    assert msg.startswith("rejected/length has no column(s) 'langauge'; its columns: id, text")
    assert "n_chars" in msg and "drop_reason" in msg
    with pytest.raises(ValueError, match="pick/ has no column\\(s\\) 'score'; its columns: id, text"):
        inspect.kept(out, "pick", columns=["score"])


def test_unknown_reason_lists_the_steps_reasons(run_output):
    out, _ = run_output
    with pytest.raises(ValueError) as e:
        inspect.rejected(out, "length", reason="length_filter:too_many")
    assert str(e.value) == ("step 'length' dropped no row with a reason starting with 'length_filter:too_many'; "
                            "its reasons: length_filter:too_few_chars")


def test_step_not_written_says_so_and_how_to_get_it(run_output):
    out, docs = run_output
    with pytest.raises(ValueError) as e:
        inspect.kept(out, "length")
    msg = str(e.value)
    kept_by_length = sum(r["text"] != "tiny" for r in docs)
    assert msg.startswith(f"step 'length' kept {kept_by_length} rows but they were not written to {out}/length")
    assert "add `write: true` to step 'length' in the recipe (or `--set steps.length.write=true`) and rerun" in msg
    assert "Its dropped rows are in rejected(out, 'length')" in msg


def test_not_a_run_output(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not the output of a finished gristmill run"):
        inspect.step_table(str(tmp_path))
