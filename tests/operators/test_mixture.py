"""mixture: weights against hand-computed values, epoch caps, realization, shards through the engine."""
from __future__ import annotations

import json
import pathlib
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from operators.mixture import (Method, MixtureError, MixtureParams, Phase, capped_targets, choose_cuts,
                               method_weights, phase_manifest, plan_phases, safe_name, unimax_allocation,
                               whole_document_note)
from pipeline.executor import RunOptions, run_recipe
from pipeline.recipe import load_recipe
from tests._files import distributed_if, tree_digest as digest


# -- weights, by hand ------------------------------------------------------------------------
def test_unimax_worked_example():
    # budget 1000, N = 4. Smallest first: a (25 tokens) gets min(1000/4 = 250, 4 x 25 = 100) = 100;
    # b (50): min(900/3 = 300, 200) = 200; c (1000): min(700/2 = 350, 4000) = 350; d: the last 350.
    sizes = {"a": 25, "b": 50, "c": 1000, "d": 5000}
    alloc = unimax_allocation(sizes, 1000, {g: 4 * n for g, n in sizes.items()})
    assert alloc == pytest.approx({"a": 100, "b": 200, "c": 350, "d": 350})
    plan = plan_phases(sizes, [Phase(share=1.0, unimax={"max_epochs": 4})], 1000, None, False)[0]
    assert plan["targets"] == pytest.approx({"a": 100, "b": 200, "c": 350, "d": 350})
    assert plan["target_weights"] == pytest.approx({"a": 0.1, "b": 0.2, "c": 0.35, "d": 0.35})


def test_temperature_and_explicit_weights():
    # T = 2: p ~ sqrt(n): sqrt(100) = 10, sqrt(400) = 20 -> 1/3, 2/3
    assert method_weights(Method(temperature=2.0), {"a": 100, "b": 400}) == pytest.approx({"a": 1 / 3, "b": 2 / 3})
    # T = 1 is the natural mix
    assert method_weights(Method(temperature=1.0), {"a": 100, "b": 300}) == pytest.approx({"a": 0.25, "b": 0.75})
    assert method_weights(Method(weights={"a": 1, "b": 3}), {"a": 5, "b": 9}) == pytest.approx({"a": 0.25, "b": 0.75})
    with pytest.raises(MixtureError, match="'c'"):
        method_weights(Method(weights={"a": 1, "c": 1}), {"a": 5, "b": 9})
    with pytest.raises(ValueError, match="one of"):
        Method(weights={"a": 1}, temperature=2.0)


def test_epoch_cap_is_an_error_naming_the_group_or_redistributes():
    available = {"a": 100, "b": 10_000}
    with pytest.raises(MixtureError) as e:
        plan_phases(available, [Phase(share=1.0, weights={"a": 0.5, "b": 0.5})], 1000, 2, False)
    assert "'a'" in str(e.value) and "100 tokens" in str(e.value) and "cap of 2" in str(e.value)
    # redistribute: a gets its cap (2 x 100 = 200), b the remaining 800
    plan = plan_phases(available, [Phase(share=1.0, weights={"a": 0.5, "b": 0.5})], 1000, 2, True)[0]
    assert plan["targets"] == pytest.approx({"a": 200, "b": 800})
    assert any("'a' capped" in n for n in plan["notes"])
    # water-filling over three groups: a capped at 100, the surplus split 1:3 over b and c
    t, _ = capped_targets({"a": 0.5, "b": 0.125, "c": 0.375}, 1000, {"a": 100, "b": 1e9, "c": 1e9}, True,
                          {"a": 50, "b": 1, "c": 1}, 2, "x")
    assert t == pytest.approx({"a": 100, "b": 225, "c": 675})


def test_caps_hold_over_phases():
    # a has 100 tokens, cap 3 epochs = 300 over the schedule: phase 0 takes 200, so phase 1 can
    # give it at most 100 (not another 300)
    available = {"a": 100, "b": 100_000}
    phases = [Phase(share=0.5, weights={"a": 0.2, "b": 0.8}), Phase(share=0.5, weights={"a": 0.5, "b": 0.5})]
    with pytest.raises(MixtureError, match="phase 1: group 'a'"):
        plan_phases(available, phases, 2000, 3, False)
    plan = plan_phases(available, phases, 2000, 3, True)
    assert plan[0]["targets"]["a"] == pytest.approx(200) and plan[1]["targets"]["a"] == pytest.approx(100)


