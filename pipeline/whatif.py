"""What a finished run would have kept with other thresholds, computed from what it wrote.

Filters never delete rows: every document that reached a filter is on disk with all its scores,
either under `<out>/rejected/<step>/` (with the `drop_reason` of the first rule it failed) or among
the rows that went on (read back from the next written step). So a threshold that only moves a cut
on a recorded score can be re-applied without running anything.

Which parameter cuts which column is declared once, here, in `RULES` (operator name -> ordered
rule list for a configuration); an operator class may also carry its own `threshold_rules(params)`
classmethod, which wins (plugins declare theirs that way). `pipeline` never imports a concrete
operator: the registry gives the Params models, this table gives the cuts.

Order matters: a filter names the FIRST rule a document fails. For a changed step each row is
re-decided from its scores:
  - kept before: it passed every rule, so only the declared cuts can now drop it (exact);
  - dropped by a rule that is not a score cut (e.g. c4's curly_bracket, an `input:` reason): stays
    dropped (exact);
  - dropped by a declared cut: every rule before that one passed; the declared cuts are
    re-evaluated from the scores; a rule after it that is not a score cut was never evaluated, so
    such a row is counted as "unknown" (reported as a range, never guessed).
Downstream of a changed step each row keeps its recorded fate at the steps it reached; rows that
now reach a step they never reached have an unknown fate there (map steps that drop nothing keep
them; for exact_dedup / minhash_dedup a cluster whose kept row disappears upstream keeps its
smallest remaining id instead, which is exact for exact_dedup and for `keep: first`).
"""
from __future__ import annotations

import copy
import glob
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import polars as pl

from pipeline import dag
from pipeline.dag import SOURCE

RUN_RECIPE = "recipe.json"  # the resolved recipe a run was started with (written by `gristmill run`)


