"""What-if from recorded scores equals a real rerun; rule order and unknowns; needs-rerun naming."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.whatif import Rule, decide, format_what_if, load_run, what_if
from tests.pipeline._report_runs import run_cli

CHANGES = ("steps.lang.params.min_score=0.85",   # language_id: tighter
           "steps.length.params.min_chars=300")  # length_filter: tighter (a downstream exact_dedup keeps
                                                  # another copy when a cluster's kept doc goes)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


def test_what_if_equals_a_real_rerun_on_two_filters(ray_session, root):
    base = run_cli(root, "base")
    predicted = what_if(str(base), list(CHANGES))
    assert not predicted.needs_rerun
    rerun = run_cli(root, "rerun", CHANGES)
    real = {s["id"]: s for s in json.loads((rerun / "stats.json").read_text())["steps"]}
    orig = {s["id"]: s for s in json.loads((base / "stats.json").read_text())["steps"]}
    by = {c.step: c for c in predicted.counts}
    assert list(by) == ["lang", "length", "dedup"]
    for step in ("lang", "length", "dedup"):
        assert by[step].docs_unknown == 0
        assert by[step].docs == real[step]["docs_out"], (step, by[step], real[step])
        assert by[step].docs_before == orig[step]["docs_out"]
    # the change is not a no-op: both filters keep fewer documents than in the run
    assert by["lang"].docs < orig["lang"]["docs_out"] and by["length"].docs < by["length"].docs_before
    text = format_what_if(predicted)
    assert f"{by['dedup'].docs:,} documents instead of {orig['dedup']['docs_out']:,}" in text


def test_loosened_threshold_is_exact_at_its_step_and_a_range_after_it(ray_session, root):
    base = run_cli(root, "base")
    w = what_if(str(base), ["steps.length.params.min_chars=50"])
    by = {c.step: c for c in w.counts}
    orig = {s["id"]: s for s in json.loads((base / "stats.json").read_text())["steps"]}
    # every row that reached `length` has n_chars: exact there
    assert by["length"].docs_unknown == 0 and by["length"].docs > orig["length"]["docs_out"]
    gained = by["length"].docs - orig["length"]["docs_out"]
    # those rows never reached dedup: their fate there is unknown, reported as a range
    assert by["dedup"].docs == orig["dedup"]["docs_out"] and by["dedup"].docs_unknown == gained


def test_parameters_that_are_not_cuts_need_a_rerun(ray_session, root):
    base = run_cli(root, "base")
    w = what_if(str(base), ["steps.lang.params.max_chars=100", "steps.length.params.min_chars=250"])
    assert any(r.startswith("steps.lang.params.max_chars: needs a rerun") for r in w.needs_rerun)
    assert [c.step for c in w.counts] == ["length", "dedup"]  # the answerable change still flows
    from pipeline.recipe import RecipeError

    with pytest.raises(RecipeError, match="no step 'nope'"):
        what_if(str(base), ["steps.nope.params.x=1"])
    with pytest.raises(RecipeError, match="min_chars"):
        what_if(str(load_run(str(base)).out), ["steps.length.params.min_chars=-5"])


def test_rule_order_first_failing_rule_and_unknowns():
    """A filter names the first rule a row fails. Rows: kept; dropped by cut A; dropped by an opaque
    rule B (not a score cut); dropped by cut C, which comes after B."""
    old = [Rule("f:a", "ta", "sa", "<", 0.5), Rule("f:b"), Rule("f:c", "tc", "sc", ">", 0.8)]
    kept = np.array([True, False, False, False])
    reason = np.array([None, "f:a", "f:b", "f:c"], dtype=object)
    scores = {"sa": np.array([0.9, 0.4, 0.9, 0.9]), "sc": np.array([0.1, 0.1, 0.1, 0.9])}
    # loosen A to 0.3: row 1 passes A and C, but B (after A) was never evaluated for it: unknown
    new = [Rule("f:a", "ta", "sa", "<", 0.3), Rule("f:b"), Rule("f:c", "tc", "sc", ">", 0.8)]
    keep, unknown = decide(old, new, kept, reason, scores)
    assert keep.tolist() == [True, False, False, False] and unknown.tolist() == [False, True, False, False]
    # loosen C to 0.95: row 3 failed C after passing A and B: exactly kept now
    new = [Rule("f:a", "ta", "sa", "<", 0.5), Rule("f:b"), Rule("f:c", "tc", "sc", ">", 0.95)]
    keep, unknown = decide(old, new, kept, reason, scores)
    assert keep.tolist() == [True, False, False, True] and not unknown.any()
    # tighten A to 0.95: every row fails A, whatever dropped it before
    new = [Rule("f:a", "ta", "sa", "<", 0.95), Rule("f:b"), Rule("f:c", "tc", "sc", ">", 0.8)]
    keep, unknown = decide(old, new, kept, reason, scores)
    assert not keep.any() and not unknown.any()
