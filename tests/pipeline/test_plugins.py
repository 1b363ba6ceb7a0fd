"""Your own operators, exactly as the README shows them: the plugin module and the recipe are
taken from README.md's "Writing an operator" section, then validated, run, listed and inspected
through the CLI and pipeline.inspect, by path and by module name."""
from __future__ import annotations

import json
import pathlib
import random
import re
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from pipeline import inspect
from pipeline.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[2]


def readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Writing an operator\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def readme_block(lang: str, must_contain: str) -> str:
    """The README code block of that language that contains `must_contain`, verbatim."""
    blocks = re.findall(rf"```{lang}\n(.*?)```", readme_section(), flags=re.S)
    found = [b for b in blocks if must_contain in b]
    assert len(found) == 1, f"README's Writing an operator section needs one {lang} block with {must_contain!r}"
    return found[0]


def digit_share(text: str) -> float:
    """Oracle for digit_ratio, written independently of the plugin (a plain loop)."""
    return sum(ch in "0123456789" for ch in text) / max(len(text), 1)


def make_corpus(path: pathlib.Path, n: int = 200) -> dict[str, str]:
    rng = random.Random(7)
    words = "the river mill grinds grain into flour for the village bakers every morning".split()
    docs = {}
    for i in range(n):
        if i % 10 == 0:  # a table of numbers
            text = " ".join(str(rng.randint(1000, 99999)) for _ in range(rng.randint(5, 30)))
        elif i % 10 == 5:  # prose with a few numbers (below the threshold)
            text = " ".join(rng.choice(words) for _ in range(30)) + " 1999 2024"
        else:
            text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 80)))
        docs[f"doc{i:03d}"] = text
    path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()))
    return docs


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder holding the README's plugin, its recipe and a JSONL corpus; the working directory."""
    (tmp_path / "my_ops.py").write_text(readme_block("python", "# my_ops.py"))
    (tmp_path / "r.yaml").write_text(readme_block("yaml", "plugins: [my_ops.py]"))
    docs = make_corpus(tmp_path / "docs.jsonl")
    monkeypatch.chdir(tmp_path)
    return tmp_path, docs


def test_readme_plugin_validates_runs_lists_and_inspects(plugin_dir, ray_session, capsys):
    d, docs = plugin_dir
    assert main(["validate", "r.yaml"]) == 0
    assert "digits(digit_ratio)" in capsys.readouterr().out
    assert main(["validate", "r.yaml", "--set", "steps.digits.params.max_ratoi=0.2"]) == 2  # the typo
    assert ("r.yaml:6: step 'digits': max_ratoi=0.2 (from --set): unknown key; digit_ratio takes: max_ratio. "
            "Did you mean 'max_ratio'?") in capsys.readouterr().err

    assert main(["ops", "--plugins", "my_ops.py"]) == 0
    listing = capsys.readouterr().out
    assert "digit_ratio  (filter)  [plugin my_ops.py]" in listing
    assert "short_vs_mean  (global)  [plugin my_ops.py]" in listing
    assert "length_filter" not in listing  # only the plugin's operators unless --all
    assert main(["ops", "digit_ratio", "--recipe", "r.yaml"]) == 0
    one = capsys.readouterr().out
    assert "max_ratio: float, default 0.2, >= 0, <= 1" in one
    assert "drop_reason `digit_ratio:too_many_digits`" in one and "adds:  digit_ratio" in one

    assert main(["run", "r.yaml", "--quiet"]) == 0
    out = str(d / "out" / "with-plugin")
    too_many = sorted(k for k, v in docs.items() if digit_share(v) > 0.3)
    assert too_many  # the corpus has some

    dropped = inspect.rejected(out, "digits")
    assert dropped["id"].to_list() == too_many  # every one, not a sample
    assert set(dropped["drop_reason"]) == {"digit_ratio:too_many_digits"}
    assert {"id", "text", "digit_ratio", "drop_reason"} <= set(dropped.columns)
    assert dropped["digit_ratio"].to_list() == pytest.approx([digit_share(docs[k]) for k in too_many])

    steps = {r["step"]: r for r in inspect.step_table(out).to_dicts()}
    assert steps["digits"]["dropped"] == len(too_many)
    final = inspect.kept(out, "short")  # a sink: written
    assert final.height == steps["short"]["docs_out"]
    short = inspect.rejected(out, "short")
    assert set(short["drop_reason"]) <= {"short_vs_mean:too_short"}
    # the global operator's rule, checked against its own output: nothing kept is below the cut-off
    assert short.height and final["n_chars"].min() >= short["n_chars"].max()
    with pytest.raises(ValueError, match="not written") as e:
        inspect.kept(out, "digits")
    assert "write: true" in str(e.value) and "--set steps.digits.write=true" in str(e.value)