# -- the declared cuts -----------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """One rule of a filter, in the order the filter applies them.

    `param` / `column` / `drop` are None for a rule that is not a cut on a recorded score.
    `drop(values, threshold) -> bool mask` says which rows the rule drops; nulls never match a
    comparison (NaN), and `null_drops` makes a null score a drop (language_id, quality_classifier)."""

    reason: str                       # the full drop_reason, e.g. "language_id:low_score"
    param: str | None = None          # the Params field holding the threshold
    column: str | None = None         # the score column it cuts
    op: str | None = None             # "<", "<=", ">", ">=": the rule drops rows where column OP value
    value: Any = None                 # the threshold for this configuration (None: the rule is off)
    null_drops: bool = False

    @property
    def is_cut(self) -> bool:
        return self.column is not None

    def drops(self, scores: np.ndarray, value: Any = "recipe") -> np.ndarray:
        v = self.value if isinstance(value, str) and value == "recipe" else value
        if v is None:
            return np.zeros(len(scores), bool)
        s = scores
        t = np.asarray(v, dtype=s.dtype) if s.dtype.kind == "f" else v  # float32 scores: compare in float32
        with np.errstate(invalid="ignore"):
            m = {"<": s < t, "<=": s <= t, ">": s > t, ">=": s >= t}[self.op]
        if self.null_drops and s.dtype.kind == "f":
            m = m | np.isnan(s)
        return np.asarray(m, bool)

    def label(self) -> str:
        return f"{self.param} ({self.column} {self.op} {self.value} is dropped)"


def _on(v):
    """gopher/repetition rules: None or 0 turns a rule off (datatrove's convention)."""
    return None if v is None or v == 0 else v


def _language_id(p: dict) -> list[Rule]:
    if p.get("label_only"):
        return []
    return [Rule("language_id:language_not_kept"),
            Rule("language_id:low_score", "min_score", "language_score", "<=", p["min_score"], null_drops=True)]


def _quality_classifier(p: dict) -> list[Rule]:
    if p.get("label_only"):
        return []
    return [Rule("quality_classifier:low_score", "min_score", p["column"], "<", p["min_score"], null_drops=True)]


def _length_filter(p: dict) -> list[Rule]:
    return [Rule("length_filter:too_few_chars", "min_chars", "n_chars", "<", p.get("min_chars")),
            Rule("length_filter:too_many_chars", "max_chars", "n_chars", ">", p.get("max_chars")),
            Rule("length_filter:too_few_words", "min_words", "n_words", "<", p.get("min_words")),
            Rule("length_filter:too_many_words", "max_words", "n_words", ">", p.get("max_words"))]


def _gopher_quality(p: dict) -> list[Rule]:
    g = "gopher_quality:gopher_"
    return [Rule(g + "short_doc", "min_doc_words", "quality_gopher_words", "<", _on(p["min_doc_words"])),
            Rule(g + "long_doc", "max_doc_words", "quality_gopher_words", ">", _on(p["max_doc_words"])),
            Rule(g + "below_avg_threshold", "min_avg_word_length", "quality_gopher_avg_word_len", "<",
                 _on(p["min_avg_word_length"])),
            Rule(g + "above_avg_threshold", "max_avg_word_length", "quality_gopher_avg_word_len", ">",
                 _on(p["max_avg_word_length"])),
            Rule(g + "too_many_hashes", "max_symbol_word_ratio", "quality_gopher_hash_ratio", ">",
                 _on(p["max_symbol_word_ratio"])),
            Rule(g + "too_many_ellipsis", "max_symbol_word_ratio", "quality_gopher_ellipsis_ratio", ">",
                 _on(p["max_symbol_word_ratio"])),
            Rule(g + "too_many_bullets", "max_bullet_lines_ratio", "quality_gopher_bullet_lines", ">",
                 _on(p["max_bullet_lines_ratio"])),
            Rule(g + "too_many_end_ellipsis", "max_ellipsis_lines_ratio", "quality_gopher_ellipsis_lines", ">",
                 _on(p["max_ellipsis_lines_ratio"])),
            Rule(g + "below_alpha_threshold", "max_non_alpha_words_ratio", "quality_gopher_alpha_ratio", "<",
                 _on(p["max_non_alpha_words_ratio"])),
            Rule(g + "enough_stop_words", "min_stop_words", "quality_gopher_stop_words", "<", _on(p["min_stop_words"]))]


def _gopher_repetition(p: dict) -> list[Rule]:
    r = "gopher_repetition:"
    rules = [Rule(r + "empty")]
    for name in ("dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac"):
        rules.append(Rule(r + name, name, f"quality_rep_{name}", ">", _on(p[name])))
    # list-valued params: settable as a whole list (--set ...top_n_grams=[[2,0.25],[3,0.18],[4,0.16]])
    for k, frac in p["top_n_grams"]:
        rules.append(Rule(f"{r}top_{k}_gram", "top_n_grams", f"quality_rep_top_{k}gram", ">", frac))
    for k, frac in p["dup_n_grams"]:
        rules.append(Rule(f"{r}duplicated_{k}_n_grams", "dup_n_grams", f"quality_rep_dup_{k}gram", ">", frac))
    return rules


def _c4_quality(p: dict) -> list[Rule]:
    c = "c4_quality:"
    off = p["min_num_sentences"] == -1
    return [Rule(c + "lorem_ipsum"), Rule(c + "curly_bracket"),
            Rule(c + "too_few_sentences", "min_num_sentences", "quality_c4_sentences", "<",
                 None if off else p["min_num_sentences"])]


def _c4_check(old: dict, new: dict) -> str | None:
    if new["min_num_sentences"] > old["min_num_sentences"] and old["min_num_sentences"] != -1:
        return ("quality_c4_sentences is counted exactly only below the run's min_num_sentences (other rows "
                "record their kept line count), so raising it needs a rerun")
    return None


def _fineweb_quality(p: dict) -> list[Rule]:
    f = "fineweb_quality:"
    return [Rule(f + "empty"),
            # line_punct_exclude_zero spares a ratio of exactly 0: then the cut is not a plain comparison
            Rule(f + "line_punct_ratio", *(("line_punct_thr", "quality_fineweb_line_punct_ratio", "<", p["line_punct_thr"])
                                          if not p["line_punct_exclude_zero"] else (None, None, None, None))),
            Rule(f + "short_line_ratio", "short_line_thr", "quality_fineweb_short_line_ratio", ">", p["short_line_thr"]),
            Rule(f + "char_dup_ratio", "char_duplicates_ratio", "quality_fineweb_char_dup_ratio", ">",
                 p["char_duplicates_ratio"]),
            Rule(f + "list_ratio", "new_line_ratio", "quality_fineweb_list_ratio", ">", p["new_line_ratio"])]


def _language_check(old: dict, new: dict) -> str | None:
    for p in (old, new):
        if p.get("languages") and p["min_score"] < 0.5:
            return ("with `languages` and min_score < 0.5 language_id keeps by the best listed language's score, "
                    "which is not recorded")
    if bool(old.get("label_only")) != bool(new.get("label_only")):
        return "label_only changes which rules run"
    return None


# operator name -> (rules for a params dict, optional check(old, new) -> reason a rerun is needed)
RULES: dict[str, tuple[Callable[[dict], list[Rule]], Callable[[dict, dict], str | None] | None]] = {
    "language_id": (_language_id, _language_check),
    "quality_classifier": (_quality_classifier, None),
    "length_filter": (_length_filter, None),
    "gopher_quality": (_gopher_quality, None),
    "gopher_repetition": (_gopher_repetition, None),
    "c4_quality": (_c4_quality, _c4_check),
    "fineweb_quality": (_fineweb_quality, None),
}


def rules_for(op: str, params: dict, registry: dict | None = None) -> list[Rule] | None:
    """The ordered rules of a filter configuration, or None when nothing is declared for it."""
    cls = (registry or {}).get(op)
    own = getattr(cls, "threshold_rules", None) if cls is not None else None
    if own is not None:
        return list(own(params))
    if op in RULES:
        return RULES[op][0](params)
    return None


# -- a finished run --------------------------------------------------------------------------
@dataclass
class Run:
    """A finished run's output dir: stats, the recipe it ran, and its steps as a DAG."""

    out: str
    stats: dict
    recipe: dict                                  # the resolved recipe (steps with their params)
    params: dict[str, dict]                       # step id -> params with the operator's defaults
    ops: dict[str, str]                           # step id -> operator name
    kinds: dict[str, str]
    inputs: dict[str, list[str]]                  # step id -> input step ids (SOURCE for the first)
    order: list[str]                              # SOURCE first, then topological order
    registry: dict = field(default_factory=dict)
    recipe_note: str | None = None                # set when the recipe had to be re-read from its path

    @property
    def steps(self) -> dict[str, dict]:
        return {s["id"]: s for s in self.stats["steps"]}

    def consumers(self, step: str) -> list[str]:
        return [s for s in self.order if step in self.inputs.get(s, [])]

    def written(self, step: str) -> bool:
        return step in self.stats.get("outputs", []) and bool(glob.glob(os.path.join(self.out, step, "*.parquet")))

    def rules(self, step: str, params: dict | None = None) -> list[Rule] | None:
        if step not in self.ops:
            return None
        return rules_for(self.ops[step], self.params[step] if params is None else params, self.registry)


def save_run_recipe(loaded, output: str) -> None:
    """Write `<output>/recipe.json`: the recipe as it ran (overrides applied) with every step's
    validated params, so a report or a what-if reads the thresholds that were really used."""
    rec = loaded.recipe.model_dump(mode="json")
    for s in rec["steps"]:
        s["params"] = loaded.params[s["id"]].model_dump(mode="json")
    rec["recipe_path"] = loaded.path
    os.makedirs(output, exist_ok=True)
    tmp = os.path.join(output, f".{RUN_RECIPE}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(rec, f, indent=1)
    os.replace(tmp, os.path.join(output, RUN_RECIPE))


def load_run(out: str) -> Run:
    """Read a finished run. Errors name what is missing and how to get it."""
    stats_path = os.path.join(out, "stats.json")
    if not os.path.isfile(stats_path):
        raise FileNotFoundError(f"{stats_path} not found: is {out!r} the output dir of a finished `gristmill run`?")
    with open(stats_path, encoding="utf-8") as f:
        stats = json.load(f)
    note = None
    rpath = os.path.join(out, RUN_RECIPE)
    if os.path.isfile(rpath):
        with open(rpath, encoding="utf-8") as f:
            recipe = json.load(f)
        registry = _operators(recipe)
    else:  # a run started from Python (run_recipe): re-read the recipe file it came from
        from pipeline.recipe import load_recipe

        path = stats.get("recipe_path")
        if not path or not os.path.isfile(path):
            raise FileNotFoundError(f"{rpath} not found and the run's recipe {path!r} is gone: the report needs the "
                                    f"recipe the run used (rerun it with `gristmill run`, which records it)")
        loaded = load_recipe(path, check_inputs=False)
        recipe = loaded.recipe.model_dump(mode="json")
        for s in recipe["steps"]:
            s["params"] = loaded.params[s["id"]].model_dump(mode="json")
        recipe["recipe_path"] = path
        registry = _operators(recipe)
        note = (f"thresholds read from {path} (no {RUN_RECIPE} in the output: overrides given at run time, if any, "
                f"are not known)")
    steps = recipe["steps"]
    ops = {s["id"]: s["op"] for s in steps}
    kinds = {sid: (registry[op].kind if op in registry else "map") for sid, op in ops.items()}
    inputs = {s["id"]: dag.inputs_of([_S(x) for x in steps], s["id"]) for s in steps}
    order = [SOURCE] + dag.topo_order([_S(x) for x in steps])
    params = {s["id"]: s.get("params", {}) for s in steps}
    return Run(out=out, stats=stats, recipe=recipe, params=params, ops=ops, kinds=kinds, inputs=inputs,
               order=order, registry=registry, recipe_note=note)


def _operators(recipe: dict) -> dict:
    """The registry with the run's plugins (paths are relative to the recipe's folder)."""
    from operators.base import load_operators

    base = os.path.dirname(os.path.abspath(recipe["recipe_path"])) if recipe.get("recipe_path") else None
    try:
        return dict(load_operators(recipe.get("plugins", []), base_dir=base))
    except TypeError:  # an operators.base without plugin paths
        return dict(load_operators(recipe.get("plugins", [])))


class _S:
    """The step shape pipeline.dag expects, from a recipe dict."""

    def __init__(self, d: dict):
        self.id, self.op = d["id"], d["op"]
        inp = d.get("input")
        self.inputs = [] if inp is None else ([inp] if isinstance(inp, str) else list(inp))


# -- rows that reached a step ------------------------------------------------------------------
def _files(out: str, *parts: str) -> list[str]:
    return sorted(glob.glob(os.path.join(out, *parts, "*.parquet")))


def _scan(files: list[str], columns: list[str]) -> pl.LazyFrame | None:
    if not files:
        return None
    lf = pl.scan_parquet(files, missing_columns="insert", extra_columns="ignore") if len(files) > 1 else pl.scan_parquet(files)
    have = set(lf.collect_schema().names())
    cols = [pl.col(c) if c in have else pl.lit(None).alias(c) for c in columns]
    return lf.select(cols)


def kept_rows(run: Run, step: str, columns: list[str]) -> pl.LazyFrame | None:
    """Rows a step passed on: its written output, or what reached its (single-input) consumer.
    None when that cannot be told (e.g. its only consumer is a union of several steps)."""
    if run.written(step):
        return _scan(_files(run.out, step), columns)
    for c in run.consumers(step):
        generates = getattr(run.registry.get(run.ops.get(c)), "generates", False)
        if len(run.inputs.get(c, [])) == 1 and not generates:  # a generating step's rows include new ones
            return reached_rows(run, c, columns, with_reason=False)
    return None


def reached_rows(run: Run, step: str, columns: list[str], with_reason: bool = True) -> pl.LazyFrame | None:
    """Every row that reached `step`, with `_kept` (it went on) and `drop_reason`: the step's
    rejected rows plus the rows it passed on. Only the asked columns are read (nulls where absent)."""
    cols = list(dict.fromkeys(["id", *columns]))
    kept = kept_rows(run, step, cols)
    if kept is None:
        return None
    parts = [kept.with_columns(pl.lit(True).alias("_kept"), pl.lit(None, pl.String).alias("drop_reason"))]
    rej = _scan(_files(run.out, "rejected", step), cols + ["drop_reason"])
    if rej is not None:
        parts.append(rej.with_columns(pl.lit(False).alias("_kept")))
    lf = pl.concat(parts, how="diagonal_relaxed")
    return lf if with_reason else lf.select(cols)


# -- one changed step: re-deciding its rows from their scores ---------------------------------------
def decide(rules_old: list[Rule], rules_new: list[Rule], kept: np.ndarray, reason: np.ndarray,
           scores: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(keep, unknown) for every row of a changed step, from its recorded fate and scores.

    `reason` holds each rejected row's drop_reason category (None for kept rows); `scores`
    column -> values. A row is `unknown` when it would pass every declared cut but a rule after
    the one that dropped it is not a cut (never evaluated for it)."""
    n = len(kept)
    fails_cut = np.zeros(n, bool)
    for r in rules_new:
        if r.is_cut:
            fails_cut |= r.drops(scores[r.column])
    pos = reason if isinstance(reason, np.ndarray) and reason.dtype.kind == "i" else rule_positions(rules_old, reason)
    # -2: kept; -1: a reason not in the rule list (input:, ...); else the rule index
    cut_index = np.array([i for i, r in enumerate(rules_old) if r.is_cut], dtype=np.int64)
    opaque_index = np.array([i for i, r in enumerate(rules_old) if not r.is_cut], dtype=np.int64)
    by_cut = np.isin(pos, cut_index)
    by_other = (pos == -1) | np.isin(pos, opaque_index)
    last_opaque = opaque_index.max() if len(opaque_index) else -1
    open_after = by_cut & (pos < last_opaque)  # a non-cut rule after the one that dropped it
    passes = ~fails_cut & ~by_other
    keep = passes & ~open_after
    unknown = passes & open_after
    return keep, unknown


def rule_positions(rules: list[Rule], reason) -> np.ndarray:
    """Index of each row's drop reason in `rules`: -2 for a kept row (null), -1 for a reason that
    is not one of the rules (input:..., a reason of another version)."""
    mapping = {r.reason: i for i, r in enumerate(rules)}
    s = reason if isinstance(reason, pl.Series) else pl.Series("r", list(reason), dtype=pl.String)
    pos = s.replace_strict(list(mapping), list(mapping.values()), default=-1, return_dtype=pl.Int64)
    return pos.zip_with(s.is_not_null(), pl.Series([-2] * len(s), dtype=pl.Int64)).to_numpy()


def _reason_category(r: pl.Expr) -> pl.Expr:
    return r.str.split(" ").list.first()


@dataclass
class StepCount:
    step: str
    docs_before: int            # kept in the run
    docs: int                   # kept with the changes (certain)
    docs_unknown: int           # may also be kept: their fate here was never measured
    tokens_before: int | None = None
    tokens: int | None = None
    changed: bool = False
    note: str | None = None


@dataclass
class WhatIf:
    changes: dict[str, dict]                # step id -> {param: (old, new)}
    counts: list[StepCount]                 # every step at or after a changed one, in run order
    needs_rerun: list[str]                  # parameters a what-if cannot answer, and why

    def table(self) -> pl.DataFrame:
        return pl.DataFrame([{"step": c.step, "changed": c.changed, "docs_before": c.docs_before, "docs": c.docs,
                              "docs_unknown": c.docs_unknown, "tokens_before": c.tokens_before, "tokens": c.tokens,
                              "note": c.note} for c in self.counts],
                            schema={"step": pl.String, "changed": pl.Boolean, "docs_before": pl.Int64, "docs": pl.Int64,
                                    "docs_unknown": pl.Int64, "tokens_before": pl.Int64, "tokens": pl.Int64,
                                    "note": pl.String})


def parse_sets(run: Run, sets: list[str]) -> tuple[dict[str, dict], list[str]]:
    """--set steps.<id>.params.<name>=<value> -> ({step: new params (validated, defaults filled)}, problems)."""
    from pipeline.recipe import RecipeError, apply_overrides

    problems, touched = [], {}
    for item in sets:
        key = item.split("=", 1)[0].strip()
        parts = key.split(".")
        if len(parts) != 4 or parts[0] != "steps" or parts[2] != "params":
            problems.append(f"--set {item!r}: a what-if changes step parameters: steps.<id>.params.<name>=<value>")
            continue
        if parts[1] not in run.ops:
            problems.append(f"--set {item!r}: no step {parts[1]!r} in this run (steps: {', '.join(run.ops)})")
            continue
        touched.setdefault(parts[1], set()).add(parts[3])
    if problems:
        raise RecipeError(problems)
    raw = apply_overrides(copy.deepcopy(run.recipe), sets)
    new = {}
    for s in raw["steps"]:
        if s["id"] not in touched:
            continue
        cls = run.registry.get(s["op"])
        try:
            model = cls.Params(**s.get("params", {})) if cls is not None else None
        except Exception as e:  # pydantic ValidationError: name the step and the value
            raise RecipeError([f"--set for step {s['id']!r} ({s['op']}): {e}"]) from None
        new[s["id"]] = model.model_dump(mode="json") if model is not None else s.get("params", {})
    return new, sorted(f"{k}.{p}" for k, ps in touched.items() for p in ps)


def what_if(out: str | Run, sets: list[str]) -> WhatIf:
    """How many documents (and tokens, where rows carry `n_tokens`) every step from the changed
    ones to the end would keep with `sets` applied, from the run's recorded rows. No rerun."""
    run = out if isinstance(out, Run) else load_run(out)
    new_params, _ = parse_sets(run, sets)
    changes: dict[str, dict] = {}
    needs_rerun: list[str] = []
    new_rules: dict[str, list[Rule]] = {}
    for step, newp in new_params.items():
        oldp = run.params[step]
        diff = {k: (oldp.get(k), v) for k, v in newp.items() if oldp.get(k) != v}
        if not diff:
            continue
        changes[step] = diff
        op = run.ops[step]
        r_old, r_new = run.rules(step), run.rules(step, newp)
        check = RULES.get(op, (None, None))[1]
        why = check(oldp, newp) if check else None
        if r_old is None:
            why = why or f"{op} declares no threshold on a recorded score"
        else:
            cut_params = {r.param for r in r_old + r_new if r.is_cut}
            other = sorted(set(diff) - cut_params)
            if other:
                why = why or f"{', '.join(other)} {'is' if len(other) == 1 else 'are'} not a cut on a recorded score"
            elif [r.reason for r in r_old] != [r.reason for r in r_new] or \
                    [r.is_cut for r in r_old] != [r.is_cut for r in r_new]:
                why = why or "the change adds or removes rules"
        if why:
            needs_rerun += [f"steps.{step}.params.{k}: needs a rerun ({why})" for k in diff]
        else:
            new_rules[step] = r_new
    counts = _flow(run, new_rules) if new_rules else []
    return WhatIf(changes=changes, counts=counts, needs_rerun=needs_rerun)


def _descendants(run: Run, steps: set[str]) -> set[str]:
    out, todo = set(steps), list(steps)
    while todo:
        s = todo.pop()
        for c in run.consumers(s):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _flow(run: Run, new_rules: dict[str, list[Rule]]) -> list[StepCount]:
    """Carry the changed decisions to the end of the run, step by step in DAG order.

    State per step: the ids it would pass on, each `sure` or not (False: the row's fate somewhere
    upstream was never measured)."""
    affected = _descendants(run, set(new_rules))
    passed: dict[str, pl.DataFrame] = {}   # step -> (id, sure) it would pass on
    counts: list[StepCount] = []
    st = run.steps
    for step in run.order:
        if step not in affected:
            continue
        rules = new_rules.get(step)
        rule_cols = sorted({r.column for r in (rules or []) + (run.rules(step) or []) if r.is_cut}) if rules else []
        extra = ["dup_of"] if run.kinds.get(step) == "global" else []
        reached = reached_rows(run, step, rule_cols + extra + ["n_tokens"])
        if reached is None:
            raise ValueError(f"step {step!r}: the rows it passed on cannot be told apart (its only consumer is a "
                             f"union of several steps), so a what-if through it needs a rerun")
        df = reached.with_columns(_reason_category(pl.col("drop_reason")).alias("_reason")).collect()
        # rows arriving with the change: from each input, what it would pass on
        ups = run.inputs.get(step, [])
        arrive = None
        if step not in new_rules or any(u in affected for u in ups):
            frames = [passed[u] if u in affected else
                      _orig_passed(run, u, step, df) for u in ups]
            arrive = pl.concat(frames).group_by("id").agg(pl.col("sure").all()) if frames else None
        note = None
        if rules is not None:
            scores = {c: _np(df[c]) for c in rule_cols}
            keep, unknown = decide(run.rules(step), rules, df["_kept"].to_numpy(), rule_positions(run.rules(step), df["_reason"]),
                                   scores)
            decided = pl.DataFrame({"id": df["id"], "_keep": keep, "_unknown": unknown, "_kept": df["_kept"]})
            if unknown.any():
                note = f"{int(unknown.sum()):,} rows dropped by a cut here would pass it, but a later rule of the step was never evaluated for them"
        else:
            decided = df.select("id", pl.col("_kept").alias("_keep"), pl.lit(False).alias("_unknown"), "_kept")
        if arrive is not None:
            j = arrive.join(decided, on="id", how="left")
            known = j["_keep"].is_not_null()
            drops_nothing = run.kinds.get(step) == "map" and st.get(step, {}).get("docs_dropped", 1) == 0
            if drops_nothing:  # a map step that dropped nothing keeps whatever arrives
                j = j.with_columns(pl.col("_keep").fill_null(True), pl.col("_unknown").fill_null(False))
            else:
                j = j.with_columns(pl.col("_keep").fill_null(False),
                                   (pl.col("_unknown").fill_null(False) | ~pl.Series(known)).alias("_unknown"))
            if "dup_of" in df.columns and df["dup_of"].null_count() < len(df):
                j, dnote = _dedup_keepers(j, df)
                note = dnote or note
            elif run.kinds.get(step) == "global" and st.get(step, {}).get("docs_dropped", 0):
                note = (f"approximate: {run.ops[step]} decides over the whole dataset (a budget, a sample), so "
                        f"with other rows arriving a rerun may keep others; here rows keep their recorded fate")
            new_unknown = (~pl.Series(known)).sum()
            if new_unknown and not drops_nothing:
                note = (f"{new_unknown:,} rows now reach this step that never reached it in the run: their fate here "
                        f"is unknown")
            out = j.filter(pl.col("_keep") | pl.col("_unknown")).select(
                "id", (pl.col("sure") & pl.col("_keep") & ~pl.col("_unknown")).alias("sure"))
        else:
            out = decided.filter(pl.col("_keep") | pl.col("_unknown")).select("id", (~pl.col("_unknown")).alias("sure"))
        passed[step] = out
        tok_before = tok = None
        if "n_tokens" in df.columns and df["n_tokens"].null_count() < len(df):
            tok_before = int(df.filter(pl.col("_kept"))["n_tokens"].sum())
            tok = int(out.filter(pl.col("sure")).join(df.select("id", "n_tokens"), on="id", how="left")["n_tokens"].sum())
        counts.append(StepCount(step=step, docs_before=int(df["_kept"].sum()), docs=int(out["sure"].sum()),
                                docs_unknown=int((~out["sure"]).sum()), tokens_before=tok_before, tokens=tok,
                                changed=step in new_rules, note=note))
    return counts


def _orig_passed(run: Run, up: str, step: str, reached_here: pl.DataFrame) -> pl.DataFrame:
    """What an unaffected input passed on to `step` in the run (all sure)."""
    if len(run.inputs.get(step, [])) == 1:
        return reached_here.select("id", pl.lit(True).alias("sure"))
    rows = kept_rows(run, up, ["id"])
    return rows.collect().select("id", pl.lit(True).alias("sure"))


def _dedup_keepers(j: pl.DataFrame, df: pl.DataFrame) -> tuple[pl.DataFrame, str | None]:
    """A dedup step: a cluster whose kept row no longer arrives keeps its smallest arriving id."""
    dup = df.filter(pl.col("dup_of").is_not_null()).select("id", "dup_of")
    present = j.filter(pl.col("sure")).select("id")
    lost = dup.join(present, left_on="dup_of", right_on="id", how="anti")  # keeper gone
    if not len(lost):
        return j, None
    members = lost.join(present, on="id", how="semi")
    new_keepers = members.group_by("dup_of").agg(pl.col("id").min()).select("id")
    if not len(new_keepers):
        return j, None
    j = j.with_columns(pl.when(pl.col("id").is_in(new_keepers["id"].implode())).then(True)
                       .otherwise(pl.col("_keep")).alias("_keep"))
    return j, (f"{len(new_keepers):,} duplicate clusters lose their kept row upstream: each keeps its smallest "
               f"remaining id instead (exact for exact_dedup and keep: first)")


# -- tables for notebooks and the report -----------------------------------------------------------
def thresholds(out: str | Run) -> pl.DataFrame:
    """Every declared cut of the run: (step, op, param, column, drop comparison, value)."""
    run = out if isinstance(out, Run) else load_run(out)
    rows = []
    for step in run.order:
        for r in run.rules(step) or []:
            if r.is_cut:
                rows.append({"step": step, "op": run.ops[step], "param": r.param, "column": r.column,
                             "drops_when": f"{r.column} {r.op} value", "value": json.dumps(r.value), "reason": r.reason})
    schema = {k: pl.String for k in ("step", "op", "param", "column", "drops_when", "value", "reason")}
    return pl.DataFrame(rows, schema=schema)


def score_rows(run: Run, step: str) -> pl.DataFrame | None:
    """The reached rows of a filter step with its score columns, `_kept` and the reason category."""
    rules = run.rules(step)
    if not rules:
        return None
    cols = sorted({r.column for r in rules if r.is_cut})
    if not cols:
        return None
    lf = reached_rows(run, step, cols + ["n_tokens"])
    if lf is None:
        return None
    return lf.with_columns(_reason_category(pl.col("drop_reason")).alias("_reason")).collect()


def curve(run: Run, step: str, param: str, df: pl.DataFrame | None = None, points: int = 60,
          values: list | None = None) -> pl.DataFrame:
    """Documents (and tokens) the step alone would keep for each value of `param`, the other
    rules as in the run: (value, docs, docs_unknown, tokens). Exact within the rule-order limits
    of `decide`."""
    df = score_rows(run, step) if df is None else df
    rules = run.rules(step)
    mine = [r for r in rules if r.param == param and r.is_cut]
    if not mine or df is None:
        raise ValueError(f"step {step!r}: {param!r} is not a declared cut")
    if isinstance(mine[0].value, (list, tuple)) or any(isinstance(r.value, (list, tuple)) for r in mine):
        raise ValueError(f"step {step!r}: {param!r} is a list of cuts; use what_if with the whole list")
    if values is None:
        s = np.concatenate([_np(df[r.column]) for r in mine])
        s = s[np.isfinite(s)]
        if not len(s):
            values = [mine[0].value]
        else:
            lo, hi = np.quantile(s, [0.005, 0.995])
            if mine[0].value is not None:
                lo, hi = min(lo, mine[0].value), max(hi, mine[0].value)
            values = np.unique(np.linspace(lo, hi, points))
            if df[mine[0].column].dtype.is_integer():
                values = np.unique(np.round(values))
    # what decide() does, with everything but this parameter's cuts computed once: rows that pass
    # the other cuts and were not dropped by a non-cut rule are the only ones the value can keep
    pos = rule_positions(rules, df["_reason"])
    cut_index = np.array([i for i, r in enumerate(rules) if r.is_cut], dtype=np.int64)
    opaque_index = np.array([i for i, r in enumerate(rules) if not r.is_cut], dtype=np.int64)
    last_opaque = opaque_index.max() if len(opaque_index) else -1
    open_after = np.isin(pos, cut_index) & (pos < last_opaque)
    base = ~((pos == -1) | np.isin(pos, opaque_index))
    for r in rules:
        if r.is_cut and r.param != param:
            base &= ~r.drops(_np(df[r.column]))
    idx = np.flatnonzero(base)
    mine_scores = [(r, _np(df[r.column])[idx]) for r in mine]
    open_b = open_after[idx]
    tokens = df["n_tokens"].to_numpy()[idx] if "n_tokens" in df.columns and df["n_tokens"].null_count() < len(df) else None
    rows = []
    for v in values:
        v = v.item() if hasattr(v, "item") else v
        fails = np.zeros(len(idx), bool)
        for r, sc in mine_scores:
            fails |= r.drops(sc, v)
        keep = ~fails & ~open_b
        rows.append({"value": float(v), "docs": int(keep.sum()), "docs_unknown": int((~fails & open_b).sum()),
                     "tokens": int(tokens[keep].sum()) if tokens is not None else None})
    return pl.DataFrame(rows, schema={"value": pl.Float64, "docs": pl.Int64, "docs_unknown": pl.Int64, "tokens": pl.Int64})


def _np(s: pl.Series) -> np.ndarray:
    return s.cast(pl.Float64).fill_null(float("nan")).to_numpy() if s.dtype != pl.Float32 else \
        s.fill_null(float("nan")).to_numpy()


def format_what_if(w: WhatIf) -> str:
    lines = []
    for step, diff in w.changes.items():
        for k, (a, b) in diff.items():
            lines.append(f"  steps.{step}.params.{k}: {json.dumps(a)} -> {json.dumps(b)}")
    out = ["[gristmill] what-if (no rerun: from the run's kept and rejected rows)"] + lines
    if w.counts:
        out.append(f"  {'step':<14} {'kept in run':>12} {'with change':>12} {'change':>9}  {'tokens in run':>14} {'with change':>12}")
        for c in w.counts:
            unk = f" (+{c.docs_unknown:,} unknown)" if c.docs_unknown else ""
            delta = c.docs - c.docs_before
            tok = (f"  {c.tokens_before:>14,} {c.tokens:>12,}" if c.tokens_before is not None else "")
            out.append(f"  {c.step + (' *' if c.changed else ''):<14} {c.docs_before:>12,} {c.docs:>12,} {delta:>+9,}{tok}{unk}")
            if c.note:
                out.append(f"  {'':<14} note: {c.note}")
        last = w.counts[-1]
        rng = f"{last.docs:,}" + (f" to {last.docs + last.docs_unknown:,}" if last.docs_unknown else "")
        out.append(f"  end of the run ({last.step}): {rng} documents instead of {last.docs_before:,}")
    for r in w.needs_rerun:
        out.append(f"  {r}")
    return "\n".join(out)


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))
