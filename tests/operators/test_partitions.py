"""mixture partition_by: one megatron shard set per domain (Branch-Train-Merge) beside the pooled mix."""
from __future__ import annotations

import json
import pathlib
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from operators.mixture import MixtureError
from pipeline.executor import RunOptions, run_recipe
from pipeline.recipe import load_recipe
from tests._files import distributed_if, tree_digest as digest

# a hostile value (a path out of the output dir), one with a slash, a plain one
DOMAINS = ["news", "../../etc", "code/py"]
WORDS = {"news": "market minister election vote report city council",
         "../../etc": "passwd shadow root daemon config system file",
         "code/py": "def return import class lambda yield print"}


def corpus(tmp: pathlib.Path, n: int = 90) -> pathlib.Path:
    rng = np.random.default_rng(7)
    rows = {"id": [], "text": [], "language": [], "domain": []}
    for i in range(n):
        dom = DOMAINS[i % 3]
        rows["id"].append(f"d{i:03d}")
        rows["text"].append(f"{dom} {i} " + " ".join(rng.choice(WORDS[dom].split(), int(rng.integers(3, 30)))))
        rows["language"].append(["en", "fr"][i % 2] if i % 31 else None)  # no group: not in any set
        rows["domain"].append(None if i % 23 == 5 else dom)  # no domain: only in the pooled mix
    pq.write_table(pa.table(rows), tmp / "in.parquet")
    return tmp / "in.parquet"


def recipe(tmp: pathlib.Path, data: pathlib.Path, mix: str) -> str:
    (tmp / "r.yaml").write_text(textwrap.dedent(f"""\
        name: partitions-test
        input: {{format: parquet, paths: ["{data}"]}}
        output: {tmp}/out
        seed: 3
        steps:
          - {{id: tok, op: tokenize}}
          - {{id: mix, op: mixture, params: {mix}}}
        """))
    return str(tmp / "r.yaml")


MIX = "{group_by: language, partition_by: domain, layout: mixed, num_shards: 2, shard_tokens: 300}"


@pytest.fixture(scope="module")
def runs(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parts")
    data = corpus(tmp)
    out = {}
    for workers in (2, 1):
        d = tmp / f"w{workers}"
        d.mkdir()
        with distributed_if(workers == 1):  # 1 worker, distributed mixture; 2, in memory
            stats = run_recipe(load_recipe(recipe(d, data, MIX)),
                               RunOptions(output=str(d / "out"), max_workers=workers, quiet=True))
        out[workers] = (d / "out", stats)
    return data, out


def test_each_partition_holds_exactly_its_domain(runs):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from operators.tokenize import load_tokenizer

    data, out = runs
    root, stats = out[2]
    assert stats["invariant_ok"]
    src = pq.read_table(data).to_pylist()
    listing = json.loads((root / "mix.partitions" / "partitions.json").read_text())
    top = json.loads((root / "mix.shards" / "manifest.json").read_text())
    assert [e["value"] for e in listing["partitions"]] == sorted(DOMAINS)
    assert [e["value"] for e in top["partitions"]["sets"]] == sorted(DOMAINS)
    tok, _ = load_tokenizer(listing["tokenizer"]["name"])
    # n_tokens of every document the step kept (all of them: a natural mix samples each once)
    kept = pq.read_table(root / "mix").select(["id", "n_tokens"]).to_pylist()
    n_tokens = {r["id"]: r["n_tokens"] for r in kept}
    for entry in listing["partitions"]:
        want = {r["id"]: r["text"] for r in src if r["domain"] == entry["value"] and r["language"]}
        pdir = root / "mix.partitions" / entry["dir"]
        man = json.loads((pdir / "manifest.json").read_text())
        assert man["value"] == entry["value"] and man["partition_by"] == "domain"
        got = {}
        for s in man["shards"]:
            ds = IndexedDataset(str(pdir / s["path"]))
            ids = pq.read_table(str(pdir / s["path"]) + ".docs.parquet").column("id").to_pylist()
            assert len(ds) == len(ids) == s["docs"]
            for i, doc_id in enumerate(ids):
                got[doc_id] = tok.decode(ds[i].tolist(), skip_special_tokens=True)
        assert got == want, entry["value"]  # exactly that domain's documents, each once, as written
        assert man["tokens"] == entry["tokens"] == sum(n_tokens[i] for i in want)
        assert man["docs"] == len(want) and man["tokens"] == sum(s["tokens"] for s in man["shards"])
        assert sum(g["tokens"] for g in man["groups"].values()) == man["tokens"]
        assert len(man["shards"]) > 1  # shard_tokens 300: each domain is split
    no_domain = [r for r in src if r["domain"] is None and r["language"]]
    assert listing["docs_without_value"] == len(no_domain) > 0
    # the pooled seed mix is still the whole mixture, domains or not
    assert top["tokens_emitted"] == sum(n_tokens.values())


def test_hostile_partition_values_stay_inside_the_output_dir(runs):
    _, out = runs
    root = out[2][0].resolve()
    listing = json.loads((root / "mix.partitions" / "partitions.json").read_text())
    dirs = {e["value"]: e["dir"] for e in listing["partitions"]}
    assert dirs["news"] == "news"
    for v in ("../../etc", "code/py"):
        assert "/" not in dirs[v] and ".." not in dirs[v] and dirs[v] != v
        assert (root / "mix.partitions" / dirs[v] / "manifest.json").is_file()
    # nothing was written outside <output>: beside it only the recipe, above it only the runs
    assert sorted(x.name for x in root.parent.iterdir()) == ["out", "r.yaml"]
    assert sorted(x.name for x in root.parent.parent.iterdir()) == ["in.parquet", "w1", "w2"]
    assert all(p.resolve().is_relative_to(root) for p in root.rglob("*"))


def test_one_and_two_workers_write_the_same_partitions(runs):
    _, out = runs
    for sub in ("mix.partitions", "mix.shards"):
        a, b = digest(out[2][0] / sub), digest(out[1][0] / sub)
        assert a == b and any(k.endswith(".bin") for k in a), sub


def test_missing_partition_column_is_an_error_naming_it(ray_session, tmp_path):
    import ray.data

    from operators.base import RunContext
    from operators.mixture import Mixture

    table = pa.table({"id": ["a", "b"], "language": ["en", "fr"], "n_tokens": [2, 2],
                      "tokens": pa.array([[5, 1], [6, 1]], pa.list_(pa.int32()))})
    op = Mixture(group_by="language", partition_by="topic")
    with pytest.raises(MixtureError, match="partition_by column 'topic' is not in the data"):
        op.run(ray.data.from_arrow(table), RunContext(step_id="mix", output_dir=str(tmp_path)))
    assert not any(tmp_path.iterdir())  # nothing written


def test_shards_command_reads_a_partition(runs, capsys):
    from pipeline.cli import main

    _, out = runs
    root = out[2][0] / "mix.partitions"
    entry = next(e for e in json.loads((root / "partitions.json").read_text())["partitions"] if e["value"] == "news")
    assert main(["shards", str(root / entry["dir"]), "--peek", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"partition domain = 'news': {entry['docs']} docs" in printed and "news" in printed.split("first 1:")[1]