def test_readme_plugin_by_module_name_in_the_recipes_folder(tmp_path, ray_session, capsys, monkeypatch):
    """`plugins: [my_ops]` resolves in the recipe's folder even when run from elsewhere; the Ray
    workers never have that folder on their path (the code travels by value). One step only:
    the whole README recipe already ran in the test above."""
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "my_ops.py").write_text(readme_block("python", "# my_ops.py"))
    (lab / "r.yaml").write_text("name: by-name\ninput: {format: jsonl, paths: [docs.jsonl]}\noutput: o\n"
                                "plugins: [my_ops]\nsteps:\n  - {id: digits, op: digit_ratio, params: {max_ratio: 0.3}}\n")
    docs = make_corpus(tmp_path / "docs.jsonl", n=60)
    monkeypatch.chdir(tmp_path)  # input paths are relative to the working directory, plugins to the recipe
    assert main(["run", "lab/r.yaml", "--quiet"]) == 0
    kept = inspect.kept("o", "digits")  # a sink: written
    assert kept["id"].to_list() == sorted(k for k, v in docs.items() if digit_share(v) <= 0.3)
    assert main(["ops", "--recipe", "lab/r.yaml"]) == 0
    assert "[plugin my_ops]" in capsys.readouterr().out


def test_readme_operators_run_in_process_without_ray(plugin_dir):
    from operators.base import load_plugin

    my_ops = load_plugin("my_ops.py", str(plugin_dir[0]))
    out = my_ops.DigitRatio(max_ratio=0.3)(pa.table({"id": ["a", "b", "c"], "text": ["12345 x", "words", ""]}))
    assert out.column("drop_reason").to_pylist() == ["digit_ratio:too_many_digits", None, None]
    assert out.column("digit_ratio").to_pylist() == pytest.approx([5 / 7, 0.0, 0.0])
    with pytest.raises(Exception, match="max_ratoi"):
        my_ops.DigitRatio(max_ratoi=0.1)


PLAIN_BASEMODEL = '''\
from pydantic import BaseModel
from operators.base import Operator, register

class P(BaseModel):
    max_ratio: float = 0.2

@register
class Bad(Operator):
    """A plugin following an older README: a plain pydantic model."""
    name = "bad_params_op"
    kind = "filter"
    Params = P

    def process(self, batch):
        return batch
'''


