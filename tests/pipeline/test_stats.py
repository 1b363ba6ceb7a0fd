"""Accounting helpers: ledger sums, invariant checks, progress lines."""
from __future__ import annotations

import pyarrow as pa

from pipeline.stats import Progress, batch_key, check_invariants, collect, ledger_record, reason_category
from pipeline.storage import Store


def test_ledger_sums_and_reason_categories(tmp_path):
    store = Store(str(tmp_path))
    kept = pa.table({"id": ["a"], "text": ["xy"]})
    rej = pa.table({"id": ["b", "c"], "text": ["z", "w"],
                    "drop_reason": ["input:truncated_gzip at byte 9 of f.warc.gz", "len:short"]})
    store.write_json("_ledger/s/1.json", ledger_record(3, 4, kept, rej, 0.5))
    store.write_json("_ledger/s/2.json", ledger_record(1, 1, kept, None, 0.25))
    st = collect(store, "s")
    assert (st["docs_in"], st["docs_out"], st["docs_dropped"]) == (4, 2, 2)
    assert st["dropped"] == {"input:truncated_gzip": 1, "len:short": 1}
    assert reason_category("a:b at x") == "a:b"
    lines = []
    prog = Progress(store, ["s"], lines.append, interval=0)
    assert prog.poll() and prog.docs["s"] == 4 and not prog.poll()


def test_invariant_checks_catch_lost_rows():
    ok = {"id": "a", "docs_in": 5, "docs_out": 3, "docs_dropped": 2}
    assert check_invariants([ok], {}) == []
    bad = {"id": "b", "docs_in": 2, "docs_out": 2, "docs_dropped": 0}
    problems = check_invariants([ok, bad], {"b": ["a"]})
    assert len(problems) == 1 and "rows were lost" in problems[0]
    assert "docs_in 5 + generated 0 != docs_out 4" in check_invariants([{**ok, "docs_out": 4}], {})[0]


def test_batch_keys_depend_on_ids_only():
    assert batch_key(pa.array(["a", "b"])) == batch_key(pa.chunked_array([["a"], ["b"]]))
    assert batch_key(pa.array(["a", "b"])) != batch_key(pa.array(["b", "a"]))
