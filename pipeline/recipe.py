"""YAML recipe -> typed, validated recipe. Everything is checked before any work starts.

Every problem is reported with the recipe file, the line of the key at fault (1-based, as
editors number lines), the step id and a fix, e.g.::

    recipes/x.yaml:12: step 'lang': unknown operator 'langauge_id'. Did you mean 'language_id'?
"""
from __future__ import annotations

import copy
import difflib
import glob
import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from operators.base import Operator, PluginError, load_operators, load_plugin
from pipeline import dag
from pipeline.dag import SOURCE

STEP_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")

# Columns each input format provides before any step runs.
FORMAT_COLUMNS = {
    "warc": {"id", "url", "warc_date", "warc_record_id", "http_status", "content_type", "html"},
    "wet": {"id", "url", "warc_date", "warc_record_id", "text"},
}


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["parquet", "jsonl", "warc", "wet"]
    paths: list[str] = Field(min_length=1, description="files or globs; local paths or s3://, gs://")
    text_column: str = Field("text", description="input column holding the document text")
    id_column: str = Field("id", description="input column holding a unique id (generated if absent)")
    batch_rows: int = Field(1024, ge=1, le=10_000_000, description="rows per batch produced by the reader")
    unique_ids: Literal["check", "trust"] = Field(
        "check", description="check: a pre-pass over the given ids quarantines every repeat of an id after its "
                             "first row in the run (input:duplicate_id); trust: skip that check (repeats pass)")
    generate: Literal["quickstart-sample"] | None = Field(
        None, description="build this built-in sample corpus at the first path when nothing matches")

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, v):
        return [v] if isinstance(v, str) else v


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    op: str
    params: dict[str, Any] = Field(default_factory=dict)
    input: str | list[str] | None = None
    write_rejected: bool = True
    write: bool = Field(False, description="also write this step's kept rows to <output>/<step>/ "
                                           "(steps that are not global, sinks or fan-outs only stream)")
    resources: dict[str, Any] = Field(default_factory=dict,
                                      description="override the operator's resources, e.g. {num_gpus: 1, concurrency: 2}")

    @field_validator("params", mode="before")
    @classmethod
    def _none_is_empty(cls, v):
        return {} if v is None else v

    @property
    def inputs(self) -> list[str]:
        if self.input is None:
            return []
        return [self.input] if isinstance(self.input, str) else list(self.input)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    input: InputSpec
    output: str
    steps: list[StepSpec] = Field(min_length=1)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    plugins: list[str] = Field(default_factory=list,
                               description="extra operator modules to import: module names, or paths to .py files "
                                           "relative to the recipe's folder")
    shard_bytes: int = Field(128 * 2**20, ge=1024, le=2**40, description="target size of output Parquet shards")


@dataclass
class LoadedRecipe:
    recipe: Recipe
    path: str
    operators: dict[str, type[Operator]]  # step id -> operator class
    params: dict[str, Any]  # step id -> validated params model
    columns: dict[str, set[str]]  # step id -> columns available after the step
    resources: dict[str, Any] = field(default_factory=dict)  # step id -> Resources (operator's + overrides)
    source_columns: set[str] = field(default_factory=set)
    source_fingerprint: list = field(default_factory=list)  # (file, size, mtime) of the inputs

    def step(self, step_id: str) -> StepSpec:
        return next(s for s in self.recipe.steps if s.id == step_id)

    def step_hash(self, step_id: str, _memo: dict | None = None) -> str:
        """Hash of a step's recipe slice and, recursively, of everything upstream of it."""
        memo = {} if _memo is None else _memo
        if step_id in memo:
            return memo[step_id]
        if step_id == SOURCE:
            spec = {"input": self.recipe.input.model_dump(), "seed": self.recipe.seed,
                    "files": self.source_fingerprint}
        else:
            s = self.step(step_id)
            spec = {"op": s.op, "params": self.params[step_id].model_dump(mode="json"),
                    "inputs": [self.step_hash(i, memo) for i in self.inputs_of(step_id)],
                    "seed": self.recipe.seed}
        h = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
        memo[step_id] = h
        return h

    def inputs_of(self, step_id: str) -> list[str]:
        return dag.inputs_of(self.recipe.steps, step_id)


