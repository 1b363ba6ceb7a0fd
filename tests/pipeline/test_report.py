"""`gristmill report`: numbers equal stats.json, the file is self-contained, and it renders in a
real headless browser (Debian's chromium) without console errors, with every section's plots."""
from __future__ import annotations

import json
import os
import re

import polars as pl
import pytest

from pipeline import inspect
from pipeline.report import SECTIONS, write_report
from tests.pipeline._report_runs import run_cli
from tools.screenshot_report import chromium_path, render


@pytest.fixture(scope="module")
def report(ray_session, tmp_path_factory):
    from pipeline.cli import main

    out = run_cli(tmp_path_factory.getbasetemp(), "base")
    html_path = str(out / "report.html")
    assert main(["report", str(out), "--output", html_path]) == 0
    return out, html_path, open(html_path, encoding="utf-8").read()


def _plot(html: str, div_id: str) -> dict:
    m = re.search(r'<div class="plot" id="%s"></div><script>\(function\(\)\{var f=(.*?);Plotly\.newPlot' % re.escape(div_id),
                  html, re.S)
    assert m, f"no plot {div_id}"
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_numbers_equal_stats_json(report):
    out, _, html = report
    stats = json.loads((out / "stats.json").read_text())
    cells = dict(((k, f), v) for k, f, v in re.findall(r'<td data-key="([^"]+)" data-field="([^"]+)">([^<]*)</td>', html))
    for s in stats["steps"]:
        for field, key in (("docs_in", "docs_in"), ("docs_out", "docs_out"), ("dropped", "docs_dropped"),
                           ("bytes_in", "bytes_in"), ("bytes_out", "bytes_out")):
            assert cells[(s["id"], field)] == f"{s[key]:,}", (s["id"], field)
    # the Sankey's flows: each step's drops and what the last step wrote
    sankey = _plot(html, "plot-funnel-sankey")["data"][0]
    labels, link = sankey["node"]["label"], sankey["link"]
    flows = {(labels[a], labels[b]): v for a, b, v in zip(link["source"], link["target"], link["value"])}
    for s in stats["steps"]:
        if s["docs_dropped"]:
            assert flows[(s["id"], f"dropped at {s['id']}")] == s["docs_dropped"]
    assert flows[("dedup", "written: dedup")] == stats["steps"][-1]["docs_out"]
    # the stacked drop reasons
    drops = {t["name"]: dict(zip(t["x"], t["y"])) for t in _plot(html, "plot-drops")["data"]}
    for s in stats["steps"]:
        for reason, n in s["dropped"].items():
            assert drops[reason][s["id"]] == n
    # languages at the end of the run add up to what was written
    lang = _plot(html, "plot-groups-language")["data"]
    assert sum(lang[1]["y"]) == stats["steps"][-1]["docs_out"]
    # a what-if curve at the recipe's own threshold gives back what the step kept
    by = {s["id"]: s for s in stats["steps"]}
    for step, param, value in (("lang", "min_score", 0.5), ("length", "min_chars", 200)):
        c = inspect.curve(inspect.load_run(str(out)), step, param, values=[value])
        assert c["docs"][0] == by[step]["docs_out"] and c["docs_unknown"][0] == 0
        assert _plot(html, f"plot-whatif-{step}-{param}")["data"][0]["y"]


def test_tables_for_notebooks(report):
    out, _, _ = report
    stats = json.loads((out / "stats.json").read_text())
    fun = inspect.funnel(str(out))
    assert fun["docs_out"].to_list() == [s["docs_out"] for s in stats["steps"]]
    ex = inspect.drop_examples(str(out), "lang")
    assert len(ex) and set(ex["reason"]) == set(by for by in stats["steps"][1]["dropped"])
    hist = inspect.score_histogram(inspect.score_rows(inspect.load_run(str(out)), "length"), "n_chars")
    assert int(hist["kept"].sum()) == stats["steps"][2]["docs_out"]
    assert int(hist["dropped"].sum()) == stats["steps"][2]["docs_dropped"]
    cuts = inspect.thresholds(str(out))
    assert cuts.filter(pl.col("step") == "length")["param"].to_list() == ["min_chars", "max_chars", "min_words", "max_words"]


def test_self_contained_and_small(report):
    _, path, html = report
    assert os.path.getsize(path) < 10 * 2**20
    from plotly.offline import get_plotlyjs

    page = html.replace(get_plotlyjs(), "")  # plotly.js itself mentions URLs it never loads here
    assert len(page) < len(html) - 4_000_000  # ...and it is embedded
    assert not re.search(r"<script[^>]+src=", page) and not re.search(r"""(src|href)=["']https?:""", page)
    assert "Plotly.newPlot" in html and html.count("<section") == len(SECTIONS)


def test_renders_in_headless_chromium(report):
    if chromium_path() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing in CI: .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("chromium not installed (apt-get install chromium); CI installs it")
    _, path, _ = report
    res = render(path)
    assert res["errors"] == []
    assert res["external_requests"] == []
    expect_empty = {"mixture"}  # this run has no mixture step
    for sid, _ in SECTIONS:
        s = res["sections"][sid]
        if sid in expect_empty:
            assert s["empty"] == 1 and s["plots"] == 0
        else:
            assert s["plots"] > 0 and s["drawn"] == s["plots"], (sid, s)
