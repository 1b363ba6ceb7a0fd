"""One small run shared by the report and what-if tests (a run costs ~15 s on 2 cores)."""
from __future__ import annotations

import json
import pathlib
import textwrap

from pipeline.samples import build_sample

STEPS = """\
- {id: lang, op: language_id, params: {min_score: 0.5}}
- {id: length, op: length_filter, params: {min_chars: 200, max_chars: 1200}}
- {id: dedup, op: exact_dedup}
"""
_RUNS: dict[tuple, pathlib.Path] = {}


def corpus(root: pathlib.Path) -> pathlib.Path:
    d = root / "report-corpus"
    if not d.is_dir():
        build_sample("quickstart-sample", str(d), n_docs=500, files=2)
    return d


def recipe(root: pathlib.Path) -> pathlib.Path:
    p = root / "report.yaml"
    if not p.exists():
        p.write_text(textwrap.dedent(f"""\
            name: report-test
            input: {{format: jsonl, paths: ["{corpus(root)}/*.jsonl.gz"], batch_rows: 128}}
            output: {root}/out-base
            steps:
            """) + textwrap.indent(STEPS, "  "))
    return p


def run_cli(root: pathlib.Path, name: str, sets: tuple[str, ...] = ()) -> pathlib.Path:
    """`gristmill run` (the CLI entry point, in this process: Ray is already up) once per (name, sets)."""
    from pipeline.cli import main

    key = (str(root), name, sets)
    if key not in _RUNS:
        out = root / f"out-{name}"
        argv = ["run", str(recipe(root)), "--output", str(out), "--quiet"]
        for s in sets:
            argv += ["--set", s]
        assert main(argv) == 0
        assert json.loads((out / "stats.json").read_text())["invariant_ok"]
        _RUNS[key] = out
    return _RUNS[key]