class RecipeError(Exception):
    """One or more problems in a recipe; str() lists them, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = problems if len(problems) <= 50 else problems[:50] + [f"... and {len(problems) - 50} more"]
        super().__init__("\n".join(shown))


def _value_count(node, budget: int) -> int:
    """Values in a parsed YAML document, an alias counted at every use; stops past ``budget``
    (anchors and aliases can make a few lines stand for billions of values)."""
    count, todo = 0, [node]
    while todo and count <= budget:
        n = todo.pop()
        count += 1
        if isinstance(n, dict):
            todo.extend(n.values())
        elif isinstance(n, list):
            todo.extend(n)
    return count


# -- line numbers: compose the YAML node tree (SafeLoader: no objects are constructed) ----
def _node_lines(text: str) -> dict[tuple, int]:
    lines: dict[tuple, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node, path):
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                lines[path + (k.value,)] = k.start_mark.line + 1
                walk(v, path + (k.value,))
                lines[path + (k.value,)] = k.start_mark.line + 1  # the key's line wins
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (i,))

    if root is not None:
        walk(root, ())
    return lines


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`steps.lang.params.min_score=0.8`: dotted path, `steps.<id>` picks a step by id;
    the value is parsed as YAML (so numbers, booleans and lists work)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise RecipeError([f"--set {item!r}: expected dotted.path=value"])
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = raw
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list) and parts[:depth] != ["steps"]:  # another list: by index
                where = ".".join(parts[:depth])
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError([f"--set {key}: {where} is a list of {len(node)}; use an index "
                                       f"0..{len(node) - 1}, or set {where}=[...] whole"])
                if last:
                    node[int(part)] = yaml.safe_load(value)
                else:
                    node = node[int(part)]
            elif isinstance(node, list):
                match = [s for s in node if isinstance(s, dict) and s.get("id") == part]
                if not match:
                    ids = [str(s.get("id")) for s in node if isinstance(s, dict)]
                    raise RecipeError([f"--set {key}: no step with id {part!r}.{_closest(part, ids)} "
                                       f"Steps: {', '.join(ids)} (steps are named by id, not by position)"])
                if last:
                    raise RecipeError([f"--set {key}: cannot replace a whole step"])
                node = match[0]
            elif isinstance(node, dict):
                if last:
                    node[part] = yaml.safe_load(value)
                else:
                    node = node.setdefault(part, {})
            else:
                raise RecipeError([f"--set {key}: {'.'.join(parts[:depth])} is not a mapping "
                                   f"(it is {node!r}); set {'.'.join(parts[:depth])}=VALUE instead"])
    return raw


def _closest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


# the pydantic model that validates each level of a recipe (for "did you mean" on unknown keys)
def _model_at(loc: tuple):
    if not loc:
        return Recipe
    if loc[0] == "input" and len(loc) == 1:
        return InputSpec
    if loc[0] == "steps" and len(loc) == 2:
        return StepSpec
    return None


def _expected(err: dict) -> str:
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    return msg[0].lower() + msg[1:]


def load_recipe(path: str, overrides: list[str] = (), check_inputs: bool = True) -> LoadedRecipe:
    """Read, override, validate. Raises RecipeError listing every problem found."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise RecipeError([f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
                           "save the recipe as UTF-8"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise RecipeError([f"{path}{line}: not valid YAML: {getattr(e, 'problem', e)}"]) from None
    except RecursionError:
        raise RecipeError([f"{path}: not a recipe: YAML nested too deeply"]) from None
    if not isinstance(raw, dict):
        raise RecipeError([f"{path}:1: a recipe is a mapping with name, input, output and steps"])
    if _value_count(raw, 100_000) > 100_000:
        raise RecipeError([f"{path}: not a recipe: over 100000 values once YAML aliases are expanded"])
    raw = apply_overrides(raw, list(overrides))
    lines = _node_lines(text)
    overridden = {tuple(o.split("=", 1)[0].strip().split(".")) for o in overrides}
    base_dir = os.path.dirname(os.path.abspath(path))

    def where(loc: tuple) -> str:
        loc = tuple(loc)
        while loc and loc not in lines:
            loc = loc[:-1]
        return f"{path}:{lines.get(loc, 1)}"

    def step_label(i: int) -> str:
        steps = raw.get("steps") or []
        sid = steps[i].get("id") if i < len(steps) and isinstance(steps[i], dict) else None
        return f"step {sid!r}" if sid else f"step #{i + 1}"

    def by_id(loc: tuple) -> tuple:
        """('steps', 1, 'param') -> ('steps', 'digits', 'param'): the path --set takes."""
        if len(loc) > 1 and loc[0] == "steps" and isinstance(loc[1], int):
            steps = raw.get("steps") or []
            sid = steps[loc[1]].get("id") if loc[1] < len(steps) and isinstance(steps[loc[1]], dict) else None
            if isinstance(sid, str):
                return ("steps", sid) + tuple(loc[2:])
        return tuple(loc)

    def from_set(loc: tuple) -> str:
        key = tuple(map(str, by_id(loc)))
        return " (from --set)" if any(o[:len(key)] == key for o in overridden) else ""

    problems: list[str] = []
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        for err in e.errors():
            loc = err["loc"]
            who = step_label(loc[1]) + ": " if len(loc) > 1 and loc[0] == "steps" and isinstance(loc[1], int) else ""
            dotted = ".".join(str(p) for p in by_id(loc))
            hint = ""
            model = _model_at(tuple(loc[:-1]))
            if err["type"] == "extra_forbidden" and model is not None:
                hint = "." + (_closest(loc[-1], model.model_fields) or f" Keys here: {', '.join(model.model_fields)}.")
            problems.append(f"{where(loc)}: {who}{dotted}{from_set(loc)}: {_expected(err)}{hint}")
        raise RecipeError(problems) from None

    registry = load_operators()
    for i, spec in enumerate(recipe.plugins):
        try:
            load_plugin(spec, base_dir)  # a plugin from a file is shipped to Ray workers by value
        except PluginError as e:
            problems.append(f"{where(('plugins', i))}: {e}")
    if problems:
        raise RecipeError(problems)

    ops: dict[str, type[Operator]] = {}
    params: dict[str, Any] = {}
    resources: dict[str, Any] = {}
    seen: dict[str, int] = {}
    for i, s in enumerate(recipe.steps):
        at = where(("steps", i))
        if not STEP_ID.match(s.id) or s.id == SOURCE:
            problems.append(f"{where(('steps', i, 'id'))}: step {s.id!r}: ids are letters, digits, _ and -, "
                            f"starting with a letter, and not {SOURCE!r} (the reader); rename it")
        if s.id in seen:
            problems.append(f"{where(('steps', i, 'id'))}: step {s.id!r}: id already used by step #{seen[s.id] + 1}; "
                            "give each step its own id")
        seen.setdefault(s.id, i)
        cls = registry.get(s.op)
        if cls is None:
            close = difflib.get_close_matches(s.op, registry, n=1, cutoff=0.5)
            fix = f"Did you mean {close[0]!r}?" if close else "Run `gristmill ops` to list operators."
            problems.append(f"{where(('steps', i, 'op'))}: step {s.id!r}: unknown operator {s.op!r}. {fix}")
            continue
        ops[s.id] = cls
        missing_mods = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        if missing_mods:
            problems.append(f"{at}: step {s.id!r}: operator {s.op!r} needs module(s) {', '.join(missing_mods)}; "
                            "install them (pip install ...)")
        try:
            resources[s.id] = cls.resources.model_validate({**cls.resources.model_dump(), **s.resources})
        except ValidationError as e:
            for err in e.errors():
                loc = ("steps", i, "resources") + tuple(err["loc"])
                problems.append(f"{where(loc)}: step {s.id!r}: resources.{'.'.join(map(str, err['loc']))}="
                                f"{err.get('input')!r}: {_expected(err)} (takes: {', '.join(type(cls.resources).model_fields)})")
        try:
            params[s.id] = cls.Params.model_validate(s.params)
        except ValidationError as e:
            for err in e.errors():
                loc = ("steps", i, "params") + tuple(err["loc"])
                dotted = ".".join(str(p) for p in err["loc"]) or "params"
                src = " (from --set)" if ("steps", s.id, "params") + tuple(map(str, err["loc"])) in overridden else ""
                fields = ", ".join(cls.Params.model_fields) or "no parameters"
                hint = ""
                if err["type"] == "extra_forbidden":
                    hint = f"; {s.op} takes: {fields}." + _closest(err["loc"][-1], cls.Params.model_fields)
                problems.append(f"{where(loc)}: step {s.id!r}: {dotted}={err.get('input')!r}{src}: "
                                f"{_expected(err)}{hint}")

    ids = [s.id for s in recipe.steps]
    for i, s in enumerate(recipe.steps):
        for ref in s.inputs:
            if ref not in ids:
                close = difflib.get_close_matches(ref, ids, n=1, cutoff=0.5)
                fix = f"Did you mean {close[0]!r}?" if close else f"Known steps: {', '.join(ids)}."
                problems.append(f"{where(('steps', i, 'input'))}: step {s.id!r}: input {ref!r} is not a step. {fix}")
            elif ref == s.id:
                problems.append(f"{where(('steps', i, 'input'))}: step {s.id!r}: a step cannot read its own output")
    if problems:
        raise RecipeError(problems)

    loaded = LoadedRecipe(recipe=recipe, path=path, operators=ops, params=params, columns={}, resources=resources)
    cycle = dag.find_cycle(recipe.steps)
    if cycle:
        i = ids.index(cycle[0])
        problems.append(f"{where(('steps', i, 'input'))}: step {cycle[0]!r}: the steps form a cycle "
                        f"{' -> '.join(cycle)}; point one of their `input:` at an earlier step")
        raise RecipeError(problems)

    loaded.source_columns = source_columns(recipe.input, path, problems, where, check_inputs)
    for sid in dag.topo_order(recipe.steps):
        cls = ops[sid]
        upstream = [loaded.source_columns if d == SOURCE else loaded.columns[d] for d in loaded.inputs_of(sid)]
        have = set.intersection(*upstream)
        missing = sorted(set(cls.needs) - have)
        if missing:
            i = ids.index(sid)
            adders = sorted(n for n, c in registry.items() if set(missing) & set(c.adds))
            fix = f"add a step with {' or '.join(adders)} before it" if adders else "provide them in the input"
            problems.append(f"{where(('steps', i, 'op'))}: step {sid!r}: {cls.name} needs column(s) "
                            f"{', '.join(missing)} that nothing before it provides; {fix}")
        loaded.columns[sid] = have | set(cls.columns_added(loaded.params[sid]))
    if problems:
        raise RecipeError(problems)
    return loaded