def test_params_must_subclass_operators_base_params(tmp_path, capsys):
    (tmp_path / "bad_ops.py").write_text(PLAIN_BASEMODEL)
    (tmp_path / "x.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "r.yaml").write_text(textwrap.dedent(f"""\
        name: bad
        input: {{format: jsonl, paths: ["{tmp_path}/x.jsonl"]}}
        output: {tmp_path}/out
        plugins:
          - bad_ops.py
        steps: [{{id: a, op: bad_params_op}}]
        """))
    assert main(["validate", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'r.yaml'}:5: plugin 'bad_ops.py'" in err  # the plugin's own line
    assert "line 7: TypeError: bad_ops.Bad.Params must be a subclass of operators.base.Params" in err
    assert "not bad_ops.P (a subclass of pydantic.main.BaseModel)" in err
    assert "write `from operators.base import Params` and `class MyParams(Params): ...`" in err


def test_plugin_not_found_says_where_it_looked_and_how_to_fix(tmp_path, capsys):
    (tmp_path / "x.jsonl").write_text('{"text": "a"}\n')
    r = tmp_path / "r.yaml"
    r.write_text(f"name: p\ninput: {{format: jsonl, paths: ['{tmp_path}/x.jsonl']}}\noutput: {tmp_path}/o\n"
                 "plugins:\n  - ops_that_do_not_exist\n  - lib/missing.py\nsteps: [{id: a, op: sample}]\n")
    assert main(["validate", str(r)]) == 2
    err = capsys.readouterr().err
    assert (f"{r}:5: plugin 'ops_that_do_not_exist': no module 'ops_that_do_not_exist' in the recipe's folder "
            f"({tmp_path}) or on the Python path; give the path of its .py file relative to the recipe "
            "(e.g. `plugins: [./ops_that_do_not_exist.py]`) or install it") in err
    assert f"{r}:6: plugin 'lib/missing.py': no such file {tmp_path}/lib/missing.py (a plugin path is relative " \
           f"to the recipe's folder {tmp_path}); fix the path" in err


def test_plugin_that_raises_names_its_line(tmp_path, capsys):
    (tmp_path / "broken.py").write_text("import pyarrow\n\nraise RuntimeError('setup went wrong')\n")
    assert main(["ops", "--plugins", str(tmp_path / "broken.py")]) == 2
    err = capsys.readouterr().err
    assert "failed to import: line 3: RuntimeError: setup went wrong" in err


def test_ops_shows_whole_descriptions_ranges_and_allowed_values(capsys):
    from operators.base import load_operators

    registry = load_operators()
    assert main(["ops"]) == 0
    listing = " ".join(capsys.readouterr().out.split())  # wrapped lines joined back
    for name in ("exact_dedup", "minhash_dedup"):
        assert registry[name].describe() in listing  # the whole first paragraph, not its first line
    assert "so no full-text shuffle and no driver-side index" in listing
    assert main(["ops", "html_extract"]) == 0
    one = capsys.readouterr().out
    assert 'extractor: one of "fast", "trafilatura", "resiliparse", default "fast"' in one
    assert "needs: html" in one and "resources: num_cpus=" in one
    assert main(["ops", "sample"]) == 0
    assert re.search(r"fraction: float, default [0-9.]+, (>|>=) 0(\.0)?, <= 1", capsys.readouterr().out)


def test_new_operator_writes_a_skeleton_whose_test_passes(tmp_path, capsys):
    assert main(["new-operator", "caps_filter", "--dir", str(tmp_path)]) == 0
    assert f"wrote {tmp_path}/caps_filter.py and {tmp_path}/test_caps_filter.py" in capsys.readouterr().out
    assert main(["new-operator", "caps_filter", "--dir", str(tmp_path)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_caps_filter.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 passed" in res.stdout
    assert main(["ops", "caps_filter", "--plugins", str(tmp_path / "caps_filter.py")]) == 0
    assert "caps_filter (filter operator" in capsys.readouterr().out
    assert main(["new-operator", "Bad-Name"]) == 2
    assert "use lowercase letters, digits and _" in capsys.readouterr().err


def test_new_global_operator_skeleton_runs_on_ray(tmp_path, ray_session):
    from operators.base import load_plugin
    from pipeline.new_operator import write_skeleton

    write_skeleton("mean_cut", str(tmp_path), kind="global")
    generated_test = load_plugin(str(tmp_path / "test_mean_cut.py"))
    generated_test.test_params_reject_unknown_keys()
    generated_test.test_run_on_ray_marks_short_rows()


def test_register_checks_the_contract_with_a_fix():
    from operators.base import Operator, Params, load_operators, register

    load_operators()

    class P(Params):
        x: int = 1

    class Taken(Operator):
        name, kind, Params = "length_filter", "filter", P

        def process(self, batch):
            return batch

    with pytest.raises(TypeError) as e:
        register(Taken)
    assert "operator name 'length_filter' of" in str(e.value)
    assert "is taken by operators.length_filter.LengthFilter; choose another name" in str(e.value)

    class NoProcess(Operator):
        name, kind, Params = "no_process_op", "filter", P

    with pytest.raises(TypeError, match=r"is a filter operator: it must implement process\(self, batch: pa.Table\)"):
        register(NoProcess)

    class NeedsString(Operator):
        name, kind, Params, needs = "needs_string_op", "map", P, "text"

        def process(self, batch):
            return batch

    with pytest.raises(TypeError, match=r"needs must be a set of column names, e.g. \{'text'\}, not 'text'"):
        register(NeedsString)


def test_ops_lists_nested_parameters_and_required_ones():
    from typing import Literal

    from pydantic import BaseModel, Field

    from operators.base import Operator, Params
    from pipeline.operator_docs import describe_operator

    class Phase(BaseModel):
        share: float = Field(gt=0, le=1, description="this phase's share")
        method: Literal["temperature", "unimax"] = "unimax"

    class P(Params):
        phases: list[Phase] | None = Field(None, description="ordered phases")

    class Phased(Operator):
        """Phased mixture (a documentation test double: never registered)."""
        name, kind, Params = "phased_doc_only", "global", P

    text = describe_operator(Phased)
    assert "  phases: list[Phase] or null, default null\n      ordered phases" in text
    assert "  phases[].share: float, required, > 0, <= 1\n      this phase's share" in text
    assert '  phases[].method: one of "temperature", "unimax", default "unimax"' in text
