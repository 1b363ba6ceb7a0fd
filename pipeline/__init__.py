"""gristmill engine: recipe schema and validation, DAG, Ray executor, I/O, stats, CLI.

For notebooks::

    import pipeline
    result = pipeline.run("recipes/quickstart.yaml", output="out/try", set=["steps.lang.params.min_score=0.8"])
    result["steps"]            # the stats (as in stats.json)
    result.table("subsample")  # a written step's rows as a pyarrow Table
    result.rejected("lang")    # the rows a step dropped, with their drop_reason

A small local run starts no Ray (worker processes forked from a server started once per
process); a run that needs Ray starts it once, and a second run in the same process reuses it.
"""
from __future__ import annotations

import os
from typing import Any, Iterable


class RunResult(dict):
    """The run's stats (the content of stats.json) plus readers for what it wrote."""

    @property
    def output(self) -> str:
        return self["output"]

    def step(self, step_id: str) -> dict:
        for s in self["steps"]:
            if s["id"] == step_id:
                return s
        raise KeyError(f"no step {step_id!r} in this run; steps: {', '.join(s['id'] for s in self['steps'])}")

    def table(self, step_id: str, columns: list[str] | None = None):
        """Rows a written step kept (global steps, sinks, fan-out points and `write: true` steps)."""
        import pyarrow.parquet as pq

        if step_id not in self["outputs"]:
            self.step(step_id)  # unknown step: KeyError listing the steps
            raise ValueError(f"step {step_id!r} streams into the next step and is not written; written steps: "
                             f"{', '.join(self['outputs'])} (its dropped rows: .rejected({step_id!r}))")
        return pq.read_table(os.path.join(self.output, step_id), columns=columns)

    def rejected(self, step_id: str, columns: list[str] | None = None):
        """Rows the step dropped, each with its `drop_reason` (empty when it dropped none)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.step(step_id)
        path = os.path.join(self.output, "rejected", step_id)
        if not os.path.isdir(path) or not any(f.endswith(".parquet") for f in os.listdir(path)):
            return pa.table({"id": pa.array([], pa.string()), "drop_reason": pa.array([], pa.string())})
        return pq.read_table(path, columns=columns)


def run(recipe: str | os.PathLike | dict, output: str | None = None, *, set: Iterable[str] = (),
        workers: int | None = None, resume: bool = True, quiet: bool = False, progress: bool = True,
        address: str | None = None, executor: str | None = None) -> RunResult:
    """Run a recipe (a YAML path, or the same content as a dict) and return its stats.

    `output` overrides the recipe's output dir; `set` takes the CLI's `--set` overrides;
    `workers` caps parallel workers per step; `resume=False` recomputes complete steps.
    `executor`: auto (default), ray or local (pipeline.executor.Executor.choose_backend): a
    small local run uses worker processes forked from a server started on the first call and
    starts no Ray; a run that needs Ray starts it on the first such call and later ones reuse it
    (`ray.shutdown()` ends it).
    """
    from pipeline.executor import RunOptions, run_recipe
    from pipeline.recipe import load_recipe

    path = _recipe_path(recipe)
    loaded = load_recipe(path, list(set))
    stats = run_recipe(loaded, RunOptions(output=output or loaded.recipe.output, address=address,
                                          max_workers=workers, resume=resume, quiet=quiet, progress=progress,
                                          executor=executor))
    return RunResult(stats)


def _recipe_path(recipe: Any) -> str:
    if isinstance(recipe, dict):
        import tempfile

        import yaml

        fd, path = tempfile.mkstemp(prefix=f"gristmill-{recipe.get('name', 'recipe')}-", suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(recipe, f, sort_keys=False)
        return path
    return os.fspath(recipe)