def expand_paths(patterns: list[str]) -> list[str]:
    """Local globs expand here (sorted, so runs are deterministic) to absolute paths: relative
    ones are relative to the working directory of the driver, not of the Ray workers that read
    them. URIs are kept as given (Ray/pyarrow list them when reading)."""
    files: list[str] = []
    for p in patterns:
        if "://" in p:
            files.extend(_expand_uri(p))
            continue
        p = os.path.abspath(os.path.expanduser(p))
        if any(ch in p for ch in "*?["):
            files.extend(sorted(glob.glob(p, recursive=True)))
        elif os.path.isdir(p):
            files.extend(sorted(os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs
                                if not f.startswith((".", "_"))))
        elif os.path.exists(p):
            files.append(p)
    return files


def _expand_uri(pattern: str) -> list[str]:
    """s3://bucket/dir/*.parquet etc.: list the fixed prefix with pyarrow's filesystem, match the rest."""
    import fnmatch

    import pyarrow.fs as pafs

    scheme, rest = pattern.split("://", 1)
    if not any(ch in rest for ch in "*?["):
        return [pattern]
    fs, path = pafs.FileSystem.from_uri(pattern.split("*")[0].rsplit("/", 1)[0] + "/")
    prefix = pattern.split("*")[0].rsplit("/", 1)[0].split("://", 1)[1]
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(f"{scheme}://{i.path}" for i in infos
                  if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, rest)
                  and i.path.startswith(prefix.split("/", 1)[0]))


