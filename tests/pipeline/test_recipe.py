"""Recipe validation: every error names the file, the line, the step and a fix."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pipeline.cli import main
from pipeline.recipe import RecipeError, load_recipe
from pipeline.samples import build_sample


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    build_sample("quickstart-sample", str(d), n_docs=50, files=1)
    return d


def write(tmp_path, corpus, steps: str, extra: str = "") -> str:
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent(f"""\
        name: t
        input: {{format: jsonl, paths: ["{corpus}/*.jsonl.gz"]}}
        output: {tmp_path}/out
        {extra}steps:
        """) + textwrap.indent(textwrap.dedent(steps), "  "))
    return str(p)


def problems(path, overrides=()):
    with pytest.raises(RecipeError) as e:
        load_recipe(path, overrides)
    return str(e.value)


def test_valid_recipe_loads(tmp_path, corpus):
    p = write(tmp_path, corpus, """\
        - {id: length, op: length_filter, params: {min_chars: 10}}
        - {id: dedup, op: exact_dedup}
        """)
    loaded = load_recipe(p)
    assert [s.id for s in loaded.recipe.steps] == ["length", "dedup"]
    assert loaded.params["length"].min_chars == 10
    assert "n_chars" in loaded.columns["dedup"]


def test_misspelled_operator_names_line_step_and_closest(tmp_path, corpus):
    p = write(tmp_path, corpus, """\
        - {id: length, op: length_filter}
        - {id: dedup, op: exact_dedupe}
        """)
    msg = problems(p)
    assert f"{p}:6:" in msg and "step 'dedup'" in msg and "'exact_dedupe'" in msg
    assert "Did you mean 'exact_dedup'?" in msg


def test_bad_parameter_type_and_range(tmp_path, corpus):
    p = write(tmp_path, corpus, """\
        - id: length
          op: length_filter
          params:
            min_chars: lots
        - id: pick
          op: sample
          params: {fraction: 1.5}
        """)
    msg = problems(p)
    assert f"{p}:8:" in msg and "min_chars='lots'" in msg and "integer" in msg
    assert f"{p}:11:" in msg and "step 'pick'" in msg and "less than or equal to 1" in msg


def test_unknown_parameter_lists_accepted_ones(tmp_path, corpus):
    p = write(tmp_path, corpus, "- {id: length, op: length_filter, params: {min_char: 3}}\n")
    msg = problems(p)
    assert "min_char" in msg and "unknown key" in msg and "min_chars" in msg


def test_unknown_input_step_suggests_closest(tmp_path, corpus):
    p = write(tmp_path, corpus, """\
        - {id: length, op: length_filter}
        - {id: pick, op: sample, input: lenght}
        """)
    msg = problems(p)
    assert "step 'pick'" in msg and "'lenght' is not a step" in msg and "Did you mean 'length'?" in msg


def test_cycle_is_reported_with_its_path(tmp_path, corpus):
    p = write(tmp_path, corpus, """\
        - {id: a, op: length_filter, input: c}
        - {id: b, op: sample, input: a}
        - {id: c, op: sample, input: b}
        """)
    msg = problems(p)
    assert "cycle" in msg and "a -> b -> c -> a" in msg


def test_column_needs_must_be_met_by_earlier_steps(tmp_path, corpus):
    p = write(tmp_path, corpus, "- {id: pick, op: sample}\n- {id: keep, op: length_filter}\n")
    load_recipe(p)  # fine: text and id come from the input
    warc = tmp_path / "w.yaml"
    warc.write_text(f"name: w\ninput: {{format: warc, paths: ['{corpus}/*.jsonl.gz']}}\noutput: {tmp_path}/o\n"
                    "steps:\n  - {id: keep, op: length_filter}\n")
    msg = problems(str(warc))
    assert "step 'keep'" in msg and "needs column(s) text" in msg and "html_extract" in msg


def test_duplicate_ids_and_missing_keys(tmp_path, corpus):
    p = write(tmp_path, corpus, "- {id: a, op: sample}\n- {id: a, op: sample}\n")
    assert "already used" in problems(p)
    q = tmp_path / "q.yaml"
    q.write_text("name: x\nsteps: [{id: a, op: sample}]\n")
    msg = problems(str(q))
    assert "input: required key is missing" in msg and "output: required key is missing" in msg


def test_empty_glob_and_missing_text_fail_fast(tmp_path, corpus):
    p = tmp_path / "e.yaml"
    p.write_text(f"name: e\ninput: {{format: jsonl, paths: ['{tmp_path}/nothing/*.jsonl']}}\noutput: {tmp_path}/o\n"
                 "steps: [{id: a, op: sample}]\n")
    assert "no files match" in problems(str(p))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "x.parquet")
    p.write_text(f"name: e\ninput: {{format: parquet, paths: ['{tmp_path}/x.parquet']}}\noutput: {tmp_path}/o\n"
                 "steps: [{id: a, op: sample}]\n")
    msg = problems(str(p))
    assert "has no 'text' column" in msg and "body" in msg and "text_column" in msg


def test_set_overrides_values_and_is_validated(tmp_path, corpus):
    p = write(tmp_path, corpus, "- {id: pick, op: sample, params: {fraction: 0.5}}\n")
    loaded = load_recipe(p, ["steps.pick.params.fraction=0.25", "seed=7"])
    assert loaded.params["pick"].fraction == 0.25 and loaded.recipe.seed == 7
    assert "from --set" in problems(p, ["steps.pick.params.fraction=2"])
    assert "no step with id 'nope'" in problems(p, ["steps.nope.params.fraction=0.1"])


def test_yaml_is_loaded_safely(tmp_path, corpus):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    assert "not valid YAML" in problems(str(p))


def test_cli_validate_prints_location_and_exits_nonzero(tmp_path, corpus, capsys):
    p = write(tmp_path, corpus, "- {id: lang, op: langauge_filter}\n")
    assert main(["validate", p]) == 2
    err = capsys.readouterr().err
    assert f"{p}:5:" in err and "step 'lang'" in err and "Did you mean" in err
    good = write(tmp_path, corpus, "- {id: pick, op: sample}\n")
    assert main(["validate", good]) == 0


def test_cli_entry_point_and_ops_listing():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "ops", "length_filter"],
                         capture_output=True, text=True, check=True).stdout
    assert "min_chars" in out and "filter" in out
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "ops"], capture_output=True, text=True,
                         check=True).stdout
    for name in ("length_filter", "exact_dedup", "sample"):
        assert name in out


def test_step_resources_override_is_validated(tmp_path, corpus):
    p = write(tmp_path, corpus, "- {id: pick, op: sample, resources: {batch_size: 64, num_gpus: 0}}\n")
    loaded = load_recipe(p)
    assert loaded.resources["pick"].batch_size == 64 and loaded.resources["pick"].num_cpus == 1
    bad = write(tmp_path, corpus, "- {id: pick, op: sample, resources: {num_gpu: 1}}\n")
    msg = problems(bad)
    assert "step 'pick'" in msg and "resources.num_gpu" in msg and "num_gpus" in msg


# -- messages point at the key at fault (issue 20) -------------------------------------------------
def test_empty_glob_points_at_the_paths_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(f"name: e\ninput:\n  format: jsonl\n  text_column: body\n  paths:\n    - {tmp_path}/none/*.jsonl\n"
                 f"output: {tmp_path}/o\nsteps: [{{id: a, op: sample}}]\n")
    msg = problems(str(p))
    assert msg.startswith(f"{p}:6: input.paths: no files match {tmp_path}/none/*.jsonl (working directory ")


def test_missing_text_column_points_at_the_text_column_line(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"body": "some text"}\n')
    p = tmp_path / "r.yaml"
    p.write_text(f"name: e\ninput:\n  format: jsonl\n  paths: ['{tmp_path}/x.jsonl']\n  text_column: content\n"
                 f"output: {tmp_path}/o\nsteps: [{{id: a, op: sample}}]\n")
    msg = problems(str(p))
    assert msg.startswith(f"{p}:5: input.text_column: {tmp_path}/x.jsonl has no 'content' column (it has: ")
    assert "body" in msg and "set input.text_column to the column holding the text" in msg


def test_set_paths_use_step_ids_and_suggest_the_closest_key(tmp_path, corpus):
    p = write(tmp_path, corpus, "- {id: length, op: length_filter}\n- {id: pick, op: sample}\n")
    msg = problems(p, ["steps.pick.param.fraction=0.2"])
    assert msg == f"{p}:6: step 'pick': steps.pick.param (from --set): unknown key. Did you mean 'params'?"
    assert "steps.1" not in msg  # no internal index
    msg = problems(p, ["steps.pick.params.fractoin=0.2"])
    assert msg == (f"{p}:6: step 'pick': fractoin=0.2 (from --set): unknown key; sample takes: fraction, seed. "
                   "Did you mean 'fraction'?")
    assert problems(p, ["inptu.format=jsonl"]).endswith(": inptu (from --set): unknown key. Did you mean 'input'?")


def test_line_numbers_are_one_based(tmp_path, corpus):
    bad_yaml = tmp_path / "y.yaml"
    bad_yaml.write_text("name: y\nsteps:\n  - {id: a, op: sample\n")  # unclosed flow mapping on line 3
    assert problems(str(bad_yaml)).startswith(f"{bad_yaml}:4: not valid YAML")  # where the parser gave up
    p = tmp_path / "first.yaml"
    p.write_text("nmae: x\n")  # the key at fault is on the first line
    assert f"{p}:1: nmae: unknown key. Did you mean 'name'?" in problems(str(p))


def test_set_unknown_step_suggests_the_closest_id_and_lists_indexable(tmp_path, corpus):
    p = write(tmp_path, corpus, "- {id: length, op: length_filter}\n- {id: pick, op: sample}\n")
    assert problems(p, ["steps.pikc.params.fraction=0.2"]) == (
        "--set steps.pikc.params.fraction: no step with id 'pikc'. Did you mean 'pick'? "
        "Steps: length, pick (steps are named by id, not by position)")
    assert "no step with id '1'" in problems(p, ["steps.1.params.fraction=0.2"])
    loaded = load_recipe(p, [f"input.paths.0={corpus}/*.jsonl.gz"])
    assert loaded.recipe.input.paths == [f"{corpus}/*.jsonl.gz"]
    assert problems(p, ["input.paths.3=x"]) == (
        "--set input.paths.3: input.paths is a list of 1; use an index 0..0, or set input.paths=[...] whole")