def test_whole_documents_keep_a_sets_share_and_the_manifest_says_why():
    """PolyLM on the shared data: ~150 small languages whose documents are larger than their
    share of a phase. Rounding each group to its nearest whole-document cut gives them nothing (the
    non-English share fell to 0.248 for 0.30); carrying the error over the groups lands the share
    on target, and each group off by more than 1% of the phase gets a note with its figures."""
    small = {f"l{i:03d}": 9000 for i in range(150)}  # 3 documents of 3,000 tokens each
    available = {"en": 100_000, **small}  # 1,000 documents of 100 tokens
    sched = [Phase(share=0.5, group_share={"groups": ["en"], "exclude": True, "share": 0.3}),
             Phase(share=0.5, group_share={"groups": ["en"], "exclude": True, "share": 0.5})]
    phases = plan_phases(available, sched, 200_000, None, False)
    cum = {g: np.round(np.cumsum([ph["targets"][g] / available[g] for ph in phases]), 9) for g in available}
    options = {}
    for g, x in ((g, x) for g in available for x in cum[g]):
        f = float(x - np.floor(x))
        doc = 100 if g == "en" else 3000
        lo = int(f * available[g] // doc) * doc
        options[(g, f)] = [(lo + 1, lo)] + ([(lo + 2, lo + doc)] if lo < f * available[g] else [])
    cuts = choose_cuts(phases, available, cum, options, None)
    for k, (ph, want) in enumerate(zip(phases, (0.3, 0.5))):
        got = cuts["tokens"][k]
        assert all(v >= 0 for v in got.values())  # a cut never moves back
        assert all(v % 3000 == 0 for g, v in got.items() if g != "en")  # whole documents
        non_en = sum(v for g, v in got.items() if g != "en")
        assert abs(non_en - want * ph["budget"]) <= 0.01 * ph["budget"], (k, non_en)
        assert abs(sum(got.values()) - ph["budget"]) <= 0.01 * ph["budget"]
        # nearest-per-group rounding would have given every small language 0 tokens in phase 0
        assert k or sum(1 for g in small if min(abs(o[1] - ph["targets"][g]) for o in
                                               options[(g, float(cum[g][0]))]) == ph["targets"][g]) == 150
        wide = {w[0]: w for w in cuts["wide"][k]}
        assert all(abs(got[g] - ph["targets"][g]) > 0.01 * ph["budget"] for g in wide)
        assert all(g in wide for g in small if abs(got[g] - ph["targets"][g]) > 0.01 * ph["budget"])
        # the phase manifest, from the shards the workers would write: the set's share and the notes
        ph["notes"] += [whole_document_note(ph, *w) for w in wide.values()]
        summary = [{"shard": 0, "docs": 1, "tokens": sum(got.values()),
                    "groups": json.dumps({g: [1, v] for g, v in got.items() if v})}]
        man = phase_manifest(ph, summary, {0: "mixed/part_00000"}, {g: 1 for g in available}, available,
                             MixtureParams(layout="mixed"))
        assert man["share_of"]["target"] == want and abs(man["share_of"]["realized"] - want) <= 0.01
        g, target, tokens, lower, upper, _ = next(iter(wide.values()))
        note = next(n for n in man["notes"] if f"group {g!r}" in n)
        assert f"{tokens:,} tokens for a target of {target:,.0f}" in note and f"{lower:,} or {upper:,}" in note


def test_params_validation():
    with pytest.raises(ValueError, match="sum to 1"):
        MixtureParams(phases=[{"share": 0.5, "temperature": 2.0}, {"share": 0.4}])
    with pytest.raises(ValueError, match="no such file"):
        MixtureParams(tokenizer="/nonexistent/tokenizer.json")
    assert MixtureParams(total_tokens="1e9").total_tokens == 1e9  # YAML reads 1e9 as a string


def test_group_names_never_become_paths():
    for g in ["../../etc", "a/b", "", "en", "zh-Hans", "x" * 100]:
        name = safe_name(g)
        assert "/" not in name and ".." not in name and name
    assert safe_name("en") == "en" and safe_name("../x") != safe_name("__x")


# -- through the engine ----------------------------------------------------------------------------
def corpus(tmp: pathlib.Path, n: int = 500) -> pathlib.Path:
    rng = np.random.default_rng(3)
    langs = np.array(["en"] * 6 + ["fr"] * 3 + ["sw"])
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()
    rows = {"id": [], "text": [], "language": []}
    for i in range(n):
        lang = str(langs[i % len(langs)])
        rows["id"].append(f"doc-{i:05d}")
        rows["text"].append(f"{lang} {i}: " + " ".join(rng.choice(words, int(rng.integers(4, 80)))))
        rows["language"].append(lang if i % 97 else None)  # a few without a group
    path = tmp / "in.parquet"
    pq.write_table(pa.table(rows), path)
    return path


def recipe(tmp: pathlib.Path, data: pathlib.Path, mix: str) -> str:
    path = tmp / "r.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: mix-test
        input: {{format: parquet, paths: ["{data}"]}}
        output: {tmp}/out
        seed: 5
        steps:
          - {{id: tok, op: tokenize}}
          - {{id: mix, op: mixture, params: {mix}}}
        """))
    return str(path)


MIX = ("{group_by: language, unimax: {max_epochs: 3}, total_tokens: 20000, shard_tokens: 4000, "
       "layout: per_group}")


@pytest.fixture(scope="module")
def engine_runs(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mix")
    data = corpus(tmp)
    runs = {}
    for workers in (2, 1):
        d = tmp / f"w{workers}"
        d.mkdir()
        r = recipe(d, data, MIX)
        with distributed_if(workers == 1):  # 1 worker, distributed mixture; 2, in memory
            stats = run_recipe(load_recipe(r), RunOptions(output=str(d / "out"), max_workers=workers, quiet=True))
        runs[workers] = (d, r, stats)
    return data, runs


def test_one_and_two_workers_give_byte_identical_shards(engine_runs):
    _, runs = engine_runs
    a, b = digest(runs[2][0] / "out" / "mix.shards"), digest(runs[1][0] / "out" / "mix.shards")
    assert a == b and any(k.endswith(".bin") for k in a)


def test_engine_run_accounting_caps_and_draws(engine_runs):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    data, runs = engine_runs
    d, _, stats = runs[2]
    root = d / "out" / "mix.shards"
    man = json.loads((root / "manifest.json").read_text())
    assert stats["invariant_ok"]
    step = next(s for s in stats["steps"] if s["id"] == "mix")
    assert step["dropped"].get("mixture:missing_language") == 6  # ids 0, 97, ..., 485
    # every emitted sequence is in a shard megatron-core reads, with the group and epoch it says
    docs = pa.concat_tables([pq.read_table(root / (s["path"] + ".docs.parquet")) for s in man["shards"]])
    seqs = sum(len(IndexedDataset(str(root / s["path"]))) for s in man["shards"])
    assert seqs == docs.num_rows == sum(g["docs_emitted"] for g in man["groups"].values())
    assert man["dtype"] == "uint16" and man["tokenizer"]["vocab_size"] == 32000
    for g, info in man["groups"].items():
        gd = docs.filter(pc.equal(docs.column("group"), g))
        assert info["tokens_emitted"] <= 3 * info["tokens_available"]  # the cap, in tokens
        per_doc = pc.value_counts(gd.column("id")).field("counts").to_numpy()
        assert per_doc.max() <= 3  # and per document
        epochs = np.asarray(gd.column("epoch").to_pylist())
        assert epochs.min() == 0 and epochs.max() < 3
        # realized within a few documents' tokens of the target
        assert abs(info["tokens_emitted"] - info["tokens_target"]) <= 80, g
    en = man["groups"]["en"]
    assert en["tokens_emitted"] < en["tokens_available"]  # en is downsampled: each document at most once
    en_ids = docs.filter(pc.equal(docs.column("group"), "en")).column("id")
    assert pc.count_distinct(en_ids).as_py() == len(en_ids)
    sw = man["groups"]["sw"]  # the small group is upsampled: whole epochs and a remainder
    assert sw["epochs"] > 1
    # the step's own rows: every input document once, with its copies
    rows = pq.read_table(d / "out" / "mix")
    assert rows.num_rows + step["docs_dropped"] == 500
    assert int(pc.sum(rows.column("epochs")).as_py()) == docs.num_rows
    # per_group blend: weights are the realized token shares
    assert sum(w for w, _ in man["blend"]) == pytest.approx(1.0, abs=1e-6)


def test_killed_run_resumes_to_the_same_bytes(engine_runs):
    _, runs = engine_runs
    d, r, _ = runs[1]
    root = d / "out" / "mix.shards"
    before = digest(root)
    # what a run killed while writing shards leaves: no step marker, no manifest, a stray temp
    # file and a shard set half written
    (d / "out" / "mix" / "_COMPLETE.json").unlink()
    (root / "manifest.json").unlink()
    victim = next(root.rglob("*.idx"))
    victim.unlink()
    (victim.parent / ".tmp-deadbeef-part_00009.bin").write_bytes(b"partial")
    stats = run_recipe(load_recipe(r), RunOptions(output=str(d / "out"), max_workers=1, quiet=True))
    assert digest(root) == before
    assert stats["invariant_ok"]
    # a complete step is skipped on the next run
    stats = run_recipe(load_recipe(r), RunOptions(output=str(d / "out"), max_workers=1, quiet=True))
    assert next(s for s in stats["steps"] if s["id"] == "mix")["status"] == "skipped"


def test_infeasible_target_fails_before_writing(ray_session, tmp_path):
    data = corpus(tmp_path, 120)
    r = recipe(tmp_path, data, "{group_by: language, weights: {en: 0.1, fr: 0.1, sw: 0.8}, "
                               "total_tokens: 50000, max_epochs: 2}")
    with pytest.raises(MixtureError, match="group 'sw' needs .* epoch cap of 2"):
        run_recipe(load_recipe(r), RunOptions(output=str(tmp_path / "out"), quiet=True))
    assert not (tmp_path / "out" / "mix.shards").exists()


def test_large_vocabulary_gives_int32_shards(ray_session, tmp_path):
    """A tokenizer with 70,000 ids: uint16 cannot hold them, megatron-core reads int32 back."""
    import tokenizers
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    vocab = {"<unk>": 0, "</s>": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.add_special_tokens(["</s>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    rows = {"id": [f"d{i}" for i in range(40)], "language": ["x", "y"] * 20,
            "text": [" ".join(f"w{(i * 7919 + k * 104729) % 70_000}" for k in range(20)) for i in range(40)]}
    pq.write_table(pa.table(rows), tmp_path / "in.parquet")
    spec = str(tmp_path / "tokenizer.json")
    (tmp_path / "r.yaml").write_text(textwrap.dedent(f"""\
        name: big-vocab
        input: {{format: parquet, paths: ["{tmp_path}/in.parquet"]}}
        output: {tmp_path}/out
        steps:
          - {{id: tok, op: tokenize, params: {{tokenizer: "{spec}"}}}}
          - {{id: mix, op: mixture, params: {{group_by: language, tokenizer: "{spec}", layout: mixed}}}}
        """))
    run_recipe(load_recipe(str(tmp_path / "r.yaml")), RunOptions(output=str(tmp_path / "out"), quiet=True))
    root = tmp_path / "out" / "mix.shards"
    man = json.loads((root / "manifest.json").read_text())
    assert man["dtype"] == "int32" and man["eos_id"] == 1
    ds = IndexedDataset(str(root / man["shards"][0]["path"]))
    docs = pq.read_table(root / (man["shards"][0]["path"] + ".docs.parquet"))
    assert ds[0].dtype == np.int32 and len(ds) == 40
    i = docs.column("id").to_pylist().index("d3")
    assert ds[i].tolist() == [vocab[w] for w in rows["text"][3].split()] + [1]
    assert max(int(ds[k].max()) for k in range(len(ds))) > 65_535


def test_shards_command_prints_the_manifest_and_decodes(engine_runs, capsys):
    from pipeline.cli import main

    data, runs = engine_runs
    out = runs[2][0] / "out"
    assert main(["shards", str(out), "--peek", "3"]) == 0
    printed = capsys.readouterr().out
    assert "sw" in printed and "uint16" in printed and "--data-path" in printed
    first = json.loads((out / "mix.shards" / "manifest.json").read_text())["shards"][0]["path"]
    doc_id = pq.read_table(out / "mix.shards" / (first + ".docs.parquet")).column("id")[0].as_py()
    text = dict(zip(*[pq.read_table(data).column(c).to_pylist() for c in ("id", "text")]))[doc_id]
    assert text[:60] in printed  # decoded from the .bin with the manifest's tokenizer


# -- schedules (phases) ------------------------------------------------------------------------------
PHASED = ("{group_by: language, curriculum: {share_of: {language_not: en}, from: 0.3, to: 0.6, phases: 3}, "
          "total_tokens: 30000, max_epochs: 2, redistribute: true, layout: mixed, shard_tokens: 5000}")


def test_curriculum_phases(ray_session, tmp_path):
    """PolyLM-style curriculum: per phase the non-English share is within 1% of its target,
    epoch caps hold over the whole schedule, phases load in megatron-core, 1 vs 2 workers are
    byte-identical."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    data = corpus(tmp_path)
    roots = {}
    for workers in (2, 1):
        d = tmp_path / f"w{workers}"
        d.mkdir()
        r = recipe(d, data, PHASED)
        with distributed_if(workers == 1):
            stats = run_recipe(load_recipe(r), RunOptions(output=str(d / "out"), max_workers=workers, quiet=True))
        assert stats["invariant_ok"]
        roots[workers] = d / "out" / "mix.shards"
    assert digest(roots[1]) == digest(roots[2])
    root = roots[2]
    schedule = json.loads((root / "schedule.json").read_text())
    top = json.loads((root / "manifest.json").read_text())
    assert [p["dir"] for p in schedule["phases"]] == ["phase_00", "phase_01", "phase_02"]
    copies: dict[str, int] = {}
    start = 0
    for k, (ph, want) in enumerate(zip(schedule["phases"], (0.3, 0.45, 0.6))):
        assert ph["token_range"][0] == start
        start = ph["token_range"][1]
        man = json.loads((root / ph["dir"] / "manifest.json").read_text())
        emitted = {g: v["tokens_emitted"] for g, v in man["groups"].items()}
        budget = 10000
        non_en = sum(v for g, v in emitted.items() if g != "en")
        assert abs(non_en - want * budget) <= 0.01 * budget, (k, non_en)
        assert man["share_of"]["target"] == pytest.approx(want)
        assert abs(man["share_of"]["realized"] - want) <= 0.01
        for g, v in man["groups"].items():
            assert abs(v["tokens_emitted"] - v["tokens_target"]) <= 0.01 * budget, (k, g)
        for s in man["shards"]:
            prefix = str(root / ph["dir"] / s["path"])
            assert len(IndexedDataset(prefix)) == s["docs"]
            ids = pq.read_table(prefix + ".docs.parquet").column("id").to_pylist()
            for i in ids:
                copies[i] = copies.get(i, 0) + 1
        # within a phase, no document of a group repeats before all of the group was used once
        docs = pa.concat_tables([pq.read_table(str(root / ph["dir"] / s["path"]) + ".docs.parquet")
                                 for s in man["shards"]])
        for g, v in man["groups"].items():
            gd = pc.value_counts(docs.filter(pc.equal(docs.column("group"), g)).column("id"))
            if len(gd) and gd.field("counts").to_numpy().max() > 1:
                assert len(gd) == v["docs_available"], (k, g)
    assert max(copies.values()) <= 2  # max_epochs over the whole schedule, per document
    for g, v in top["groups"].items():
        assert v["tokens_emitted"] <= 2 * v["tokens_available"]
    assert "phases" in top and len(top["phases"]) == 3