def source_columns(spec: InputSpec, path: str, problems: list[str], where, check: bool) -> set[str]:
    """Columns the reader will provide; fail fast on empty globs and inputs without text.
    `where(loc)` gives 'file:line' of a recipe key (a string is taken as is)."""
    if isinstance(where, str):
        where = (lambda at: lambda loc: at)(where)
    at_paths = where(("input", "paths", 0) if len(spec.paths) == 1 else ("input", "paths"))
    if spec.format in FORMAT_COLUMNS:
        cols = set(FORMAT_COLUMNS[spec.format])
    else:
        cols = {"id", "text"}
    if not check:
        return cols
    files = expand_paths(spec.paths)
    if not files and spec.generate:
        return cols | {"source", "language", "url", "meta"} if spec.format == "jsonl" else cols
    if not files:
        problems.append(f"{at_paths}: input.paths: no files match {', '.join(spec.paths)} (working directory "
                        f"{os.getcwd()}); check the paths")
        return cols
    if spec.format in ("parquet", "jsonl") and "://" not in files[0]:
        from pipeline.io import peek_columns

        first, found = files[0], None
        try:  # empty files read as zero rows: judge the columns by the first file with a record
            for first in files[:50]:
                found = peek_columns(first, spec.format, spec.text_column)
                if found is not None:
                    break
        except Exception as e:  # unreadable first file: say which
            problems.append(f"{at_paths}: input.paths: cannot read {first}: {e}")
            return cols
        if found is None:
            return cols
        if spec.text_column not in found:
            problems.append(f"{where(('input', 'text_column'))}: input.text_column: {first} has no "
                            f"{spec.text_column!r} column (it has: {', '.join(sorted(found)) or 'none'}); "
                            "set input.text_column to the column holding the text")
        if spec.format == "jsonl":  # what the JSONL reader makes of any record
            from pipeline.io import JSONL_LIFTED

            found = {"meta", *JSONL_LIFTED}
        cols = (found - {spec.text_column, spec.id_column}) | {"id", "text"}
    return cols
